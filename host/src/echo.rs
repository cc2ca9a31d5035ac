//! Echo suppression for two-way sync. When the host writes a change to
//! the shop, the shop announces it as an event, and the route going the
//! other way would write it back to the CRM, which announces it... The
//! host breaks the loop by remembering, per system and entity, the
//! fingerprint of the state it last knew that system to hold:
//!
//! - after a route delivered, the state it wrote to its target (the
//!   fields of each call's args to the target endpoint), and the state
//!   its source reported (the fields of the message it consumed);
//! - before a route runs a message, it compares the fields of the
//!   message with the state remembered for its source: equal means the
//!   source only says what the host already knew (its own write coming
//!   back, or a repeat), and the message is acked without a call.
//!
//! A genuine change differs from what was written, so it goes through;
//! and because an event updates what is remembered, changing a value back
//! goes through too. Entries expire after the echo `ttl`. Both routes of a
//! sync share one ledger (`echo.ledger`), so every host knows every write.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::amqp::Publisher;
use crate::config::{EchoSettings, EchoSide, Locator};
use crate::ledger::Ledger;
use crate::runtime::Action;

/// What a system holds for one entity, as far as the host knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The system and entity, as the ledger's key.
    key: String,
    fingerprint: String,
}

pub struct Echo {
    settings: EchoSettings,
    ledger: Arc<Ledger>,
}

impl Echo {
    pub fn new(settings: EchoSettings, ledger: Arc<Ledger>) -> Self {
        Self { settings, ledger }
    }

    /// The state of its source that a message reports; None when it names
    /// no entity (it is then neither checked nor remembered).
    pub fn reported(&self, body: Option<&Value>, headers: &[(String, String)]) -> Option<State> {
        state_of(&self.settings.source, body, headers)
    }

    /// Whether the source is known to hold that state already.
    pub fn is_echo(&self, reported: &State) -> bool {
        self.ledger.get(&reported.key).as_deref() == Some(reported.fingerprint.as_str())
    }

    /// Remembers what the source reported and what the route wrote to its
    /// target. Call only after every action succeeded.
    pub async fn remember(
        &self,
        publisher: &Publisher,
        reported: Option<&State>,
        actions: &[Action],
    ) -> anyhow::Result<()> {
        for state in reported.into_iter().cloned().chain(self.written(actions)) {
            self.ledger
                .record(publisher, &state.key, &state.fingerprint, Some(self.ttl()))
                .await?;
        }
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.settings.ttl
    }

    /// The states the route's calls to its target endpoint write.
    fn written(&self, actions: &[Action]) -> Vec<State> {
        let target = &self.settings.target;
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Call { endpoint, args, .. } if *endpoint == target.endpoint => {
                    state_of(target, Some(&Value::Object(args.clone())), &[])
                }
                _ => None,
            })
            .collect()
    }
}

fn state_of(side: &EchoSide, body: Option<&Value>, headers: &[(String, String)]) -> Option<State> {
    let entity = side.entity.find(body, headers)?;
    let values: Vec<Value> = side
        .fields
        .iter()
        .map(|field: &Locator| field.find(body, headers).unwrap_or(Value::Null))
        .collect();
    Some(State {
        key: serde_json::to_string(&(&side.endpoint, entity_text(&entity))).unwrap_or_default(),
        fingerprint: fingerprint(&values),
    })
}

/// SHA-256 of the values' JSON (object keys sorted), 128 bits in hex:
/// compared per entity only, so collisions are out of the question.
fn fingerprint(values: &[Value]) -> String {
    let canonical = serde_json::to_vec(values).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest[..16].iter().map(|byte| format!("{byte:02x}")).collect()
}

fn entity_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Retention, latest};

    fn side(endpoint: &str, entity: &str, fields: &[&str]) -> EchoSide {
        EchoSide {
            endpoint: endpoint.into(),
            entity: Locator::parse(entity).unwrap(),
            fields: fields.iter().map(|f| Locator::parse(f).unwrap()).collect(),
        }
    }

    /// The shipped shop-to-crm route's echo settings.
    fn shop_to_crm() -> Echo {
        let settings = EchoSettings {
            ledger: "accounts".into(),
            ttl: Duration::from_secs(60),
            source: side("shop", "/crmId", &["/business/name", "/status", "/country/id"]),
            target: side("salesforce", "/accountId", &["/Name", "/Status__c", "/Country__c"]),
        };
        let retention = Retention {
            max_age: settings.ttl,
            max_bytes: 1 << 20,
        };
        Echo::new(settings, Arc::new(Ledger::new("accounts", retention, latest)))
    }

    #[test]
    fn a_shop_event_and_the_shop_write_of_one_state_have_one_fingerprint() {
        let echo = shop_to_crm();
        let event =
            serde_json::json!({"crmId": "gg-11", "business": {"name": "E"}, "status": 70, "country": {"id": 76}});
        let reported = echo.reported(Some(&event), &[]).unwrap();
        // What crm-to-shop's call to the shop carries, seen by a route whose target is the shop.
        let write = side("shop", "/crmId", &["/business/name", "/status", "/country/id"]);
        let args =
            serde_json::json!({"crmId": "gg-11", "business": {"name": "E"}, "country": {"id": 76}, "status": 70});
        assert_eq!(state_of(&write, Some(&args), &[]), Some(reported.clone()));
        let changed =
            serde_json::json!({"crmId": "gg-11", "business": {"name": "F"}, "status": 70, "country": {"id": 76}});
        assert_ne!(echo.reported(Some(&changed), &[]), Some(reported));
        assert_eq!(echo.reported(Some(&serde_json::json!({"status": 70})), &[]), None);
    }

    #[test]
    fn only_calls_to_the_target_endpoint_count_as_writes() {
        let echo = shop_to_crm();
        let args = |id: &str| match serde_json::json!({"accountId": id, "Name": "E"}) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let call = |endpoint: &str, id: &str| Action::Call {
            endpoint: endpoint.into(),
            operation: "updateAccount".into(),
            args: args(id),
        };
        let written = echo.written(&[call("salesforce", "gg-1"), call("shop", "gg-2")]);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].key, r#"["salesforce","gg-1"]"#);
    }
}
