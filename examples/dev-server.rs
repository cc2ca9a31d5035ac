//! A stand-in for the two systems Passerelle connects in the demo, so that
//! the whole path (broker, transform, HTTP call) can be tried and watched on
//! one machine. It is a development tool, not a model of either API.
//!
//! - The shop API, under `/api/`: `PUT /api/businesses/{crmId}` with the
//!   bearer token `$SHOP_TOKEN` (default `dev-shop-token`).
//! - The CRM (Salesforce), under `/crm/`: the OAuth2 client-credentials token
//!   endpoint `POST /crm/services/oauth2/token`, checking `$CRM_CLIENT_ID` and
//!   `$CRM_CLIENT_SECRET` (defaults `dev-crm-client`, `dev-crm-secret`), and
//!   `PATCH /crm/services/data/v60.0/sobjects/Account/{accountId}` with a
//!   token it issued.
//!
//! Each request is printed on stdout as one line when it has been answered.
//! `GET /_requests` returns them all as JSON (method, path with query,
//! headers, body, status); `?method=PUT&path=/api/businesses/gg-11` filters
//! them and `DELETE /_requests` forgets them. Credentials are never shown:
//! `Authorization` reads `Bearer ***`, form secrets read `***`.
//!
//!     cargo run -p passerelle --example dev-server -- --port 8081

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Stands in for the shop API and the CRM in the Passerelle demo")]
struct Args {
    /// The port to listen on, on 127.0.0.1.
    #[arg(long, default_value_t = 8081)]
    port: u16,
}

/// The credentials it expects, the tokens it issued, the requests it saw.
struct Dev {
    shop_token: String,
    crm_client_id: String,
    crm_client_secret: String,
    issued: Mutex<HashSet<String>>,
    tokens_issued: AtomicU64,
    requests: Mutex<Vec<Seen>>,
}

/// One request as `GET /_requests` shows it.
#[derive(Serialize)]
struct Seen {
    method: String,
    /// With its query, if any.
    path: String,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

type Shared = Arc<Dev>;

#[tokio::main]
async fn main() -> ExitCode {
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dev-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let env_or = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let dev = Arc::new(Dev {
        shop_token: env_or("SHOP_TOKEN", "dev-shop-token"),
        crm_client_id: env_or("CRM_CLIENT_ID", "dev-crm-client"),
        crm_client_secret: env_or("CRM_CLIENT_SECRET", "dev-crm-secret"),
        issued: Mutex::default(),
        tokens_issued: AtomicU64::new(0),
        requests: Mutex::default(),
    });
    let app = Router::new()
        .route("/api/businesses/{crm_id}", put(upsert_business))
        .route("/crm/services/oauth2/token", post(issue_token))
        .route(
            "/crm/services/data/v60.0/sobjects/Account/{account_id}",
            patch(update_account),
        )
        .route("/_requests", get(list_requests).delete(forget_requests))
        .layer(middleware::from_fn_with_state(dev.clone(), record))
        .with_state(dev);

    let address = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!("dev-server: listening on http://{address} (shop under /api/, CRM under /crm/)");
    axum::serve(listener, app).await?;
    Ok(())
}

// --- the shop ----------------------------------------------------------------

async fn upsert_business(
    State(dev): State<Shared>,
    Path(crm_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bearer(&headers) != Some(dev.shop_token.as_str()) {
        let answer = json!({"error": "missing or wrong bearer token"});
        return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Bearer")], Json(answer)).into_response();
    }
    if !is_json_object(&body) {
        let answer = json!({"error": "the body must be a JSON object"});
        return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
    }
    Json(json!({"crmId": crm_id, "saved": true})).into_response()
}

// --- the CRM -----------------------------------------------------------------

async fn issue_token(State(dev): State<Shared>, body: Bytes) -> Response {
    let form = form_fields(&body);
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        let answer = json!({"error": "unsupported_grant_type"});
        return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
    }
    if field("client_id") != Some(dev.crm_client_id.as_str())
        || field("client_secret") != Some(dev.crm_client_secret.as_str())
    {
        let answer = json!({"error": "invalid_client", "error_description": "client identifier invalid"});
        return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
    }
    let number = dev.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("dev-crm-token-{number}");
    dev.issued.lock().unwrap().insert(token.clone());
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})).into_response()
}

async fn update_account(State(dev): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let known = bearer(&headers).is_some_and(|token| dev.issued.lock().unwrap().contains(token));
    if !known {
        // Salesforce's own answer to a missing or expired session.
        let answer = json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]);
        return (StatusCode::UNAUTHORIZED, Json(answer)).into_response();
    }
    if !is_json_object(&body) {
        let answer = json!([{"message": "the body must be a JSON object", "errorCode": "JSON_PARSER_ERROR"}]);
        return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

// --- what it saw -------------------------------------------------------------

/// Records every request but its own (`/_...`), and prints it once answered.
async fn record(State(dev): State<Shared>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let method = parts.method.to_string();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), shown(name, value)))
        .collect();
    let body = body_of(&parts.headers, &bytes);

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status().as_u16();
    let line = if body.is_null() {
        String::new()
    } else {
        format!(" {body}")
    };
    println!("{method} {path} -> {status}{line}");
    let seen = Seen {
        method,
        path,
        status,
        headers,
        body,
    };
    dev.requests.lock().unwrap().push(seen);
    response
}

#[derive(Deserialize)]
struct Filter {
    method: Option<String>,
    /// The path without its query.
    path: Option<String>,
}

async fn list_requests(State(dev): State<Shared>, Query(filter): Query<Filter>) -> Response {
    let matches = |seen: &&Seen| {
        let path = seen.path.split('?').next().unwrap_or_default();
        filter
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&seen.method))
            && filter.path.as_deref().is_none_or(|p| p == path)
    };
    let requests = dev.requests.lock().unwrap();
    let selected: Vec<&Seen> = requests.iter().filter(matches).collect();
    let text = serde_json::to_string_pretty(&selected).unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], text + "\n").into_response()
}

async fn forget_requests(State(dev): State<Shared>) -> StatusCode {
    dev.requests.lock().unwrap().clear();
    StatusCode::NO_CONTENT
}

// --- helpers -----------------------------------------------------------------

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// A header value as shown: credentials keep their scheme only.
fn shown(name: &HeaderName, value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    if name != AUTHORIZATION {
        return text.into_owned();
    }
    match text.split_once(' ') {
        Some((scheme, _)) => format!("{scheme} ***"),
        None => "***".into(),
    }
}

/// JSON when the body is JSON, form fields (secrets hidden) when it is a
/// form, text otherwise; null when empty.
fn body_of(headers: &HeaderMap, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(json) = serde_json::from_slice(bytes) {
        return json;
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        let mut fields = form_fields(bytes);
        for secret in ["client_secret", "password"] {
            if let Some(value) = fields.get_mut(secret) {
                *value = "***".into();
            }
        }
        return json!(fields);
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// A form body is encoded like a query string, so axum's query parser reads it.
fn form_fields(bytes: &[u8]) -> BTreeMap<String, String> {
    format!("/?{}", String::from_utf8_lossy(bytes))
        .parse::<Uri>()
        .ok()
        .and_then(|uri| Query::try_from_uri(&uri).ok())
        .map(|Query(fields)| fields)
        .unwrap_or_default()
}

fn is_json_object(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object())
}
