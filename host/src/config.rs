//! The configuration file: AMQP connection, endpoints with their declared
//! operations, and routes. Loading it interpolates `${VAR}` from the
//! environment, then checks everything a running host would trip on later,
//! so a bad file is refused at start with the file, the key path and the
//! value named.

mod env;
mod fleet;
mod ingest;
mod memory;
mod validate;

pub use fleet::{Fleet, Unsigned};
pub use ingest::{Ingest, IngestAuth, IngestSource, SourceKind};
pub use memory::{EchoSettings, EchoSide, GuardSettings, Locator, OrderKind};
pub use validate::redact_url;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::runtime::GuestLimits;

/// The key of an error about the whole file (not a mapping, say).
const TOP_LEVEL: &str = "(top level)";

/// A configuration error: where it is, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    /// Dotted key path, e.g. `routes.crm-to-shop.limits.time`.
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub amqp: Amqp,
    pub endpoints: BTreeMap<String, Endpoint>,
    pub routes: BTreeMap<String, Route>,
    /// The admin HTTP server; off unless configured.
    pub admin: Option<Admin>,
    pub logging: Logging,
    /// The ingest HTTP server (webhooks, Salesforce); off unless configured.
    pub ingest: Option<Ingest>,
    /// Which deploys hosts accept, and the key deploys are signed with.
    pub fleet: Fleet,
}

/// Where logs go besides stderr.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// Graylog: `udp://host:port`, `tcp://host:port` or `host:port` (UDP).
    #[serde(default)]
    pub gelf: Option<crate::logging::GelfTarget>,
}

/// The admin HTTP server: health, metrics, transforms, dead letters, the ops page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Loopback by default: expose it further on purpose only.
    #[serde(default = "defaults::admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The environment variable holding the bearer token.
    pub token_env: String,
    #[serde(skip)]
    pub token: Secret,
    /// Larger request bodies (uploads) are refused with 413.
    #[serde(default = "defaults::admin_max_body")]
    pub max_body: bytesize::ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    /// One broker. Validation moves it into `urls`: write one or the other.
    #[serde(default)]
    url: Option<Secret>,
    /// The nodes of a cluster as written (`urls`); validation moves them
    /// into `urls`. Kept apart so that an empty list and no list at all
    /// get their own errors.
    #[serde(default, rename = "urls")]
    listed: Option<Vec<Secret>>,
    /// The nodes of a cluster, tried in order on connect and after a loss
    /// (the one `url` when that is what the file says).
    #[serde(skip)]
    pub urls: Vec<Secret>,
    /// How long a shutdown waits for messages in flight.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Where `passerelle deploy` publishes components for every host.
    #[serde(default = "defaults::control_exchange")]
    pub control_exchange: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub base_url: String,
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default = "defaults::http_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Requests per second (or minute) at most: `50/s`, `600/m`.
    #[serde(default, with = "rate::option")]
    pub rate_limit: Option<f64>,
    /// Requests that may go at once after a quiet spell; defaults to one
    /// second's worth of `rate_limit`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests waiting for an answer at once, at most.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    pub operations: BTreeMap<String, Operation>,
}

/// An endpoint's pace, as the limiter applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub per_second: Option<f64>,
    pub burst: u32,
    pub max_in_flight: Option<u32>,
}

impl Endpoint {
    pub fn pace(&self) -> Pace {
        let one_second = self.rate_limit.map_or(1.0, |rate| rate.ceil());
        Pace {
            per_second: self.rate_limit,
            burst: self.burst.unwrap_or(one_second as u32).max(1),
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Which route goes first when routes wait for the same endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Bulk work (an import): served when nothing else waits.
    Low,
    #[default]
    Normal,
    High,
}

/// When an endpoint counts as down, and how long its routes then pause.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive temporary failures that open the circuit.
    #[serde(default = "defaults::breaker_failures")]
    pub failures: u32,
    /// Pause before the first probe; doubles after each failed probe.
    #[serde(default = "defaults::cool_down", with = "duration")]
    pub cool_down: Duration,
    #[serde(default = "defaults::max_cool_down", with = "duration")]
    pub max_cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: defaults::breaker_failures(),
            cool_down: defaults::cool_down(),
            max_cool_down: defaults::max_cool_down(),
        }
    }
}

/// How requests to an endpoint authenticate. Secrets come from the
/// environment, named by the `*_env` keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    Bearer {
        token_env: String,
        #[serde(skip)]
        token: Secret,
    },
    Basic {
        username: String,
        password_env: String,
        #[serde(skip)]
        password: Secret,
    },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials {
        token_url: String,
        client_id_env: String,
        client_secret_env: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(skip)]
        client_id: Secret,
        #[serde(skip)]
        client_secret: Secret,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    pub method: HttpMethod,
    /// Relative to the endpoint's `base_url`, with `{param}` placeholders.
    pub uri: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub location: Location,
    /// `uri` parameters are always required.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Uri,
    Query,
    Header,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's key in the file.
    #[serde(skip)]
    pub name: String,
    pub queue: String,
    #[serde(default)]
    pub queue_type: QueueType,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// The component file, relative to the configuration file.
    pub transform: PathBuf,
    /// Endpoints this route's transform may call.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Values the transform reads through `host.config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u16,
    /// Unacked messages the broker may hand over; defaults to `concurrency`.
    #[serde(default)]
    pub prefetch: Option<u16>,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub limits: Limits,
    /// Against other routes calling the same rate-limited endpoint.
    #[serde(default)]
    pub priority: Priority,
    /// Drops an update older than the newest one applied to its entity.
    #[serde(default)]
    pub guard: Option<GuardSettings>,
    /// Acks, without a call, a change this host wrote coming back.
    #[serde(default)]
    pub echo: Option<EchoSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub exchange: String,
    #[serde(default = "defaults::routing_key")]
    pub routing_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Quick in-process retries after the first try.
    #[serde(default = "defaults::immediate_retries")]
    pub immediate: u32,
    /// Base of the exponential backoff between in-process retries.
    #[serde(default = "defaults::backoff", with = "duration")]
    pub backoff: Duration,
    /// Then one delayed retry per step, through a TTL queue each.
    #[serde(default = "defaults::delays", with = "duration::list")]
    pub delays: Vec<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            immediate: defaults::immediate_retries(),
            backoff: defaults::backoff(),
            delays: defaults::delays(),
        }
    }
}

/// What a route's transform gets and may give back per message; each
/// unset one takes `GuestLimits::default()`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, with = "duration::option")]
    pub time: Option<Duration>,
    #[serde(default)]
    pub memory: Option<bytesize::ByteSize>,
    /// A larger message body is dead-lettered before the transform runs.
    #[serde(default)]
    pub body: Option<bytesize::ByteSize>,
    /// Actions one message may produce.
    #[serde(default)]
    pub actions: Option<usize>,
    /// Bytes of actions one message may produce.
    #[serde(default)]
    pub output: Option<bytesize::ByteSize>,
    /// A longer guest log line is cut, with a marker.
    #[serde(default)]
    pub log_line: Option<bytesize::ByteSize>,
}

impl Limits {
    pub fn guest(&self) -> GuestLimits {
        let defaults = GuestLimits::default();
        let bytes = |size: Option<bytesize::ByteSize>, default: usize| size.map_or(default, |s| s.as_u64() as usize);
        let memory = bytes(self.memory, defaults.memory);
        GuestLimits {
            time: self.time.unwrap_or(defaults.time),
            memory,
            // A small memory limit makes the default body limit smaller,
            // so that the transform can still read the bodies it is given.
            body: bytes(self.body, defaults.body.min(memory / 2)),
            actions: self.actions.unwrap_or(defaults.actions),
            output: bytes(self.output, defaults.output),
            log_line: bytes(self.log_line, defaults.log_line),
        }
    }
}

impl Route {
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or(self.concurrency)
    }

    /// Where messages that can never succeed are kept, with their reason.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The stream where the guard keeps the newest ordering value per entity.
    pub fn guard_ledger(&self) -> String {
        format!("{}.guard", self.queue)
    }

    /// The delayed-retry queue of each ladder step, named by its delay
    /// (`crm.account.changed.retry.30s`) so that changing a delay declares
    /// a new queue instead of clashing with the old one's TTL.
    pub fn retry_queues(&self) -> Vec<(Duration, String)> {
        self.retry
            .delays
            .iter()
            .map(|delay| {
                let label = humantime::format_duration(*delay).to_string().replace(' ', "");
                (*delay, format!("{}.retry.{label}", self.queue))
            })
            .collect()
    }
}

/// A value that must never reach a log or an error message.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret, compared in constant time so that
    /// timing tells a caller nothing about it.
    pub fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(given.ct_eq(self.0.as_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Whether loading reads the endpoints' secrets from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Everything a host needs; the fleet's signing key if its variable is set.
    Read,
    Skip,
    /// For commands that publish deploys: like `Skip`, and the fleet's
    /// signing key is required.
    Signing,
}

/// The file's shape before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    amqp: Amqp,
    #[serde(default)]
    endpoints: BTreeMap<String, Endpoint>,
    routes: BTreeMap<String, Route>,
    #[serde(default)]
    admin: Option<Admin>,
    #[serde(default)]
    logging: Logging,
    #[serde(default)]
    ingest: Option<Ingest>,
    #[serde(default)]
    fleet: Fleet,
}

impl Config {
    /// The route named `name`, or an error listing the routes there are.
    pub fn route(&self, name: &str) -> anyhow::Result<&Route> {
        self.routes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
            anyhow::anyhow!("no route {name:?} (routes: {})", known.join(", "))
        })
    }

    /// Reads, interpolates and validates a configuration file. Relative
    /// component paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, Secrets::Read)
    }

    /// For commands that only talk to the broker: the endpoints' secrets
    /// are neither needed nor read (they stay empty).
    pub fn load_for_broker(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, Secrets::Skip)
    }

    fn load_with(path: &Path, secrets: Secrets) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&text, &file, base, secrets)
    }

    /// For `deploy` and `rollback` (and what else publishes deploys): like
    /// `load_for_broker`, and the fleet's signing key is required.
    pub fn load_for_deploy(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, Secrets::Signing)
    }

    /// Parses configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, file, base, Secrets::Read)
    }

    fn parse_with(text: &str, file: &str, base: &Path, secrets: Secrets) -> Result<Self, ConfigError> {
        let mut substituted = env::Substitutions::default();
        // Values from the environment may be secrets: errors show the
        // `${NAME}` they came from instead.
        // A key that prints as nothing (a mapping key spelled "" at the
        // top) would leave the error unplaced: it is about the whole file.
        let error = |substituted: &env::Substitutions, key: String, problem: String| ConfigError {
            file: file.to_string(),
            key: if key.is_empty() { TOP_LEVEL.to_string() } else { key },
            problem: substituted.hide_in(&problem),
        };
        let mut tree: serde_json::Value = serde_saphyr::from_str(text)
            .map_err(|e| error(&substituted, "(syntax)".into(), format!("not valid YAML: {e}")))?;
        env::interpolate(&mut tree, &mut Vec::new(), &mut substituted)
            .map_err(|(key, problem)| error(&substituted, key, problem))?;
        let raw: RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = match e.path().iter().next() {
                None => TOP_LEVEL.to_string(),
                Some(_) => e.path().to_string(),
            };
            error(&substituted, key, e.into_inner().to_string())
        })?;
        let mut config = Config {
            amqp: raw.amqp,
            endpoints: raw.endpoints,
            routes: raw.routes,
            admin: raw.admin,
            logging: raw.logging,
            ingest: raw.ingest,
            fleet: raw.fleet,
        };
        for (name, route) in &mut config.routes {
            route.name.clone_from(name);
        }
        validate::check(&mut config, base, secrets).map_err(|(key, problem)| error(&substituted, key, problem))?;
        Ok(config)
    }
}

mod defaults {
    use std::time::Duration;

    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn control_exchange() -> String {
        "passerelle.control".into()
    }
    pub fn http_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn concurrency() -> u16 {
        8
    }
    pub fn routing_key() -> String {
        "#".into()
    }
    pub fn immediate_retries() -> u32 {
        2
    }
    pub fn backoff() -> Duration {
        Duration::from_millis(200)
    }
    pub fn delays() -> Vec<Duration> {
        [5, 30, 300].map(Duration::from_secs).to_vec()
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn cool_down() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_cool_down() -> Duration {
        Duration::from_secs(60)
    }
    pub fn admin_listen() -> std::net::SocketAddr {
        ([127, 0, 0, 1], 9090).into()
    }
    pub fn admin_max_body() -> bytesize::ByteSize {
        bytesize::ByteSize::mib(16)
    }
}

/// The slowest pace a rate may set, per second: one a day. Slower would
/// put waits past what timers can hold.
pub const MIN_RATE: f64 = 1.0 / 86_400.0;

/// Rates written as a count per unit: `50/s`, `600/m`, `1000/h`.
mod rate {
    pub fn parse(text: &str) -> Result<f64, String> {
        let bad = || format!("invalid rate {text:?}; expected a count per unit, e.g. 50/s, 600/m, 1000/h");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: f64 = count.trim().parse().map_err(|_| bad())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(format!("invalid rate {text:?}: the count must be more than 0"));
        }
        let rate = count / seconds;
        if rate < super::MIN_RATE {
            return Err(format!("invalid rate {text:?}: less than one a day"));
        }
        Ok(rate)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
            let text = String::deserialize(deserializer)?;
            super::parse(&text).map(Some).map_err(serde::de::Error::custom)
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn rates_read_per_second_minute_or_hour_and_name_bad_values() {
            assert_eq!(super::parse("50/s"), Ok(50.0));
            assert_eq!(super::parse("600/m"), Ok(10.0));
            assert_eq!(super::parse(" 3600 / h "), Ok(1.0));
            for bad in ["fast", "50", "50/d", "0/s", "-1/s", "x/s", "1e-300/s", "0.01/h"] {
                let error = super::parse(bad).unwrap_err();
                assert!(error.contains(&format!("{bad:?}")), "{error}");
            }
        }
    }
}

/// Durations written the human way: `50ms`, `5s`, `5m`, `1h 30m`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// The longest duration a setting takes: longer is surely a slip, and
    /// timers and breakers add durations to the clock.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub fn parse(text: &str) -> Result<Duration, String> {
        let duration = humantime::parse_duration(text)
            .map_err(|e| format!("invalid duration {text:?} ({e}); expected e.g. 500ms, 5s, 2m"))?;
        if duration > MAX {
            return Err(format!("invalid duration {text:?}: longer than a year"));
        }
        Ok(duration)
    }

    pub mod list {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
            let texts = Vec::<String>::deserialize(deserializer)?;
            texts
                .iter()
                .map(|text| parse(text).map_err(serde::de::Error::custom))
                .collect()
        }
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Fuzz finding (`config::fuzz::every_edge_value_in_every_place_is_taken_bounded_or_refused_there`):
        /// `cool_down: 18446744073709551615s` was taken, and the breaker
        /// panicked adding it to the clock.
        #[test]
        fn a_duration_longer_than_a_year_is_refused_by_value() {
            assert_eq!(parse("365days"), Ok(MAX));
            for long in ["366days", "18446744073709551615s"] {
                let error = parse(long).unwrap_err();
                assert!(error.contains(&format!("{long:?}")), "{error}");
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::fuzzing;

    const FILE: &str = "fuzz.yaml";

    /// A file that uses every section (no secrets are read).
    const VALID: &str = r#"
amqp: { url: "amqp://guest:guest@127.0.0.1:5672/%2f", shutdown_grace: 30s }
endpoints:
  shop:
    base_url: http://127.0.0.1:8081/api/
    timeout: 5s
    rate_limit: 50/s
    max_in_flight: 4
    breaker: { failures: 5, cool_down: 5s, max_cool_down: 60s }
    operations:
      upsert:
        method: PUT
        uri: businesses/{crmId}
        parameters:
          crmId: { location: uri, required: true }
          X-Tenant: { location: header }
          business: { location: json }
routes:
  r:
    queue: q
    bindings: [{ exchange: e, routing_key: "a.*" }]
    transform: t.wasm
    endpoints: [shop]
    concurrency: 4
    retry: { immediate: 2, backoff: 200ms, delays: [5s, 30s] }
    limits: { time: 50ms, memory: 32MiB }
admin: { listen: "127.0.0.1:9090", token_env: ADMIN_TOKEN, max_body: 16MiB }
logging: { gelf: "udp://127.0.0.1:12201" }
ingest:
  max_body: 1MiB
  sources:
    crm: { exchange: e, routing_key: "account.{Type}", auth: { bearer: { token_env: T } } }
    sf:
      kind: salesforce_outbound_message
      exchange: e
      routing_key: "sf.{header:X-Event}"
      organization_id: 00D000000000001
"#;

    const TOKENS: &[&str] = &[
        ":",
        ": ",
        "\n",
        "\n  ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "&a",
        "*a",
        "!!str",
        "|",
        ">",
        "~",
        "amqp",
        "routes",
        "endpoints",
        "queue",
        "transform",
        "${",
        "}",
        "$$",
    ];

    /// Values that sit at the edges of what the settings take.
    const EDGES: &[&str] = &[
        "0s",
        "1ms",
        "365days",
        "366days",
        "18446744073709551615s",
        "584542046090years",
        "1e-300/s",
        "0.01/h",
        "1/h",
        "1e308/s",
        "50/s",
        "0/s",
        "NaN/s",
        "inf/s",
        "0B",
        "1KiB",
        "4GiB",
        "5GiB",
        "16EiB",
        "http://h/",
        "ftp://h/",
        "amqp://u:p@h",
        "businesses/{a}",
        "{crmId}",
        "/abs",
        "a.{Type}",
        "{header:X-E}",
        "{header:bad name}",
        "GET",
        "uri",
        "header",
        "quorum",
        "high",
        "",
        ".",
        "127.0.0.1:0",
        "[::1]:9",
        "tcp://h:1",
        "00D000000000001AAA",
    ];

    /// The folder the file's relative paths resolve against, with the component it names.
    fn base() -> &'static Path {
        static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
        BASE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("t.wasm"), b"\0asm").unwrap();
            dir
        })
        .path()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, FILE, base(), Secrets::Skip)
    }

    /// JSON is YAML, but for characters YAML will not take raw (DEL, C1
    /// controls, a BOM): those are written as `\u` escapes.
    fn as_yaml(json: &str) -> String {
        let printable = |c: char| matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
        json.chars()
            .map(|c| {
                if printable(c) {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", u32::from(c))
                }
            })
            .collect()
    }

    fn leaf_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => prop::sample::select(EDGES).prop_map(Value::from),
            2 => fuzzing::text(TOKENS, 6).prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
            1 => any::<bool>().prop_map(Value::from),
            1 => Just(Value::Null),
        ]
    }

    /// The key path of every scalar in `tree`, as `ConfigError` writes it.
    fn leaves(tree: &Value, path: String, out: &mut Vec<String>) {
        let join = |segment: &str| {
            if path.is_empty() {
                segment.to_string()
            } else {
                format!("{path}.{segment}")
            }
        };
        match tree {
            Value::Object(map) => map.iter().for_each(|(key, value)| leaves(value, join(key), out)),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    leaves(item, format!("{path}[{index}]"), out);
                }
            }
            _ => out.push(path),
        }
    }

    fn pointer(path: &str) -> String {
        let mut pointer = String::new();
        for segment in path.split('.') {
            let (key, index) = segment.split_once('[').unwrap_or((segment, ""));
            pointer.push('/');
            pointer.push_str(key);
            if let Some(index) = index.strip_suffix(']') {
                pointer.push('/');
                pointer.push_str(index);
            }
        }
        pointer
    }

    /// What the running host does with the durations and rates it was given
    /// (breakers double cool-downs and add them to the clock; limiters
    /// wait one period) must not overflow.
    fn check_bounded(config: &Config) -> Result<(), TestCaseError> {
        let now = tokio::time::Instant::now();
        let mut durations = vec![config.amqp.shutdown_grace];
        for endpoint in config.endpoints.values() {
            durations.extend([
                endpoint.timeout,
                endpoint.breaker.cool_down,
                endpoint.breaker.max_cool_down,
            ]);
            if let Some(rate) = endpoint.pace().per_second {
                let period = Duration::try_from_secs_f64(1.0 / rate);
                prop_assert!(period.is_ok_and(|p| p <= Duration::from_secs(86_400)), "rate {}", rate);
            }
            for (name, parameter) in endpoint.operations.values().flat_map(|op| &op.parameters) {
                if parameter.location == Location::Header {
                    prop_assert!(
                        reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                        "{:?}",
                        name
                    );
                }
            }
        }
        for route in config.routes.values() {
            durations.extend(route.retry.delays.iter().copied());
            durations.push(route.retry.backoff);
            durations.push(route.limits.guest().time);
            prop_assert!(route.limits.guest().memory <= 4 << 30);
            for (delay, _) in route.retry_queues() {
                prop_assert!(i32::try_from(delay.as_millis()).is_ok(), "{:?}", delay);
            }
        }
        for duration in durations {
            prop_assert!(now.checked_add(duration * 2).is_some(), "{:?}", duration);
        }
        Ok(())
    }

    #[test]
    fn the_base_file_is_valid() {
        let config = parse(VALID).unwrap();
        assert!(config.ingest.is_some() && config.admin.is_some());
    }

    /// Fuzz findings in CI, after `amqp.urls` came: a file with no broker
    /// named no key the user wrote, and a top-level key spelled `""` left
    /// the error's key empty.
    #[test]
    fn errors_name_a_place_even_without_a_broker_or_with_an_empty_key() {
        let no_broker = VALID.replace(r#"url: "amqp://guest:guest@127.0.0.1:5672/%2f", "#, "");
        assert_eq!(parse(&no_broker).unwrap_err().key, "amqp.url");
        for text in ["\"\": #", "\"\": ~${"] {
            assert_eq!(parse(text).unwrap_err().key, TOP_LEVEL, "{text}");
        }
    }

    /// Fuzz findings (`every_edge_value_in_every_place_is_taken_bounded_or_refused_there`,
    /// `a_renamed_parameter_is_taken_or_refused_by_name`): each was taken,
    /// then panicked or failed the host later.
    #[test]
    fn values_the_host_could_not_run_with_are_refused_where_they_are() {
        let cases = [
            (
                "cool_down: 5s",
                "cool_down: 18446744073709551615s",
                "endpoints.shop.breaker.cool_down",
            ),
            ("rate_limit: 50/s", "rate_limit: 1e-300/s", "endpoints.shop.rate_limit"),
            ("delays: [5s, 30s]", "delays: [5s, 30days]", "routes.r.retry.delays[1]"),
            ("memory: 32MiB", "memory: 5GiB", "routes.r.limits.memory"),
            (
                "X-Tenant:",
                "\"X Tenant\":",
                "endpoints.shop.operations.upsert.parameters.X Tenant",
            ),
        ];
        for (from, to, key) in cases {
            let error = parse(&VALID.replace(from, to)).unwrap_err();
            assert_eq!(error.key, key, "{error}");
        }
    }

    /// Taken or refused where it is, as below.
    fn check_changed(path: &str, result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
        match result {
            Ok(config) => check_bounded(&config),
            Err(error) => {
                let place: Vec<&str> = path.splitn(3, '.').take(2).collect();
                prop_assert!(error.key.starts_with(&place.join(".")), "{} changed, {}", path, error);
                Ok(())
            }
        }
    }

    /// The edge values are few: each one in each place, not a sample.
    #[test]
    fn every_edge_value_in_every_place_is_taken_bounded_or_refused_there() {
        let valid: Value = serde_saphyr::from_str(VALID).unwrap();
        let mut paths = Vec::new();
        leaves(&valid, String::new(), &mut paths);
        for path in &paths {
            for edge in EDGES {
                let mut tree = valid.clone();
                *tree.pointer_mut(&pointer(path)).unwrap() = Value::from(*edge);
                let result = parse(&tree.to_string());
                check_changed(path, result).unwrap_or_else(|error| panic!("{path} = {edge:?}: {error}"));
            }
        }
    }

    proptest! {
        #![proptest_config(fuzzing::config(256))]

        #[test]
        fn any_text_is_a_config_or_an_error_naming_the_file(text in fuzzing::text(TOKENS, 40)) {
            if let Err(error) = parse(&text) {
                prop_assert_eq!(&error.file, FILE);
                prop_assert!(!error.key.is_empty() && !error.problem.is_empty(), "{}", error);
                prop_assert!(error.to_string().starts_with("fuzz.yaml: "));
            }
        }

        /// One value of a valid file changed: the file is taken (and what it
        /// sets is bounded) or refused at the place of the change.
        #[test]
        fn a_changed_value_is_taken_or_refused_where_it_is(choice in any::<prop::sample::Index>(), value in leaf_value()) {
            let mut tree: Value = serde_saphyr::from_str(VALID).unwrap();
            let mut paths = Vec::new();
            leaves(&tree, String::new(), &mut paths);
            let path = choice.get(&paths);
            *tree.pointer_mut(&pointer(path)).unwrap() = value;
            check_changed(path, parse(&as_yaml(&tree.to_string())))?;
        }

        /// A parameter renamed: a header one must be named like a header.
        #[test]
        fn a_renamed_parameter_is_taken_or_refused_by_name(name in fuzzing::text(&["-", "_", " ", ":", "é", "\n", "X"], 4)) {
            let text = VALID.replace("X-Tenant:", &format!("{}:", as_yaml(&serde_json::to_string(&name).unwrap())));
            match parse(&text) {
                Ok(config) => check_bounded(&config)?,
                Err(error) => prop_assert!(error.key.starts_with("endpoints.shop"), "{}", error),
            }
        }
    }
}
