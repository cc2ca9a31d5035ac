//! One route's message path, transport-neutral: run the transform (and
//! hand a copy to the route's shadow, if one runs), perform its actions,
//! retry temporary failures in process, and say what should become of the
//! message (`Outcome`): delivered, retry later through a delayed-retry
//! queue, or dead letter, with the reason. The AMQP side of that decision
//! (ack, copies, confirms) is `amqp::consumer`'s.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rand::Rng as _;

use crate::amqp::{Publisher, headers};
use crate::delivery::{CallContext, DeliveryError, Http};
use crate::memory::{DropReason, Keys, RouteMemory};
use crate::routes::RouteHandle;
use crate::runtime::{Action, Lanes, Message, Ran, Transform, TransformFailure, bounded_reason};
use crate::stats::{RetryKind, RouteCounters, Stats, TransformTimer};
use crate::trace::TraceContext;
use crate::version::Version;

/// What kind of failure it was: the label of the dead-letter metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    TransformReject,
    TransformRetry,
    TransformTrap,
    /// A call the route may not make, or whose arguments do not fit the operation.
    InvalidCall,
    HttpPermanent,
    HttpTemporary,
    /// No answer: unreachable, timed out.
    Network,
    Publish,
    /// A body larger than the route's `limits.body`: never given to the transform.
    TooLarge,
    /// A guarded route's message without a readable entity key or ordering value.
    GuardKey,
}

impl FailureClass {
    pub const ALL: [Self; 10] = [
        Self::TransformReject,
        Self::TransformRetry,
        Self::TransformTrap,
        Self::InvalidCall,
        Self::HttpPermanent,
        Self::HttpTemporary,
        Self::Network,
        Self::Publish,
        Self::TooLarge,
        Self::GuardKey,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::TransformReject => "transform_reject",
            Self::TransformRetry => "transform_retry",
            Self::TransformTrap => "transform_trap",
            Self::InvalidCall => "invalid_call",
            Self::HttpPermanent => "http_permanent",
            Self::HttpTemporary => "http_temporary",
            Self::Network => "network",
            Self::Publish => "publish",
            Self::TooLarge => "too_large",
            Self::GuardKey => "guard_key",
        }
    }
}

/// Why a message did not go through, with what its dead letter records.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: FailureClass,
    pub temporary: bool,
    pub reason: String,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub version: Version,
}

impl Failure {
    /// Every reason is cut to `MAX_REASON`: it goes into a dead letter's
    /// headers, which must fit one AMQP frame, and into logs.
    fn permanent(class: FailureClass, reason: String, version: &Version) -> Self {
        Self {
            class,
            temporary: false,
            reason: bounded_reason(reason),
            status: None,
            retry_after: None,
            version: version.clone(),
        }
    }

    fn from_transform(failure: TransformFailure, version: &Version) -> Self {
        let class = match failure {
            TransformFailure::Reject(_) => FailureClass::TransformReject,
            TransformFailure::Retry(_) => FailureClass::TransformRetry,
            TransformFailure::Trap(_) => FailureClass::TransformTrap,
        };
        Self {
            temporary: failure.is_temporary(),
            ..Self::permanent(class, failure.to_string(), version)
        }
    }

    fn from_delivery(error: DeliveryError, version: &Version) -> Self {
        let class = match (error.status, error.temporary) {
            (Some(_), true) => FailureClass::HttpTemporary,
            (Some(_), false) => FailureClass::HttpPermanent,
            (None, true) => FailureClass::Network,
            (None, false) => FailureClass::InvalidCall,
        };
        Self {
            class,
            temporary: error.temporary,
            reason: bounded_reason(error.reason),
            status: error.status,
            retry_after: error.retry_after,
            version: version.clone(),
        }
    }
}

/// What should become of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Every action succeeded: ack it.
    Delivered { version: Version },
    /// A temporary failure with a ladder step left: park it in `queue`.
    RetryLater { failure: Failure, queue: String },
    /// A permanent failure, or the ladder is used up.
    DeadLetter(Failure),
    /// Stale or an echo: ack it, nothing to do.
    Dropped(DropReason),
    /// Delivered, but what the route must remember of it could not be
    /// recorded: requeue it, so that it is delivered again (the
    /// `Idempotency-Key` makes that harmless) and recorded.
    Unrecorded,
}

/// What the route's workers share.
pub struct Pipeline {
    pub route: Arc<RouteHandle>,
    /// Where its transforms run (shared by every route of the host).
    lanes: Lanes,
    http: Arc<Http>,
    stats: Arc<Stats>,
    counters: RouteCounters,
    transform_timer: TransformTimer,
    /// How long its messages wait for a lane.
    lane_wait: Histogram,
    memory: RouteMemory,
}

impl Pipeline {
    pub fn new(route: Arc<RouteHandle>, lanes: Lanes, http: Arc<Http>, stats: Arc<Stats>, memory: RouteMemory) -> Self {
        let counters = stats.route_counters(&route.name);
        let transform_timer = TransformTimer::new(&route.name);
        let lane_wait = stats.transform_wait_seconds(&route.name);
        Self {
            route,
            lanes,
            http,
            stats,
            counters,
            transform_timer,
            lane_wait,
            memory,
        }
    }

    pub fn name(&self) -> &str {
        &self.route.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Waits until every endpoint this route calls may take requests, so
    /// that the route takes no message it could not deliver.
    pub async fn wait_until_endpoints_usable(&self) {
        self.http.wait_until_usable(&self.route.route.endpoints).await;
    }

    /// Drops the message when the route's memory says it is stale or an
    /// echo; else tries it (transform and actions), retrying temporary
    /// failures in process with exponential backoff and full jitter, and
    /// says what should become of it. `trace` is the message's span;
    /// `span_version` the transform version its log span was opened with
    /// (recorded again only if an attempt runs another).
    pub async fn process(
        &self,
        message: &Message,
        trace: &TraceContext,
        publisher: &Publisher,
        span_version: &Version,
    ) -> Outcome {
        self.counters.received();
        if let Some(failure) = self.too_large(message) {
            return Outcome::DeadLetter(failure);
        }
        let keys = match self.memory.read(message) {
            Ok(keys) => keys,
            Err(reason) => {
                let version = self.route.slot.current().version.clone();
                return Outcome::DeadLetter(Failure::permanent(FailureClass::GuardKey, reason, &version));
            }
        };
        let _turn = self.memory.turn(&keys).await;
        if let Some((reason, detail)) = self.memory.verdict(&keys) {
            self.stats.dropped(self.name(), reason.label());
            tracing::info!("dropped ({}): {detail}", reason.label());
            return Outcome::Dropped(reason);
        }
        self.deliver(message, &keys, trace, publisher, span_version).await
    }

    async fn deliver(
        &self,
        message: &Message,
        keys: &Keys,
        trace: &TraceContext,
        publisher: &Publisher,
        span_version: &Version,
    ) -> Outcome {
        let retry = &self.route.route.retry;
        let mut retries = 0;
        loop {
            let transform = self.route.slot.current();
            if transform.version != *span_version {
                // Swapped since the span was opened: its lines name the version that ran.
                tracing::Span::current().record("version", transform.version.as_str());
            }
            let first_try = retries == 0;
            let failure = match self.try_once(&transform, message, trace, publisher, first_try).await {
                Ok(actions) => {
                    if let Err(error) = self.memory.remember(publisher, keys, &actions).await {
                        tracing::error!("delivered, but not recorded; requeued to be delivered again: {error:#}");
                        return Outcome::Unrecorded;
                    }
                    self.counters.delivered();
                    tracing::debug!("delivered");
                    return Outcome::Delivered {
                        version: transform.version.clone(),
                    };
                }
                Err(failure) => failure,
            };
            if !(failure.temporary && retries < retry.immediate) {
                return self.settle_failure(message, failure);
            }
            let wait = backoff(retry.backoff, retries, failure.retry_after);
            tracing::info!("temporary failure, retrying in {wait:?}: {}", failure.reason);
            self.stats.retried(self.name(), RetryKind::InProcess);
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// A body over `limits.body` is refused before the transform sees it:
    /// it would only run the guest out of memory, every attempt.
    fn too_large(&self, message: &Message) -> Option<Failure> {
        let limit = self.route.context.limits.body;
        if message.body.len() <= limit {
            return None;
        }
        let size = |bytes: usize| bytesize::ByteSize(bytes as u64).display().iec().to_string();
        let reason = format!(
            "the message body ({}) is larger than the route's limits.body ({})",
            size(message.body.len()),
            size(limit)
        );
        let version = self.route.slot.current().version.clone();
        Some(Failure::permanent(FailureClass::TooLarge, reason, &version))
    }

    /// The next step of the ladder for a temporary failure, if any is
    /// left (attempt 1 failing goes to the first delay), else the dead letter.
    fn settle_failure(&self, message: &Message, failure: Failure) -> Outcome {
        let step = (message.attempt as usize).saturating_sub(1);
        let next_queue = self.route.route.retry_queues().into_iter().nth(step);
        match next_queue {
            Some((_, queue)) if failure.temporary => Outcome::RetryLater { failure, queue },
            _ => Outcome::DeadLetter(failure),
        }
    }

    async fn try_once(
        &self,
        transform: &Transform,
        message: &Message,
        trace: &TraceContext,
        publisher: &Publisher,
        first_try: bool,
    ) -> Result<Vec<Action>, Failure> {
        let version = &transform.version;
        let Ran {
            outcome: ran,
            waited,
            took,
            ..
        } = self.lanes.run(transform, &self.route.context, message).await;
        self.lane_wait.observe(waited.as_secs_f64());
        self.transform_timer.observe(&self.stats, version, took);
        if first_try {
            // A hand-off, never a wait: the shadow's whole cost to this path.
            self.route.shadow.offer(message, &ran, version);
        }
        let actions = ran.map_err(|failure| Failure::from_transform(failure, version))?;
        for (index, action) in actions.iter().enumerate() {
            self.perform(action, index, message, version, trace, publisher).await?;
        }
        Ok(actions)
    }

    async fn perform(
        &self,
        action: &Action,
        index: usize,
        message: &Message,
        version: &Version,
        trace: &TraceContext,
        publisher: &Publisher,
    ) -> Result<(), Failure> {
        match action {
            Action::Call {
                endpoint,
                operation,
                args,
            } => {
                if !self.route.route.endpoints.contains(endpoint) {
                    let reason = format!(
                        "call to {endpoint}.{operation}: endpoint {endpoint:?} is not among route {}'s endpoints",
                        self.name()
                    );
                    return Err(Failure::permanent(FailureClass::InvalidCall, reason, version));
                }
                let context = CallContext {
                    idempotency_key: idempotency_key(self.name(), message, index),
                    version,
                    traceparent: trace.child().to_string(),
                    priority: self.route.route.priority,
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
                headers: guest_headers,
            } => {
                // Checked when the guest returned it (`runtime::bounds::check_actions`).
                let mut table = headers::table_of(guest_headers)
                    .map_err(|problem| Failure::permanent(FailureClass::InvalidCall, problem, version))?;
                headers::set_version(&mut table, version.as_str());
                headers::set_traceparent(&mut table, &trace.child().to_string());
                let properties = lapin::BasicProperties::default().with_headers(table);
                publisher
                    .publish(exchange, routing_key, body, properties)
                    .await
                    .map_err(|error| Failure {
                        temporary: true,
                        ..Failure::permanent(FailureClass::Publish, format!("publish action: {error:#}"), version)
                    })
            }
        }
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

    #[test]
    fn every_failure_class_has_its_own_label() {
        let mut labels: Vec<_> = FailureClass::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), FailureClass::ALL.len());
    }
}
