//! One route's message path: run the transform, perform its actions, and
//! decide the message's fate (ack, or dead-letter with the reason). A
//! message is acked only after every action succeeded or after it was
//! safely dead-lettered (publisher confirm received).

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use rand::Rng as _;

use crate::amqp::{self, ATTEMPT_HEADER, Publisher, VERSION_HEADER};
use crate::config::Route;
use crate::delivery::{CallContext, DeliveryError, Http};
use crate::runtime::{Action, Message, RouteContext, Runtime, Transform, TransformFailure, TransformSlot};
use crate::version::Version;

/// Why a message did not go through, with what its dead letter records.
#[derive(Debug, Clone)]
pub struct Failure {
    pub temporary: bool,
    pub reason: String,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub version: Version,
}

impl Failure {
    fn permanent(reason: String, version: &Version) -> Self {
        Self {
            temporary: false,
            reason,
            status: None,
            retry_after: None,
            version: version.clone(),
        }
    }

    fn from_transform(failure: TransformFailure, version: &Version) -> Self {
        Self {
            temporary: failure.is_temporary(),
            ..Self::permanent(failure.to_string(), version)
        }
    }

    fn from_delivery(error: DeliveryError, version: &Version) -> Self {
        Self {
            temporary: error.temporary,
            reason: error.reason,
            status: error.status,
            retry_after: error.retry_after,
            version: version.clone(),
        }
    }
}

/// What the route's workers share.
pub struct Pipeline {
    pub name: String,
    pub route: Route,
    pub transform: Arc<TransformSlot>,
    context: RouteContext,
    runtime: Runtime,
    http: Arc<Http>,
}

impl Pipeline {
    pub fn new(name: &str, route: &Route, transform: Arc<TransformSlot>, runtime: Runtime, http: Arc<Http>) -> Self {
        let context = Self::context_for(name, route);
        Self {
            name: name.to_string(),
            route: route.clone(),
            transform,
            context,
            runtime,
            http,
        }
    }

    /// What a route's transform runs with.
    pub fn context_for(name: &str, route: &Route) -> RouteContext {
        RouteContext {
            route: name.to_string(),
            config: Arc::new(route.config.clone()),
            limits: route.limits.guest(),
        }
    }

    /// What the route's transform runs with.
    pub fn context(&self) -> &RouteContext {
        &self.context
    }

    /// Waits until every endpoint this route calls may take requests, so
    /// that the route takes no message it could not deliver.
    pub async fn wait_until_endpoints_usable(&self) {
        self.http.wait_until_usable(&self.route.endpoints).await;
    }

    /// Handles one delivery to the end: acked once delivered, or once
    /// moved (confirmed) to a delayed-retry queue or the dead-letter queue;
    /// left to the broker to redeliver when even that move failed.
    pub async fn handle(&self, delivery: Delivery, publisher: &Publisher) {
        let message = message_of(&delivery);
        let outcome = self.process(&message, publisher).await;
        let settled = match &outcome {
            Ok(version) => {
                tracing::debug!(route = %self.name, %version, message_id = ?message.message_id, "delivered");
                Ok(())
            }
            Err(failure) => match self.delayed_retry_queue(&message, failure) {
                Some(queue) => self.retry_later(&delivery, &message, failure, &queue, publisher).await,
                None => self.dead_letter(&delivery, &message, failure, publisher).await,
            },
        };
        let result = match settled {
            Ok(()) => delivery.ack(Default::default()).await,
            Err(error) => {
                tracing::error!(route = %self.name, "could not move a failed message, the broker will redeliver it: {error:#}");
                let requeue = lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                delivery.nack(requeue).await
            }
        };
        if let Err(error) = result {
            // The channel is gone: the broker redelivers the message.
            tracing::warn!(route = %self.name, "could not settle a message: {error}");
        }
    }

    /// Tries the whole message (transform and actions), retrying temporary
    /// failures in process with exponential backoff and full jitter.
    pub async fn process(&self, message: &Message, publisher: &Publisher) -> Result<Version, Failure> {
        let mut retries = 0;
        loop {
            let transform = self.transform.current();
            match self.try_once(&transform, message, publisher).await {
                Ok(()) => return Ok(transform.version.clone()),
                Err(failure) if failure.temporary && retries < self.route.retry.immediate => {
                    let wait = backoff(self.route.retry.backoff, retries, failure.retry_after);
                    tracing::info!(
                        route = %self.name, version = %failure.version,
                        "temporary failure, retrying in {wait:?}: {}", failure.reason
                    );
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    async fn try_once(&self, transform: &Transform, message: &Message, publisher: &Publisher) -> Result<(), Failure> {
        let version = &transform.version;
        let actions = self
            .runtime
            .run(transform, &self.context, message)
            .await
            .map_err(|failure| Failure::from_transform(failure, version))?;
        for (index, action) in actions.iter().enumerate() {
            self.perform(action, index, message, version, publisher).await?;
        }
        Ok(())
    }

    async fn perform(
        &self,
        action: &Action,
        index: usize,
        message: &Message,
        version: &Version,
        publisher: &Publisher,
    ) -> Result<(), Failure> {
        match action {
            Action::Call {
                endpoint,
                operation,
                args,
            } => {
                if !self.route.endpoints.contains(endpoint) {
                    let reason = format!(
                        "call to {endpoint}.{operation}: endpoint {endpoint:?} is not among route {}'s endpoints",
                        self.name
                    );
                    return Err(Failure::permanent(reason, version));
                }
                let context = CallContext {
                    idempotency_key: idempotency_key(&self.name, message, index),
                    version,
                };
                self.http
                    .call(endpoint, operation, args, &context)
                    .await
                    .map(drop)
                    .map_err(|error| Failure::from_delivery(error, version))
            }
            Action::Publish {
                exchange,
                routing_key,
                body,
                headers,
            } => {
                let mut table = FieldTable::default();
                for (name, value) in headers {
                    table.insert(name.as_str().into(), amqp::text(value.as_str()));
                }
                table.insert(VERSION_HEADER.into(), amqp::text(version.as_str()));
                let properties = BasicProperties::default().with_headers(table);
                publisher
                    .publish(exchange, routing_key, body, properties)
                    .await
                    .map_err(|error| Failure {
                        temporary: true,
                        ..Failure::permanent(format!("publish action: {error:#}"), version)
                    })
            }
        }
    }

    /// The next step of the ladder for a temporary failure, if any is left:
    /// attempt 1 failing goes to the first delay, and so on.
    fn delayed_retry_queue(&self, message: &Message, failure: &Failure) -> Option<String> {
        if !failure.temporary {
            return None;
        }
        let step = usize::try_from(message.attempt).ok()? - 1;
        self.route.retry_queues().into_iter().nth(step).map(|(_, queue)| queue)
    }

    /// Parks the message in a delayed-retry queue; the broker puts it back
    /// into the work queue when the delay is over, one attempt later.
    async fn retry_later(
        &self,
        delivery: &Delivery,
        message: &Message,
        failure: &Failure,
        queue: &str,
        publisher: &Publisher,
    ) -> anyhow::Result<()> {
        tracing::info!(
            route = %self.name, version = %failure.version, message_id = ?message.message_id,
            attempt = message.attempt, "retrying later through {queue}: {}", failure.reason
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPT_HEADER.into(), amqp::text((message.attempt + 1).to_string()));
        headers.insert("x-passerelle-last-reason".into(), amqp::text(failure.reason.as_str()));
        let properties = delivery.properties.clone().with_headers(headers);
        publisher.publish("", queue, &delivery.data, properties).await
    }

    /// Copies the message to the route's dead-letter queue with headers
    /// saying why, and waits for the broker's confirm.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        message: &Message,
        failure: &Failure,
        publisher: &Publisher,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            route = %self.name, version = %failure.version, message_id = ?message.message_id,
            "dead-lettered: {}", failure.reason
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: String| {
            headers.insert(name.into(), amqp::text(value));
        };
        set("x-passerelle-reason", failure.reason.clone());
        set("x-passerelle-route", self.name.clone());
        set(VERSION_HEADER, failure.version.to_string());
        set(ATTEMPT_HEADER, message.attempt.to_string());
        set("x-passerelle-original-exchange", delivery.exchange.to_string());
        set("x-passerelle-original-routing-key", delivery.routing_key.to_string());
        set("x-passerelle-dead-lettered-at", unix_seconds().to_string());
        if let Some(status) = failure.status {
            set("x-passerelle-http-status", status.to_string());
        }
        let properties = delivery.properties.clone().with_headers(headers);
        publisher
            .publish("", &self.route.dead_letter_queue(), &delivery.data, properties)
            .await
    }
}

/// The message as the transform sees it. A redelivery (the broker lost
/// track of an earlier try, say after a crash) counts as an attempt.
pub fn message_of(delivery: &Delivery) -> Message {
    let headers = delivery.properties.headers().as_ref();
    let counted = amqp::header_number(headers, ATTEMPT_HEADER)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let attempt = counted + u32::from(delivery.redelivered);
    Message {
        body: delivery.data.clone(),
        content_type: delivery.properties.content_type().as_ref().map(|c| c.to_string()),
        routing_key: delivery.routing_key.to_string(),
        headers: amqp::headers_as_text(headers),
        message_id: delivery.properties.message_id().as_ref().map(|m| m.to_string()),
        attempt,
    }
}

/// Stable across every attempt and redelivery of one message, distinct per
/// action, so the target can drop repeats.
pub fn idempotency_key(route: &str, message: &Message, action_index: usize) -> String {
    let id = match &message.message_id {
        Some(id) => percent_encoding::utf8_percent_encode(id, crate::delivery::UNRESERVED).to_string(),
        // Without an id, the content is the identity.
        None => format!("sha256-{}", Version::of(&message.body)),
    };
    format!("{route}:{id}:{action_index}")
}

/// Exponential backoff with full jitter, but never sooner than the
/// target's `Retry-After`.
fn backoff(base: Duration, retries: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(retries));
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.0..=1.0));
    jittered.max(retry_after.unwrap_or_default())
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        for retries in 0..4 {
            assert!(backoff(base, retries, None) <= base * 2u32.pow(retries));
        }
        assert!(backoff(base, 0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }

    #[test]
    fn idempotency_key_names_the_message_and_the_action() {
        let message = Message {
            message_id: Some("gg 11".into()),
            ..Default::default()
        };
        assert_eq!(idempotency_key("r", &message, 1), "r:gg%2011:1");
        let with_colon = Message {
            message_id: Some("a-b:c".into()),
            ..Default::default()
        };
        assert_eq!(idempotency_key("r", &with_colon, 0), "r:a-b%3Ac:0");
        let anonymous = Message {
            body: b"{}".to_vec(),
            ..Default::default()
        };
        assert_eq!(idempotency_key("r", &anonymous, 0), idempotency_key("r", &anonymous, 0));
        assert!(idempotency_key("r", &anonymous, 0).starts_with("r:sha256-"));
    }
}
