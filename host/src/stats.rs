//! What the running host counts, for `/metrics` (Prometheus), `/readyz`
//! and the ops page: messages per route and outcome, transform and HTTP
//! durations, breaker states, reloads and fleet deploys, and whether the
//! broker is connected. One `Stats` per host, shared; recording is a few
//! atomic operations, cheap enough for every message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::version::Version;

/// How a message left the host after a temporary failure.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RetryKind {
    /// Tried again at once, in process, after a short backoff.
    InProcess,
    /// Parked in a TTL queue for a later attempt.
    Delayed,
}

impl RetryKind {
    fn label(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::Delayed => "delayed",
        }
    }
}

/// Breaker states as the gauge reports them: 0 closed, 1 probing, 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Probing,
    Open,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Probing => "probing",
            Self::Open => "open",
        }
    }
}

/// Totals of one route, for the ops page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteCounts {
    pub received: u64,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    route: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    route: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    route: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: String,
    operation: String,
    status_class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    source: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    route: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    route: String,
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A route's counters of every message, held by its pipeline: counting a
/// message is an atomic addition, with no label to build or look up.
#[derive(Clone)]
pub struct RouteCounters {
    received: Counter,
    delivered: Counter,
}

impl RouteCounters {
    pub fn received(&self) {
        self.received.inc();
    }

    pub fn delivered(&self) {
        self.delivered.inc();
    }
}

/// The transform-duration histogram of the version a route runs now, held
/// by its pipeline: a message's observation builds no labels; a swap
/// (another version) looks the new one up once.
pub struct TransformTimer {
    route: String,
    held: std::sync::Mutex<Option<(Version, Histogram)>>,
}

impl TransformTimer {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_string(),
            held: std::sync::Mutex::new(None),
        }
    }

    pub fn observe(&self, stats: &Stats, version: &Version, took: Duration) {
        let histogram = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match &*held {
                Some((running, histogram)) if running == version => histogram.clone(),
                _ => {
                    let histogram = stats.transform_seconds(&self.route, version.as_str());
                    *held = Some((version.clone(), histogram.clone()));
                    histogram
                }
            }
        };
        histogram.observe(took.as_secs_f64());
    }
}

pub struct Stats {
    registry: Registry,
    received: Family<RouteLabel, Counter>,
    delivered: Family<RouteLabel, Counter>,
    retried: Family<RetryLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
    transform_seconds: Histograms<VersionLabels>,
    transform_wait_seconds: Histograms<RouteLabel>,
    http_seconds: Histograms<CallLabels>,
    breaker_state: Family<EndpointLabel, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    fleet_deploys: Family<RouteLabel, Counter>,
    fleet_refused: Family<ReasonLabels, Counter>,
    broker_connected: Gauge,
    connected: AtomicBool,
    ingested: Family<IngestLabels, Counter>,
    shadowed: Family<ShadowLabels, Counter>,
}

/// From 100 µs to about 3 s: a transform takes well under a millisecond,
/// an HTTP call tens of milliseconds, a slow one seconds.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// From 10 µs to about 0.3 s: a transform waits for its lane microseconds
/// while the lanes keep up, milliseconds once the guests use every core.
fn wait_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 16))
}

impl Default for Stats {
    fn default() -> Self {
        let mut stats = Self {
            registry: Registry::with_prefix("passerelle"),
            received: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            transform_seconds: Family::new_with_constructor(duration_buckets),
            transform_wait_seconds: Family::new_with_constructor(wait_buckets),
            http_seconds: Family::new_with_constructor(duration_buckets),
            breaker_state: Family::default(),
            reloads: Family::default(),
            fleet_deploys: Family::default(),
            fleet_refused: Family::default(),
            broker_connected: Gauge::default(),
            connected: AtomicBool::new(false),
            ingested: Family::default(),
            shadowed: Family::default(),
        };
        stats.register();
        stats
    }
}

impl Stats {
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "messages_received",
            "Messages taken from a route's queue",
            self.received.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages whose every action succeeded",
            self.delivered.clone(),
        );
        r.register(
            "messages_retried",
            "Temporary failures tried again, in process or through a delayed-retry queue",
            self.retried.clone(),
        );
        r.register(
            "messages_dead_lettered",
            "Messages moved to the dead-letter queue, by reason class",
            self.dead_lettered.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages acked without delivery: stale (older than an update of their entity already applied) \
             or echo (their source already holds what they report)",
            self.dropped.clone(),
        );
        r.register(
            "transform_duration_seconds",
            "Time to run one message through the route's transform",
            self.transform_seconds.clone(),
        );
        r.register(
            "transform_wait_seconds",
            "Time a message waited for a sandbox lane before its transform ran",
            self.transform_wait_seconds.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP calls to declared operations, by status class (2xx, 4xx, 5xx, error)",
            self.http_seconds.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 probing, 2 open",
            self.breaker_state.clone(),
        );
        r.register("reloads", "Transform swaps, done or refused", self.reloads.clone());
        r.register(
            "fleet_deploys_applied",
            "Fleet deploys this host applied",
            self.fleet_deploys.clone(),
        );
        r.register(
            "fleet_deploys_refused",
            "Fleet deploys this host refused before validating them: unsigned, bad_signature, \
             or no_key (it has no fleet.verify_key)",
            self.fleet_refused.clone(),
        );
        r.register(
            "broker_connected",
            "1 while connected to the broker",
            self.broker_connected.clone(),
        );
        r.register(
            "ingest_messages",
            "Ingest server, by source and outcome: published (one per message the broker confirmed), \
             or why a request was refused (unauthorized, too_large, invalid, unavailable; one per request)",
            self.ingested.clone(),
        );
        r.register(
            "shadow_messages",
            "Shadow runs, by route and outcome: the candidate's actions identical to the live ones, \
             different, failing (the candidate failed), or skipped (the candidate was behind)",
            self.shadowed.clone(),
        );
    }

    /// The route's message counters, looked up once (they read 0 until
    /// its first message).
    pub fn route_counters(&self, route: &str) -> RouteCounters {
        let label = route_label(route);
        RouteCounters {
            received: self.received.get_or_create(&label).clone(),
            delivered: self.delivered.get_or_create(&label).clone(),
        }
    }

    pub fn retried(&self, route: &str, kind: RetryKind) {
        let labels = RetryLabels {
            route: route.to_string(),
            kind: kind.label(),
        };
        self.retried.get_or_create(&labels).inc();
    }

    /// `reason` is a failure class (`transform_reject`, `http_4xx`…), not the text.
    pub fn dead_lettered(&self, route: &str, reason: &str) {
        let labels = ReasonLabels {
            route: route.to_string(),
            reason: reason.to_string(),
        };
        self.dead_lettered.get_or_create(&labels).inc();
    }

    /// `reason` is `stale` or `echo`.
    pub fn dropped(&self, route: &str, reason: &str) {
        let labels = ReasonLabels {
            route: route.to_string(),
            reason: reason.to_string(),
        };
        self.dropped.get_or_create(&labels).inc();
    }

    /// The histogram of a route's transform runs with one version, for the
    /// pipeline to hold while that version runs (see `TransformTimer`).
    pub fn transform_seconds(&self, route: &str, version: &str) -> Histogram {
        let labels = VersionLabels {
            route: route.to_string(),
            version: version.to_string(),
        };
        self.transform_seconds.get_or_create(&labels).clone()
    }

    /// The histogram of a route's waits for a sandbox lane, for the
    /// pipeline to hold.
    pub fn transform_wait_seconds(&self, route: &str) -> Histogram {
        let labels = RouteLabel {
            route: route.to_string(),
        };
        self.transform_wait_seconds.get_or_create(&labels).clone()
    }

    /// `status` is the HTTP status, or None when no answer came.
    pub fn http_called(&self, endpoint: &str, operation: &str, status: Option<u16>, took: Duration) {
        self.http_seconds(endpoint, operation, status)
            .observe(took.as_secs_f64());
    }

    /// The histogram of one operation's calls that ended with `status`'s
    /// class; a client holds its 2xx one, so that the common case builds
    /// no labels.
    pub fn http_seconds(&self, endpoint: &str, operation: &str, status: Option<u16>) -> Histogram {
        let status_class = match status {
            Some(status) => format!("{}xx", status / 100),
            None => "error".to_string(),
        };
        let labels = CallLabels {
            endpoint: endpoint.to_string(),
            operation: operation.to_string(),
            status_class,
        };
        self.http_seconds.get_or_create(&labels).clone()
    }

    pub fn breaker(&self, endpoint: &str, state: BreakerState) {
        let labels = EndpointLabel {
            endpoint: endpoint.to_string(),
        };
        self.breaker_state.get_or_create(&labels).set(state as i64);
    }

    pub fn reloaded(&self, route: &str, done: bool) {
        let labels = ReloadLabels {
            route: route.to_string(),
            outcome: if done { "done" } else { "refused" }.to_string(),
        };
        self.reloads.get_or_create(&labels).inc();
    }

    pub fn fleet_deploy_applied(&self, route: &str) {
        self.fleet_deploys.get_or_create(&route_label(route)).inc();
    }

    /// `reason` is `Distrust::label`.
    pub fn fleet_deploy_refused(&self, route: &str, reason: &str) {
        let labels = ReasonLabels {
            route: route.to_string(),
            reason: reason.to_string(),
        };
        self.fleet_refused.get_or_create(&labels).inc();
    }

    /// `outcome` is `published` or a refusal class (`unauthorized`…).
    pub fn ingested(&self, source: &str, outcome: &'static str, count: u64) {
        let labels = IngestLabels {
            source: source.to_string(),
            outcome,
        };
        self.ingested.get_or_create(&labels).inc_by(count);
    }

    /// `outcome` is `identical`, `different`, `failing` or `skipped`.
    pub fn shadowed(&self, route: &str, outcome: &'static str) {
        let labels = ShadowLabels {
            route: route.to_string(),
            outcome,
        };
        self.shadowed.get_or_create(&labels).inc();
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.broker_connected.set(i64::from(connected));
    }

    pub fn broker_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A route's totals since start.
    pub fn route_counts(&self, route: &str) -> RouteCounts {
        let label = route_label(route);
        let retried = [RetryKind::InProcess, RetryKind::Delayed]
            .into_iter()
            .map(|kind| {
                let labels = RetryLabels {
                    route: route.to_string(),
                    kind: kind.label(),
                };
                self.retried.get(&labels).map_or(0, |c| c.get())
            })
            .sum();
        RouteCounts {
            received: self.received.get(&label).map_or(0, |c| c.get()),
            delivered: self.delivered.get(&label).map_or(0, |c| c.get()),
            retried,
            dead_lettered: self.dead_lettered_total(route),
        }
    }

    fn dead_lettered_total(&self, route: &str) -> u64 {
        // Reason classes are few and known: sum them.
        crate::pipeline::FailureClass::ALL
            .iter()
            .map(|class| {
                let labels = ReasonLabels {
                    route: route.to_string(),
                    reason: class.label().to_string(),
                };
                self.dead_lettered.get(&labels).map_or(0, |c| c.get())
            })
            .sum()
    }

    /// Everything, in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn route_label(route: &str) -> RouteLabel {
    RouteLabel {
        route: route.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_s_counters_are_the_series_metrics_shows() {
        let stats = Stats::default();
        let counters = stats.route_counters("crm-to-shop");
        let text = stats.encode();
        assert!(
            text.contains(r#"passerelle_messages_received_total{route="crm-to-shop"} 0"#),
            "{text}"
        );

        counters.received();
        counters.received();
        counters.delivered();
        // A second handle (a route set up again) counts into the same series.
        stats.route_counters("crm-to-shop").delivered();
        let text = stats.encode();
        assert!(
            text.contains(r#"passerelle_messages_received_total{route="crm-to-shop"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"passerelle_messages_delivered_total{route="crm-to-shop"} 2"#),
            "{text}"
        );
        assert_eq!(stats.route_counts("crm-to-shop").received, 2);
    }

    #[test]
    fn a_held_transform_timer_counts_each_version_in_its_own_series() {
        let stats = Stats::default();
        let timer = TransformTimer::new("crm-to-shop");
        let (v1, v2) = (Version::of(b"one"), Version::of(b"two"));
        for version in [&v1, &v1, &v2, &v1] {
            timer.observe(&stats, version, Duration::from_micros(20));
        }
        let text = stats.encode();
        for (version, count) in [(&v1, 3), (&v2, 1)] {
            let series = format!(
                r#"passerelle_transform_duration_seconds_count{{route="crm-to-shop",version="{version}"}} {count}"#
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
    }
}
