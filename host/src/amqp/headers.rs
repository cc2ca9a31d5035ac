//! Every message header Passerelle reads or writes, in one place. The
//! names are a contract with operators (`dlq list`, the admin API) and
//! with other hosts (retry copies, fleet deploys): they are spelled here
//! only, and read and written only through these functions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Prefix of everything Passerelle writes on a message.
pub const PREFIX: &str = "x-passerelle-";
/// How many times the whole message has been tried (1 on first delivery).
pub const ATTEMPT: &str = "x-passerelle-attempt";
/// The transform version that produced a message or a failure.
pub const VERSION: &str = "x-passerelle-transform-version";
/// The route a dead letter or a deploy belongs to.
pub const ROUTE: &str = "x-passerelle-route";
/// Why a message was dead-lettered.
pub const REASON: &str = "x-passerelle-reason";
/// Why the last try of a message parked for a delayed retry failed.
pub const LAST_REASON: &str = "x-passerelle-last-reason";
pub const HTTP_STATUS: &str = "x-passerelle-http-status";
pub const ORIGINAL_EXCHANGE: &str = "x-passerelle-original-exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "x-passerelle-original-routing-key";
/// Unix seconds.
pub const DEAD_LETTERED_AT: &str = "x-passerelle-dead-lettered-at";
/// The fixtures that travel with a fleet deploy.
pub const FIXTURES: &str = "x-passerelle-fixtures";
/// A fleet deploy's ed25519 signature (base64), `reload::signature`.
pub const SIGNATURE: &str = "x-passerelle-signature";
/// The line of the imported file a message came from.
pub const IMPORT_LINE: &str = "x-passerelle-import-line";
/// The ingest source (`ingest.sources.<name>`) a message came in through.
pub const SOURCE: &str = "x-passerelle-source";
/// W3C trace context: not ours, but carried through.
pub const TRACEPARENT: &str = "traceparent";

/// What a dead letter records about its failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub reason: String,
    pub route: String,
    pub version: String,
    pub attempt: u32,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub http_status: Option<u16>,
    /// When it was dead-lettered, as unix seconds.
    pub at: Option<u64>,
}

impl DeadLetterRecord {
    pub fn write(&self, headers: &mut FieldTable) {
        set(headers, REASON, &self.reason);
        set(headers, ROUTE, &self.route);
        set(headers, VERSION, &self.version);
        set(headers, ATTEMPT, &self.attempt.to_string());
        set(headers, ORIGINAL_EXCHANGE, &self.original_exchange);
        set(headers, ORIGINAL_ROUTING_KEY, &self.original_routing_key);
        set(
            headers,
            DEAD_LETTERED_AT,
            &self.at.unwrap_or_else(unix_seconds).to_string(),
        );
        if let Some(status) = self.http_status {
            set(headers, HTTP_STATUS, &status.to_string());
        }
    }

    /// Reads what a dead letter's headers record; missing ones stay empty.
    pub fn read(headers: Option<&FieldTable>) -> Self {
        Self {
            reason: get(headers, REASON).unwrap_or_default(),
            route: get(headers, ROUTE).unwrap_or_default(),
            version: get(headers, VERSION).unwrap_or_default(),
            attempt: attempt(headers).unwrap_or(0),
            original_exchange: get(headers, ORIGINAL_EXCHANGE).unwrap_or_default(),
            original_routing_key: get(headers, ORIGINAL_ROUTING_KEY).unwrap_or_default(),
            http_status: get(headers, HTTP_STATUS).and_then(|s| s.parse().ok()),
            at: get(headers, DEAD_LETTERED_AT).and_then(|s| s.parse().ok()),
        }
    }

    /// How long ago it was dead-lettered, if recorded.
    pub fn age(&self) -> Option<Duration> {
        Some(Duration::from_secs(unix_seconds().saturating_sub(self.at?)))
    }
}

/// The attempt count a message carries, whatever integer type the publisher chose.
pub fn attempt(headers: Option<&FieldTable>) -> Option<u32> {
    get(headers, ATTEMPT)?.parse().ok()
}

pub fn set_attempt(headers: &mut FieldTable, attempt: u32) {
    set(headers, ATTEMPT, &attempt.to_string());
}

pub fn set_last_reason(headers: &mut FieldTable, reason: &str) {
    set(headers, LAST_REASON, reason);
}

pub fn set_version(headers: &mut FieldTable, version: &str) {
    set(headers, VERSION, version);
}

pub fn set_source(headers: &mut FieldTable, source: &str) {
    set(headers, SOURCE, source);
}

pub fn set_traceparent(headers: &mut FieldTable, traceparent: &str) {
    set(headers, TRACEPARENT, traceparent);
}

/// The original headers without any of Passerelle's, for a fresh start.
pub fn without_ours(headers: Option<&FieldTable>) -> FieldTable {
    let mut kept = FieldTable::default();
    for (name, value) in headers.map(|h| h.inner().iter()).into_iter().flatten() {
        if !name.as_str().starts_with(PREFIX) {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept
}

/// A header as text, if present and textual or numeric.
pub fn get(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    value_as_text(headers?.inner().get(&ShortString::from(name))?)
}

pub fn set(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(name.into(), text(value));
}

/// Message headers as text, the way a transform sees them. Values that
/// are not text or numbers (tables, arrays, bytes) are left out.
pub fn as_text(headers: Option<&FieldTable>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value_as_text(value)?)))
        .collect()
}

/// Text headers (a transform's, say) as an AMQP table; a name longer than
/// an AMQP short string is refused, named.
pub fn table_of(headers: &[(String, String)]) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(super::short_string("header name", name)?, text(value.as_str()));
    }
    Ok(table)
}

fn value_as_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.to_string(),
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

pub fn text(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_record_reads_back_what_was_written() {
        let record = DeadLetterRecord {
            reason: "shop.upsertBusiness: HTTP 400".into(),
            route: "crm-to-shop".into(),
            version: "0123456789ab".into(),
            attempt: 3,
            original_exchange: "crm.events".into(),
            original_routing_key: "account.updated".into(),
            http_status: Some(400),
            at: Some(1_700_000_000),
        };
        let mut headers = FieldTable::default();
        record.write(&mut headers);
        assert_eq!(DeadLetterRecord::read(Some(&headers)), record);
        let fresh = without_ours(Some(&headers));
        assert!(fresh.inner().is_empty(), "{fresh:?}");
    }

    /// Fuzz finding (`fuzz::text_headers_read_back_from_their_table`): a
    /// header name longer than 255 bytes panicked instead of being refused.
    #[test]
    fn a_header_name_too_long_for_amqp_is_refused_by_name() {
        let long = "n".repeat(256);
        let problem = table_of(&[(long, "v".into())]).unwrap_err();
        assert!(
            problem.contains("header name \"nnnn") && problem.contains("255 bytes"),
            "{problem}"
        );
        assert_eq!(table_of(&[("n".repeat(255), "v".into())]).unwrap().inner().len(), 1);
    }

    #[test]
    fn an_attempt_is_read_whatever_integer_type_carries_it() {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(4));
        assert_eq!(attempt(Some(&headers)), Some(4));
        headers.insert(ATTEMPT.into(), AMQPValue::ShortShortUInt(2));
        assert_eq!(attempt(Some(&headers)), Some(2));
        assert_eq!(attempt(None), None);
    }
}
