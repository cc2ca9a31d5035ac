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

#[cfg(test)]
mod fuzz {
    use std::collections::BTreeMap;

    use lapin::types::{ByteArray, DecimalValue, FieldArray};
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const TOKENS: &[&str] = &[
        PREFIX,
        ATTEMPT,
        REASON,
        TRACEPARENT,
        "é",
        "\0",
        "\u{fffd}",
        "-",
        "4",
        " ",
    ];

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => fuzzing::text(TOKENS, 6),
            1 => "[a-z]{250,300}",
        ]
    }

    fn short_name() -> impl Strategy<Value = ShortString> {
        fuzzing::text(TOKENS, 6).prop_filter_map("longer than a short string", |name| ShortString::try_new(name).ok())
    }

    /// Any value a publisher may put in a header, tables and arrays included.
    fn amqp_value() -> impl Strategy<Value = AMQPValue> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f32>().prop_map(AMQPValue::Float),
            any::<f64>().prop_map(AMQPValue::Double),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
            short_name().prop_map(AMQPValue::ShortString),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|bytes| AMQPValue::LongString(bytes.into())),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|bytes| AMQPValue::ByteArray(ByteArray::from(bytes))),
            Just(AMQPValue::Void),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
                prop::collection::btree_map(short_name(), inner, 0..4)
                    .prop_map(|table| AMQPValue::FieldTable(FieldTable::from(table))),
            ]
        })
    }

    fn table() -> impl Strategy<Value = FieldTable> {
        let name = prop_oneof![
            short_name(),
            prop::sample::select(&[ATTEMPT, REASON, HTTP_STATUS][..]).prop_map(ShortString::from)
        ];
        prop::collection::btree_map(name, amqp_value(), 0..8).prop_map(FieldTable::from)
    }

    proptest! {
        #![proptest_config(fuzzing::config(512))]

        /// Text headers (a transform's) become a table that reads back the
        /// same, or are refused naming the header that cannot be one.
        #[test]
        fn text_headers_read_back_from_their_table(headers in prop::collection::vec((name(), ".{0,12}"), 0..6)) {
            match table_of(&headers) {
                Ok(table) => {
                    let written: BTreeMap<String, String> = headers.into_iter().collect();
                    let read: BTreeMap<String, String> = as_text(Some(&table)).into_iter().collect();
                    prop_assert_eq!(read, written);
                }
                Err(problem) => {
                    let long = headers.iter().find(|(name, _)| name.len() > 255).map(|(name, _)| name);
                    prop_assert!(long.is_some(), "{}", problem);
                    prop_assert!(problem.contains(&long.unwrap()[..20]), "{}", problem);
                }
            }
        }

        /// A publisher's table, whatever it holds, reads without a panic:
        /// text and numbers as text, the rest left out.
        #[test]
        fn any_table_reads_as_text(table in table()) {
            let text = as_text(Some(&table));
            for (name, value) in &text {
                let original = table.inner().get(&ShortString::from(name.as_str()));
                prop_assert!(original.is_some(), "{} was not in the table", name);
                prop_assert_eq!(get(Some(&table), name), Some(value.clone()));
            }
            let textual = table.inner().values().filter(|value| !matches!(value,
                AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) | AMQPValue::FieldArray(_)
                | AMQPValue::FieldTable(_) | AMQPValue::ByteArray(_) | AMQPValue::Void)).count();
            prop_assert_eq!(text.len(), textual);
            if let Some(attempt) = attempt(Some(&table)) {
                prop_assert_eq!(get(Some(&table), ATTEMPT), Some(attempt.to_string()));
            }
            let record = DeadLetterRecord::read(Some(&table));
            prop_assert_eq!(record.http_status.map(|s| s.to_string()), get(Some(&table), HTTP_STATUS).filter(|s| s.parse::<u16>().is_ok()));
            let fresh = without_ours(Some(&table));
            prop_assert!(fresh.inner().keys().all(|name| !name.as_str().starts_with(PREFIX)));
            let ours = table.inner().keys().filter(|name| name.as_str().starts_with(PREFIX)).count();
            prop_assert_eq!(fresh.inner().len() + ours, table.inner().len());
        }

        #[test]
        fn a_dead_letter_record_reads_back_whatever_it_holds(
            texts in prop::collection::vec(".{0,40}", 5),
            attempt in any::<u32>(),
            http_status in proptest::option::of(any::<u16>()),
            at in any::<u64>(),
        ) {
            let record = DeadLetterRecord {
                reason: texts[0].clone(),
                route: texts[1].clone(),
                version: texts[2].clone(),
                attempt,
                original_exchange: texts[3].clone(),
                original_routing_key: texts[4].clone(),
                http_status,
                at: Some(at),
            };
            let mut headers = FieldTable::default();
            record.write(&mut headers);
            prop_assert_eq!(DeadLetterRecord::read(Some(&headers)), record);
        }
    }
}
