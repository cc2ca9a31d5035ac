//! The ingest server: where the CRM hands Passerelle its events. Each
//! configured source is `POST /ingest/{source}`; a request is checked (who
//! sent it, how big it is, what it holds), put on the broker (persistent,
//! mandatory, with publisher confirms) and only then acknowledged: 202 for
//! a webhook, the SOAP Ack for a Salesforce outbound message. When the
//! broker cannot take it the sender is told to come back (503 with
//! `Retry-After`, or a SOAP fault): nothing is acknowledged that is not on
//! the broker. It listens apart from the admin server, since it faces the
//! CRM, and publishes on a connection of its own (`link`).

pub mod auth;
pub mod link;
pub mod salesforce;
pub mod template;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header, request};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::amqp::MAX_SHORT_STRING;
use crate::amqp::headers;
use crate::config::{Ingest, IngestSource, Secret, SourceKind};
use crate::refused_body;
use crate::stats::Stats;
use crate::trace::TraceContext;
use link::{Link, Outgoing};
use salesforce::FaultCode;

/// What a sender is told to wait before trying again when the broker is away.
const RETRY_AFTER_SECONDS: u32 = 5;
/// The running server: where it listens, and its task (which ends after
/// `shutdown`, once the requests in flight are answered).
pub struct IngestServer {
    pub address: SocketAddr,
    pub task: JoinHandle<()>,
}

#[derive(Clone)]
struct IngestState {
    settings: Arc<Ingest>,
    link: Arc<Link>,
    stats: Arc<Stats>,
}

/// Binds the listener and connects to the broker (either failing refuses
/// the start), then serves until `shutdown`.
pub async fn serve(
    settings: &Ingest,
    amqp_urls: &[Secret],
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<IngestServer> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("ingest.listen: cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    // Named like the host's connection, so that operators and tests can tell it apart.
    let name = format!("passerelle pid {} ingest", std::process::id());
    let link = Arc::new(Link::connect(amqp_urls, name).await?);
    let state = IngestState {
        settings: Arc::new(settings.clone()),
        link: link.clone(),
        stats,
    };
    let app = Router::new()
        .route("/ingest/{source}", post(take))
        .fallback(|| async { refusal_json(StatusCode::NOT_FOUND, "no such path: POST /ingest/{source}") })
        // Each source has its own limit, applied while reading.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!("the ingest server stopped: {error}");
        }
        link.close().await;
    });
    tracing::info!("ingest server on http://{address}/");
    Ok(IngestServer { address, task })
}

/// Why a request was not taken. Each is one `outcome` of the ingest metric.
#[derive(Debug)]
enum Refusal {
    Unauthorized,
    TooLarge(u64),
    Invalid(String),
    Unavailable,
}

impl Refusal {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::TooLarge(_) => "too_large",
            Self::Invalid(_) => "invalid",
            Self::Unavailable => "unavailable",
        }
    }

    fn reason(&self) -> String {
        match self {
            Self::Unauthorized => "not authorized for this source".into(),
            Self::TooLarge(limit) => format!("the body is larger than this source's limit of {limit} bytes"),
            Self::Invalid(problem) => problem.clone(),
            Self::Unavailable => "the broker could not take the message; try again later".into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

async fn take(
    State(state): State<IngestState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let Some(source) = state.settings.sources.get(&name) else {
        // Unknown names are not counted: a label per guessed name would grow without bound.
        return refusal_json(StatusCode::NOT_FOUND, &format!("no ingest source {name:?}"));
    };
    let (head, body) = request.into_parts();
    let taken = take_from(&state, source, &head, query.as_deref(), body).await;
    match &taken {
        Ok(ids) => state.stats.ingested(&name, "published", ids.len() as u64),
        Err(refusal) => {
            state.stats.ingested(&name, refusal.outcome(), 1);
            tracing::info!(source = %name, "refused a request: {}", refusal.reason());
        }
    }
    match (taken, source.kind) {
        (Ok(ids), SourceKind::Webhook) => (
            StatusCode::ACCEPTED,
            Json(json!({"message_id": ids[0], "source": name})),
        )
            .into_response(),
        (Ok(_), SourceKind::SalesforceOutboundMessage) => soap(StatusCode::OK, salesforce::ACK.to_string()),
        (Err(refusal), SourceKind::Webhook) => webhook_refusal(&refusal),
        (Err(refusal), SourceKind::SalesforceOutboundMessage) => salesforce_refusal(&refusal),
    }
}

/// Admits the request, publishes its messages; their ids once all are confirmed.
async fn take_from(
    state: &IngestState,
    source: &IngestSource,
    head: &request::Parts,
    query: Option<&str>,
    body: Body,
) -> Result<Vec<String>, Refusal> {
    let body = admit(source, source.max_body(&state.settings), head, query, body).await?;
    let messages = match source.kind {
        SourceKind::Webhook => vec![webhook_message(source, &head.headers, body)?],
        SourceKind::SalesforceOutboundMessage => salesforce_messages(source, &head.headers, &body)?,
    };
    let ids: Vec<String> = messages
        .iter()
        .map(|message| {
            message
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default()
        })
        .collect();
    if let Err(error) = state.link.publish_all(messages).await {
        tracing::warn!(source = %source.name, "the broker did not take {} message(s): {error:#}", ids.len());
        return Err(Refusal::Unavailable);
    }
    tracing::debug!(source = %source.name, "published {} message(s): {}", ids.len(), ids.join(", "));
    Ok(ids)
}

/// Checks who sent it before reading the body (a stranger's body is never
/// buffered), reads it within the limit, then checks a signature over it.
async fn admit(
    source: &IngestSource,
    limit: u64,
    head: &request::Parts,
    query: Option<&str>,
    body: Body,
) -> Result<Bytes, Refusal> {
    let auth = source.auth.as_ref();
    if !auth::head_allowed(auth, &head.headers, query) {
        return Err(Refusal::Unauthorized);
    }
    let body = read_body(&head.headers, body, limit).await?;
    if !auth::body_signed(auth, &head.headers, &body) {
        return Err(Refusal::Unauthorized);
    }
    Ok(body)
}

/// The body, or `TooLarge` once it passes `limit` (the rest read and
/// thrown away: `refused_body`).
async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, Refusal> {
    refused_body::read_within(headers, body, limit)
        .await
        .map_err(|unread| match unread {
            refused_body::Unread::TooLarge { .. } => Refusal::TooLarge(limit),
            refused_body::Unread::Failed(reason) => Refusal::Invalid(reason),
        })
}

/// A webhook's body, published as it came.
fn webhook_message(source: &IngestSource, request_headers: &HeaderMap, body: Bytes) -> Result<Outgoing, Refusal> {
    let fields: Option<Map<String, Value>> = if source.routing_key.reads_fields() {
        serde_json::from_slice(&body).ok()
    } else {
        None
    };
    let routing_key = source
        .routing_key
        .render(fields.as_ref(), request_headers)
        .map_err(Refusal::Invalid)?;
    let message_id = match request_headers.get("idempotency-key") {
        Some(key) => short_string("Idempotency-Key", key)?,
        None => fresh_id(),
    };
    let content_type = match request_headers.get(header::CONTENT_TYPE) {
        Some(value) => short_string("Content-Type", value)?,
        None => "application/octet-stream".into(),
    };
    Ok(Outgoing {
        exchange: source.exchange.clone(),
        routing_key,
        body: body.to_vec(),
        properties: properties(source, request_headers, message_id, content_type),
    })
}

/// One JSON message per notification, its id the notification's; none
/// at all unless the envelope is whole and from the configured organization.
fn salesforce_messages(
    source: &IngestSource,
    request_headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Outgoing>, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| Refusal::Invalid("the body is not UTF-8 text".into()))?;
    let message = salesforce::parse(text).map_err(Refusal::Invalid)?;
    let expected = source.organization_id.as_deref().unwrap_or_default();
    if !salesforce::same_organization(expected, &message.organization_id) {
        let problem = format!(
            "notifications of organization {} are not accepted here",
            message.organization_id
        );
        return Err(Refusal::Invalid(problem));
    }
    message
        .notifications
        .into_iter()
        .map(|notification| {
            let routing_key = source
                .routing_key
                .render(Some(&notification.fields), request_headers)
                .map_err(|problem| Refusal::Invalid(format!("notification {}: {problem}", notification.id)))?;
            if notification.id.len() > MAX_SHORT_STRING {
                return Err(Refusal::Invalid("a notification Id is longer than 255 bytes".into()));
            }
            let body = serde_json::to_vec(&notification.fields).expect("a JSON map serializes");
            let properties = properties(source, request_headers, notification.id, "application/json".into());
            Ok(Outgoing {
                exchange: source.exchange.clone(),
                routing_key,
                body,
                properties,
            })
        })
        .collect()
}

fn properties(
    source: &IngestSource,
    request_headers: &HeaderMap,
    message_id: String,
    content_type: String,
) -> BasicProperties {
    let mut table = FieldTable::default();
    headers::set_source(&mut table, &source.name);
    // A sender's trace continues through the broker; a bad one is dropped.
    let traceparent = request_headers
        .get(headers::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .filter(|value| TraceContext::parse(value).is_some());
    if let Some(traceparent) = traceparent {
        headers::set_traceparent(&mut table, traceparent);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type(content_type.into())
        .with_timestamp(now)
        .with_headers(table)
}

/// A header usable as an AMQP short string: visible ASCII, 1 to 255 bytes.
fn short_string(name: &str, value: &axum::http::HeaderValue) -> Result<String, Refusal> {
    match value.to_str() {
        Ok(text) if !text.is_empty() && text.len() <= MAX_SHORT_STRING => Ok(text.to_string()),
        _ => Err(Refusal::Invalid(format!(
            "{name} must be 1 to {MAX_SHORT_STRING} visible ASCII characters"
        ))),
    }
}

/// A random id shaped like a UUID (version 4), for senders that give none.
fn fresh_id() -> String {
    let mut bits = rand::random::<u128>();
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn refusal_json(status: StatusCode, problem: &str) -> Response {
    (status, Json(json!({"error": problem}))).into_response()
}

fn webhook_refusal(refusal: &Refusal) -> Response {
    let mut response = refusal_json(refusal.status(), &refusal.reason());
    if matches!(refusal, Refusal::Unavailable) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
    }
    response
}

/// Salesforce retries whatever is not an Ack; a fault says why. The status
/// is 500, as SOAP 1.1 has it, but for a refused caller or body (401, 413).
fn salesforce_refusal(refusal: &Refusal) -> Response {
    let (status, code) = match refusal {
        Refusal::Unauthorized | Refusal::TooLarge(_) => (refusal.status(), FaultCode::Client),
        Refusal::Invalid(_) => (StatusCode::INTERNAL_SERVER_ERROR, FaultCode::Client),
        Refusal::Unavailable => (StatusCode::INTERNAL_SERVER_ERROR, FaultCode::Server),
    };
    soap(status, salesforce::fault(code, &refusal.reason()))
}

fn soap(status: StatusCode, envelope: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], envelope).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_shaped_like_version_4_uuids() {
        let id = fresh_id();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!("89ab".contains(&id[19..20]), "{id}");
        assert_ne!(fresh_id(), id);
    }
}
