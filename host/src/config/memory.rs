//! What a route remembers between messages, as the file declares it: the
//! stale-update guard (`guard:`) and echo suppression (`echo:`), and where
//! each finds its keys in a message (`Locator`: a JSON pointer into the
//! body, or an AMQP header).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where a value is found: `/Id` (a JSON pointer, RFC 6901) or `header:X-Name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Pointer(String),
    Header(String),
}

impl Locator {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Self::Pointer(text.to_string()));
        }
        match text.strip_prefix("header:") {
            Some(name) if !name.trim().is_empty() => Ok(Self::Header(name.trim().to_string())),
            _ => Err(format!(
                "{text:?} is neither a JSON pointer (/Id, /business/name) nor header:<name>"
            )),
        }
    }

    /// The value in a message: `body` is its JSON body (None when it is
    /// not JSON), `headers` its AMQP headers as text (names compared
    /// without case).
    pub fn find(&self, body: Option<&serde_json::Value>, headers: &[(String, String)]) -> Option<serde_json::Value> {
        match self {
            Self::Pointer(pointer) => body?.pointer(pointer).filter(|value| !value.is_null()).cloned(),
            Self::Header(name) => headers
                .iter()
                .find(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| serde_json::Value::String(value.clone())),
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer(pointer) => f.write_str(pointer),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for Locator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A delayed retry must never overwrite a newer update of the same
/// entity: the host keeps the newest ordering value it applied per entity
/// and drops an older one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    /// The entity's key, e.g. `/Id`.
    pub entity: Locator,
    /// Its ordering value, e.g. `/LastModifiedDate` or `/SystemModstamp`.
    pub order: Locator,
    /// How ordering values compare.
    #[serde(default)]
    pub compare: OrderKind,
    /// How long the broker keeps the ledger's records: longer than a
    /// message can spend in retries and dead letters before a replay.
    #[serde(default = "defaults::guard_keep", with = "super::duration")]
    pub keep: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderKind {
    /// RFC 3339 timestamps (`2024-05-01T10:00:00.000Z`), compared as instants.
    #[default]
    Timestamp,
    /// Numbers (or strings holding one), compared by value.
    Number,
}

/// Two-way sync: a change this host wrote to a system comes back as that
/// system's event; the host recognises it and acks it without a call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoSettings {
    /// The stream the routes of one two-way sync share (both directions
    /// name the same one).
    pub ledger: String,
    /// How long a system's known state is remembered.
    #[serde(default = "defaults::echo_ttl", with = "super::duration")]
    pub ttl: Duration,
    /// The system this route's messages come from: its events.
    pub source: EchoSide,
    /// The system this route writes to: the args of its calls.
    pub target: EchoSide,
}

/// One system's entity and state fields, as one side sees them. The same
/// system has the same `fields`, in the same order, on both routes (its
/// events and the writes to it), so their fingerprints compare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoSide {
    /// The system, named by its endpoint.
    pub endpoint: String,
    pub entity: Locator,
    pub fields: Vec<Locator>,
}

mod defaults {
    use std::time::Duration;

    pub fn guard_keep() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn echo_ttl() -> Duration {
        Duration::from_secs(600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_read_pointers_and_headers_and_name_a_bad_one() {
        let body = serde_json::json!({"Id": "gg-11", "business": {"name": "E"}, "gone": null});
        let headers = vec![("X-Modified".to_string(), "5".to_string())];
        let find = |text: &str| Locator::parse(text).unwrap().find(Some(&body), &headers);
        assert_eq!(find("/Id"), Some("gg-11".into()));
        assert_eq!(find("/business/name"), Some("E".into()));
        assert_eq!(find("/gone"), None);
        assert_eq!(find("/missing"), None);
        assert_eq!(find("header:x-modified"), Some("5".into()));
        assert_eq!(find("header:other"), None);
        let error = Locator::parse("Id").unwrap_err();
        assert!(error.contains("\"Id\""), "{error}");
        assert!(Locator::parse("header:").is_err());
    }
}
