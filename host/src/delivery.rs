//! HTTP delivery of `call` actions: checks a call's arguments against its
//! declared operation, builds the request (URI template, query, headers,
//! JSON body, auth), sends it with a pooled client and classifies the
//! outcome as success, temporary or permanent failure.

mod auth;
mod breaker;
mod limiter;
mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::histogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::config::{Endpoint, Priority, redact_url};
use crate::stats::{BreakerState, Stats};
use crate::version::Version;
use auth::Authenticator;
use breaker::{Breaker, Outcome};
use limiter::Limiter;
pub use request::{Request, UNRESERVED, build_request};

/// `endpoint.operation`, as errors name a call: written only when one is.
struct CallName<'a> {
    endpoint: &'a str,
    operation: &'a str,
}

impl std::fmt::Display for CallName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.endpoint, self.operation)
    }
}

/// Header carrying the key that makes a retried call safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Header carrying the version of the transform that produced the call.
pub const VERSION_HEADER: &str = "X-Passerelle-Transform-Version";
/// W3C trace context: the call's span, in the message's trace.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The headers above as `HeaderName`s made once: a `&str` name is parsed
/// again for every request.
mod header_name {
    use reqwest::header::HeaderName;

    pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
    pub const VERSION: HeaderName = HeaderName::from_static("x-passerelle-transform-version");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

    #[test]
    fn each_spells_its_header() {
        for (name, spelled) in [
            (IDEMPOTENCY_KEY, super::IDEMPOTENCY_KEY),
            (VERSION, super::VERSION_HEADER),
            (TRACEPARENT, super::TRACEPARENT_HEADER),
        ] {
            assert_eq!(name, HeaderName::from_bytes(spelled.as_bytes()).unwrap());
        }
    }
}

/// Why a call did not succeed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub temporary: bool,
    pub reason: String,
    /// The last HTTP status, when the target answered.
    pub status: Option<u16>,
    /// When the target asked us to come back (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            temporary: false,
            reason: reason.into(),
            status: None,
            retry_after: None,
        }
    }

    pub fn temporary(reason: impl Into<String>) -> Self {
        Self {
            temporary: true,
            ..Self::permanent(reason)
        }
    }
}

/// What identifies one call of one message, sent along with it.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    pub idempotency_key: String,
    pub version: &'a Version,
    pub traceparent: String,
    /// The calling route's, when the endpoint's pace makes requests wait.
    pub priority: Priority,
}

/// The declared endpoints and one pooled HTTP client for all of them.
pub struct Http {
    client: reqwest::Client,
    endpoints: BTreeMap<String, EndpointClient>,
    stats: Arc<Stats>,
}

struct EndpointClient {
    config: Endpoint,
    /// `config.base_url`, parsed once rather than for every call.
    base_url: reqwest::Url,
    auth: Authenticator,
    breaker: Breaker,
    limiter: Limiter,
    /// Each declared operation's histogram of calls answered 2xx, held so
    /// that a success builds no labels (other outcomes look theirs up).
    answered_2xx: BTreeMap<String, Histogram>,
}

impl Http {
    pub fn new(endpoints: &BTreeMap<String, Endpoint>, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("passerelle/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let endpoints = endpoints
            .iter()
            .map(|(name, config)| {
                // Checked when the configuration was read; a failure here is a bug.
                let base_url = reqwest::Url::parse(&config.base_url)
                    .map_err(|e| anyhow::anyhow!("endpoints.{name}.base_url {}: {e}", redact_url(&config.base_url)))?;
                let answered_2xx = config
                    .operations
                    .keys()
                    .map(|operation| (operation.clone(), stats.http_seconds(name, operation, Some(200))))
                    .collect();
                let client = EndpointClient {
                    answered_2xx,
                    auth: Authenticator::new(config.auth.clone()),
                    breaker: Breaker::new(name, config.breaker),
                    limiter: Limiter::new(config.pace()),
                    config: config.clone(),
                    base_url,
                };
                Ok((name.clone(), client))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            client,
            endpoints,
            stats,
        })
    }

    /// Each endpoint's breaker state, for metrics and the ops page.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        self.endpoints
            .iter()
            .map(|(name, endpoint)| (name.clone(), endpoint.breaker.state()))
            .collect()
    }

    /// Performs one call; returns the HTTP status on success. Waits while
    /// the endpoint's circuit is open or its `Retry-After` has not passed.
    pub async fn call(
        &self,
        endpoint: &str,
        operation: &str,
        args: &serde_json::Map<String, serde_json::Value>,
        context: &CallContext<'_>,
    ) -> Result<u16, DeliveryError> {
        let target = self
            .endpoints
            .get(endpoint)
            .ok_or_else(|| DeliveryError::permanent(format!("unknown endpoint {endpoint:?}")))?;
        let declared = target
            .config
            .operations
            .get(operation)
            .ok_or_else(|| DeliveryError::permanent(format!("unknown operation {endpoint}.{operation}")))?;
        let name = CallName { endpoint, operation };
        let request = build_request(&target.base_url, declared, args)
            .map_err(|problem| DeliveryError::permanent(format!("call to {name}: {problem}")))?;

        let permit = target.breaker.acquire().await;
        // Held until the answer: it also counts the request in flight.
        let _paced = target.limiter.acquire(context.priority).await;
        let started = Instant::now();
        let result = self.exchange(target, &request, context, &name).await;
        let status = match &result {
            Ok(status) => Some(*status),
            Err(error) => error.status,
        };
        let took = started.elapsed();
        match (status, target.answered_2xx.get(operation)) {
            (Some(200..=299), Some(histogram)) => histogram.observe(took.as_secs_f64()),
            _ => self.stats.http_called(endpoint, operation, status, took),
        }
        permit.settle(match &result {
            Err(error) if error.temporary => Outcome::Unavailable {
                retry_after: error.retry_after,
            },
            _ => Outcome::Answered,
        });
        result
    }

    /// Waits until every endpoint named may take a request (or a probe is
    /// due), so that a route takes no work it could not deliver.
    pub async fn wait_until_usable(&self, endpoints: &[String]) {
        for name in endpoints {
            if let Some(endpoint) = self.endpoints.get(name) {
                endpoint.breaker.wait_until_usable().await;
            }
        }
    }

    async fn exchange(
        &self,
        target: &EndpointClient,
        request: &Request,
        context: &CallContext<'_>,
        name: &CallName<'_>,
    ) -> Result<u16, DeliveryError> {
        let response = self.send(target, request, context, name).await?;
        if response.status() == StatusCode::UNAUTHORIZED && target.auth.can_refresh() {
            // A token may be revoked before it expires: fetch a new one, once.
            target.auth.invalidate().await;
            let response = self.send(target, request, context, name).await?;
            return classify(response, name, &target.auth).await;
        }
        classify(response, name, &target.auth).await
    }

    async fn send(
        &self,
        target: &EndpointClient,
        request: &Request,
        context: &CallContext<'_>,
        name: &CallName<'_>,
    ) -> Result<reqwest::Response, DeliveryError> {
        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone())
            .timeout(target.config.timeout)
            .header(header_name::IDEMPOTENCY_KEY, &context.idempotency_key)
            .header(header_name::VERSION, context.version.as_str())
            .header(header_name::TRACEPARENT, &context.traceparent);
        for (header, value) in &request.headers {
            builder = builder.header(header, value);
        }
        if let Some(body) = &request.json {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        builder = target.auth.apply(&self.client, builder).await?;
        builder.send().await.map_err(|e| {
            // A request that cannot even be built fails the same way every time.
            if e.is_builder() {
                return DeliveryError::permanent(format!("{name}: cannot build the request: {}", e.without_url()));
            }
            let kind = if e.is_timeout() { "timed out" } else { "failed" };
            DeliveryError::temporary(format!("{name}: request {kind}: {}", e.without_url()))
        })
    }
}

/// 2xx succeeds; 408, 429 and 5xx are worth retrying; other answers are
/// permanent for this message.
async fn classify(
    response: reqwest::Response,
    name: &CallName<'_>,
    auth: &Authenticator,
) -> Result<u16, DeliveryError> {
    let status = response.status();
    if status.is_success() {
        read_to_its_end(response).await;
        return Ok(status.as_u16());
    }
    let retry_after = retry_after(response.headers());
    let body = auth.hide_secrets(&response.text().await.unwrap_or_default()).await;
    let temporary =
        status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS;
    Err(DeliveryError {
        temporary,
        reason: format!("{name}: HTTP {status}{}", excerpt(&body)),
        status: Some(status.as_u16()),
        retry_after,
    })
}

/// How much of a success answer's body is read (and dropped) so that its
/// connection can serve the next call.
const SUCCESS_BODY_READ: usize = 64 << 10;

/// Reads a success answer's body to its end, up to `SUCCESS_BODY_READ`:
/// hyper puts a connection back in its pool only once the body was read,
/// or had fully arrived when dropped, and closes it otherwise; a shop that
/// streams its answer would then cost a new connection (and TLS session)
/// per call. A longer or broken body just closes the connection.
async fn read_to_its_end(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > SUCCESS_BODY_READ {
            return;
        }
    }
}

/// The longest `Retry-After` honoured. A target may ask for any number of
/// seconds; past this, its breaker's probes find out when it is back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or as an HTTP date, at most `MAX_RETRY_AFTER`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            date.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The start of an error body: often the only clue to a 4xx.
fn excerpt(body: &str) -> String {
    const MAX: usize = 300;
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(MAX).collect();
    let ellipsis = if cut.len() < body.len() { "…" } else { "" };
    format!(": {cut}{ellipsis}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));

        let later = SystemTime::now() + Duration::from_secs(30);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );

        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    /// Fuzz finding (`fuzz::seconds_read_as_they_are_up_to_the_ceiling`):
    /// the breaker added this wait to the clock and panicked.
    #[test]
    fn a_retry_after_past_any_clock_waits_the_ceiling() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, "Fri, 31 Dec 9999 23:59:59 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    use super::*;
    use crate::fuzzing;

    const TOKENS: &[&str] = &[
        "0",
        "1",
        "9",
        "18446744073709551615",
        "99999999999999999999",
        "-",
        "+",
        " ",
        ",",
        ":",
        "GMT",
        "Sun",
        "Nov",
        "2026",
        "9999",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ];

    fn retry_after_of(value: &str) -> Option<Option<Duration>> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).ok()?);
        Some(retry_after(&headers))
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        #[test]
        fn any_retry_after_is_none_or_a_bounded_wait(value in fuzzing::text(TOKENS, 8)) {
            if let Some(Some(wait)) = retry_after_of(&value) {
                prop_assert!(wait <= MAX_RETRY_AFTER, "{:?} from {:?}", wait, value);
            }
        }

        #[test]
        fn seconds_read_as_they_are_up_to_the_ceiling(seconds in any::<u64>()) {
            let wait = retry_after_of(&seconds.to_string()).unwrap();
            prop_assert_eq!(wait, Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER)));
        }

        #[test]
        fn a_date_reads_as_the_time_until_it(offset in -400_000_000i64..400_000_000) {
            let now = SystemTime::now();
            let date = if offset >= 0 {
                now + Duration::from_secs(offset.unsigned_abs())
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            let wait = retry_after_of(&httpdate::fmt_http_date(date)).unwrap().unwrap();
            let expected = Duration::from_secs(offset.max(0).unsigned_abs()).min(MAX_RETRY_AFTER);
            prop_assert!(wait <= expected && expected - wait <= Duration::from_secs(2), "{:?} for {}", wait, offset);
        }
    }
}
