//! The stale-update guard: a delayed retry must never overwrite a newer
//! update of the same entity. A guarded route reads each message's entity
//! key and ordering value (`guard: { entity, order }`), keeps the newest
//! ordering value it applied per entity in a ledger (`<queue>.guard`,
//! durable and shared by every host), and drops a message whose value is
//! older. An equal value is not older: a redelivery of the update that was
//! applied is delivered again (its `Idempotency-Key` makes that harmless).
//!
//! Within a host, messages of one entity take turns, so two updates in
//! flight at once cannot overtake each other between the check and the
//! record.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::OwnedMutexGuard;

use crate::amqp::Publisher;
use crate::config::{GuardSettings, OrderKind};
use crate::ledger::{self, Ledger};

/// One message's place in its entity's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub entity: String,
    /// The ordering value as the message carries it.
    pub order: String,
}

pub struct Guard {
    settings: GuardSettings,
    ledger: Arc<Ledger>,
    turns: Turns,
}

impl Guard {
    pub fn new(settings: GuardSettings, ledger: Arc<Ledger>) -> Self {
        Self {
            settings,
            ledger,
            turns: Turns::default(),
        }
    }

    /// The ledger's rule: a value replaces an older or equal one.
    pub fn prefer(kind: OrderKind) -> ledger::Prefer {
        match kind {
            OrderKind::Timestamp => |new, old| !is_older(OrderKind::Timestamp, new, old),
            OrderKind::Number => |new, old| !is_older(OrderKind::Number, new, old),
        }
    }

    /// Where the message stands; an error (the reason of its dead letter)
    /// when it has no entity or no readable ordering value.
    pub fn position(&self, body: Option<&Value>, headers: &[(String, String)]) -> Result<Position, String> {
        let GuardSettings {
            entity, order, compare, ..
        } = &self.settings;
        let entity = entity
            .find(body, headers)
            .map(|value| text_of(&value))
            .ok_or_else(|| format!("guard: the message has no entity key at {entity}"))?;
        let value = order
            .find(body, headers)
            .ok_or_else(|| format!("guard: the message has no ordering value at {order}"))?;
        let text = text_of(&value);
        if parse(*compare, &text).is_none() {
            let expected = match compare {
                OrderKind::Timestamp => "an RFC 3339 timestamp",
                OrderKind::Number => "a number",
            };
            return Err(format!("guard: ordering value {text:?} at {order} is not {expected}"));
        }
        Ok(Position { entity, order: text })
    }

    /// The newest value applied to the entity, when this message is older.
    pub fn newer_than(&self, position: &Position) -> Option<String> {
        let applied = self.ledger.get(&position.entity)?;
        is_older(self.settings.compare, &position.order, &applied).then_some(applied)
    }

    /// Records that the message was applied. Call only after every one of
    /// its actions succeeded.
    pub async fn record(&self, publisher: &Publisher, position: &Position) -> anyhow::Result<()> {
        self.ledger
            .record(publisher, &position.entity, &position.order, None)
            .await
    }

    /// Waits for the entity's turn in this host; hold it from the check to the record.
    pub async fn turn(&self, entity: &str) -> Turn<'_> {
        self.turns.take(entity).await
    }
}

/// Whether `order` is older than `applied`. A value that does not parse
/// (an older record of another `compare` kind) never makes a message stale.
fn is_older(kind: OrderKind, order: &str, applied: &str) -> bool {
    match (parse(kind, order), parse(kind, applied)) {
        (Some(order), Some(applied)) => order.partial_cmp(&applied) == Some(Ordering::Less),
        _ => false,
    }
}

/// An ordering value, comparable within its kind.
#[derive(Debug, PartialEq, PartialOrd)]
enum Order {
    Instant(OffsetDateTime),
    Number(f64),
}

fn parse(kind: OrderKind, text: &str) -> Option<Order> {
    match kind {
        OrderKind::Timestamp => OffsetDateTime::parse(text.trim(), &Rfc3339).ok().map(Order::Instant),
        OrderKind::Number => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Order::Number),
    }
}

/// A string as itself, anything else as its JSON text.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// One lock per entity with a message in flight.
#[derive(Default)]
struct Turns {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An entity's turn; the next message of it waits until this is dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
    entity: String,
    held: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    async fn take(&self, entity: &str) -> Turn<'_> {
        let lock = self.locks().entry(entity.to_string()).or_default().clone();
        Turn {
            turns: self,
            entity: entity.to_string(),
            held: Some(lock.lock_owned().await),
        }
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.held.take();
        let mut locks = self.turns.locks();
        // Nobody waits for it (only the map holds it): forget it.
        if locks.get(&self.entity).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(&self.entity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_compare_as_instants_whatever_their_offset() {
        let older = |a, b| is_older(OrderKind::Timestamp, a, b);
        assert!(older("2024-05-01T10:00:00.000Z", "2024-05-01T10:00:00.001Z"));
        assert!(
            !older("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000Z"),
            "equal is not older"
        );
        assert!(!older("2024-05-01T12:00:01+02:00", "2024-05-01T10:00:00Z"));
        assert!(older("2024-05-01T11:59:59+02:00", "2024-05-01T10:00:00Z"));
        assert!(!older("yesterday", "2024-05-01T10:00:00Z"));
    }

    #[test]
    fn numbers_compare_by_value_and_the_ledger_keeps_the_newest() {
        assert!(is_older(OrderKind::Number, "9", "10"));
        assert!(!is_older(OrderKind::Number, "10", "10.0"));
        let prefer = Guard::prefer(OrderKind::Number);
        assert!(prefer("10", "9"));
        assert!(prefer("10", "10"));
        assert!(!prefer("9", "10"));
        assert!(Guard::prefer(OrderKind::Timestamp)(
            "2024-05-02T00:00:00Z",
            "2024-05-01T00:00:00Z"
        ));
    }

    fn guard(compare: OrderKind) -> Guard {
        let settings = GuardSettings {
            entity: crate::config::Locator::parse("/Id").unwrap(),
            order: crate::config::Locator::parse("header:x-version").unwrap(),
            compare,
            keep: std::time::Duration::from_secs(60),
        };
        let retention = ledger::Retention {
            max_age: settings.keep,
            max_bytes: 1 << 20,
        };
        Guard::new(settings, Arc::new(Ledger::new("t", retention, Guard::prefer(compare))))
    }

    #[test]
    fn a_position_names_what_is_missing_or_unreadable() {
        let guard = guard(OrderKind::Number);
        let body = serde_json::json!({"Id": 11});
        let headers = vec![("X-Version".to_string(), "3".to_string())];
        let position = guard.position(Some(&body), &headers).unwrap();
        assert_eq!(
            position,
            Position {
                entity: "11".into(),
                order: "3".into()
            }
        );
        let error = guard.position(Some(&serde_json::json!({})), &headers).unwrap_err();
        assert!(error.contains("no entity key at /Id"), "{error}");
        let error = guard.position(Some(&body), &[]).unwrap_err();
        assert!(error.contains("no ordering value at header:x-version"), "{error}");
        let bad = vec![("x-version".to_string(), "three".to_string())];
        let error = guard.position(Some(&body), &bad).unwrap_err();
        assert!(
            error.contains(r#""three" at header:x-version is not a number"#),
            "{error}"
        );
    }

    #[tokio::test]
    async fn messages_of_one_entity_take_turns_and_the_lock_is_forgotten_after() {
        let guard = guard(OrderKind::Number);
        let first = guard.turn("a").await;
        let other = guard.turn("b").await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), guard.turn("a")).await;
        assert!(waiting.is_err(), "a second turn of one entity waits");
        drop((first, other));
        let _again = guard.turn("a").await;
        assert_eq!(guard.turns.locks().len(), 1);
    }
}
