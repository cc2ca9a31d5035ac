//! The admin HTTP server inside `passerelle run`: health for the
//! orchestrator, Prometheus metrics, the routes' transforms (list, upload,
//! rollback, shadow runs in `admin/shadow.rs`), dead letters (list,
//! replay) and the ops web page. Off unless configured; loopback by
//! default. Everything but `/`, `/healthz`, `/readyz` and `/metrics` needs
//! the bearer token, compared in constant time. Uploads go through the
//! same checks and swap as a changed file.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytesize::ByteSize;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::amqp;
use crate::config::{Admin, Secret};
use crate::host::Parts;
use crate::ops::{deploy, dlq};
use crate::refused_body;
use crate::reload::{Origin, Refusal};
use crate::routes::RouteHandle;
use crate::stats::BreakerState;

mod shadow;

const PAGE: &str = include_str!("admin/page.html");

/// Binds the listener (an address in use refuses the start) and serves
/// until `shutdown`. Returns the bound address.
pub async fn serve(settings: &Admin, parts: Parts, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    let app = router(settings, parts);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!("the admin server stopped: {error}");
        }
    });
    tracing::info!("admin server on http://{address}/");
    Ok(address)
}

#[derive(Clone)]
struct AdminState {
    parts: Parts,
    token: Arc<Secret>,
}

fn router(settings: &Admin, parts: Parts) -> Router {
    let state = AdminState {
        parts,
        token: Arc::new(settings.token.clone()),
    };
    let protected = Router::new()
        .route("/status", get(status))
        .route("/transforms", get(transforms))
        .route("/transforms/{route}", post(upload))
        .route("/transforms/{route}/rollback", post(rollback))
        .route(
            "/transforms/{route}/shadow",
            post(shadow::start).get(shadow::report).delete(shadow::stop),
        )
        .route("/transforms/{route}/shadow/promote", post(shadow::promote))
        .route("/dlq/{route}", get(dead_letters))
        .route("/dlq/{route}/replay", post(replay))
        // Inner to the token check: a stranger's body is never read.
        .route_layer(middleware::from_fn_with_state(settings.max_body, refuse_too_large))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(|| async { Json(json!({"status": "alive"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(protected)
        .layer(DefaultBodyLimit::max(settings.max_body.as_u64() as usize))
        .with_state(state)
}

/// An error answer: a status and a JSON body saying why (`error`), and
/// for a refused component which check refused it (`refusal`:
/// `component` or `fixtures`), so that a client can tell them apart.
struct Problem {
    status: StatusCode,
    error: String,
    refusal: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, error: String) -> Self {
        Self {
            status,
            error,
            refusal: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error});
        if let Some(refusal) = self.refusal {
            body["refusal"] = json!(refusal);
        }
        (self.status, Json(body)).into_response()
    }
}

type Answer = Result<Json<Value>, Problem>;

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if state.token.matches(given.as_bytes()) {
        return next.run(request).await;
    }
    let problem = "a bearer token is required (Authorization: Bearer ..., from admin.token_env)";
    Problem::new(StatusCode::UNAUTHORIZED, problem.into()).into_response()
}

/// A body over `admin.max_body` is refused before it reaches a handler,
/// after the token check, and read to its end first so that the client
/// sees the 413 (`refused_body`); one within it is handed on whole.
async fn refuse_too_large(State(limit): State<ByteSize>, request: Request, next: Next) -> Response {
    let (head, body) = request.into_parts();
    match refused_body::read_within(&head.headers, body, limit.as_u64()).await {
        Ok(whole) => next.run(Request::from_parts(head, Body::from(whole))).await,
        Err(refused_body::Unread::TooLarge { declared }) => {
            let size = match declared {
                Some(length) => ByteSize(length).display().iec().to_string(),
                None => "sent without a length".into(),
            };
            let problem = format!(
                "the body ({size}) is larger than admin.max_body ({})",
                limit.display().iec()
            );
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, problem).into_response()
        }
        Err(refused_body::Unread::Failed(reason)) => Problem::new(StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

/// Ready when the broker is connected and every route has a transform
/// (a host only starts once each route's transform loaded).
async fn ready(State(state): State<AdminState>) -> Response {
    let parts = &state.parts;
    let connected = parts.stats.broker_connected();
    let routes: Vec<Value> = parts
        .routes
        .iter()
        .map(|route| json!({"route": route.name, "version": route.slot.current().version.as_str()}))
        .collect();
    if connected {
        return Json(json!({"ready": true, "routes": routes})).into_response();
    }
    let body = json!({"ready": false, "reason": "not connected to the broker", "routes": routes});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let parts = &state.parts;
    // Breaker states are read when scraped: nothing to do per message.
    for (endpoint, breaker) in parts.http.breaker_states() {
        parts.stats.breaker(&endpoint, breaker);
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], parts.stats.encode()).into_response()
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let parts = &state.parts;
    let breakers = parts.http.breaker_states();
    let routes: Vec<Value> = parts
        .routes
        .iter()
        .map(|route| {
            let counts = parts.stats.route_counts(&route.name);
            let endpoints: Vec<Value> = route
                .route
                .endpoints
                .iter()
                .map(|name| {
                    let state = breakers.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
                    json!({"name": name, "breaker": state.unwrap_or(BreakerState::Closed).name()})
                })
                .collect();
            let mut entry = describe(route);
            entry["queue"] = json!(route.route.queue);
            entry["endpoints"] = json!(endpoints);
            for (key, value) in [
                ("received", counts.received),
                ("delivered", counts.delivered),
                ("retried", counts.retried),
                ("dead_lettered", counts.dead_lettered),
            ] {
                entry[key] = json!(value);
            }
            entry
        })
        .collect();
    Json(json!({"broker_connected": parts.stats.broker_connected(), "routes": routes}))
}

fn describe(route: &RouteHandle) -> Value {
    let loaded = route.loaded();
    json!({
        "route": route.name,
        "version": route.slot.current().version.as_str(),
        "loaded_at": humantime::format_rfc3339_seconds(loaded.at).to_string(),
        "source": loaded.source,
    })
}

async fn transforms(State(state): State<AdminState>) -> Json<Value> {
    Json(state.parts.routes.iter().map(|route| describe(route)).collect())
}

fn find<'a>(state: &'a AdminState, name: &str) -> Result<&'a Arc<RouteHandle>, Problem> {
    state
        .parts
        .routes
        .iter()
        .find(|route| route.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = state.parts.routes.iter().map(|r| r.name.as_str()).collect();
            let problem = format!("no route {name:?} (routes: {})", known.join(", "));
            Problem::new(StatusCode::NOT_FOUND, problem)
        })
}

#[derive(Deserialize)]
struct UploadOptions {
    #[serde(default)]
    fleet: bool,
}

/// A component and its optional fixtures, from a multipart form
/// (`component`, `fixtures`) or a raw `application/wasm` body.
async fn read_upload(request: Request) -> Result<(Vec<u8>, Option<String>), Problem> {
    let bad = |problem: String| Problem::new(StatusCode::BAD_REQUEST, problem);
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let is_form = content_type
        .as_ref()
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    if !is_form {
        let body = axum::body::Bytes::from_request(request, &())
            .await
            .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))?;
        return Ok((body.to_vec(), None));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))?;
    let (mut component, mut fixtures) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| Problem::new(e.status(), e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| Problem::new(e.status(), e.body_text()))?;
        match name.as_str() {
            "component" => component = Some(bytes.to_vec()),
            "fixtures" if bytes.is_empty() => {}
            "fixtures" => {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| bad("fixtures: not UTF-8 text".into()))?;
                fixtures = Some(text);
            }
            other => {
                return Err(bad(format!(
                    "unknown form field {other:?} (expected component, fixtures)"
                )));
            }
        }
    }
    let component = component.ok_or_else(|| bad("the form has no component field".into()))?;
    Ok((component, fixtures))
}

fn refused(refusal: Refusal) -> Problem {
    let kind = match refusal {
        Refusal::Component(_) => "component",
        Refusal::Fixtures(_) => "fixtures",
    };
    Problem {
        refusal: Some(kind),
        ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {refusal}"))
    }
}

async fn upload(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(options): Query<UploadOptions>,
    request: Request,
) -> Answer {
    let route = find(&state, &name)?.clone();
    let (component, fixtures) = read_upload(request).await?;
    let parts = &state.parts;
    if options.fleet {
        deploy::signer(&parts.config).map_err(|e| Problem::new(StatusCode::CONFLICT, format!("{e:#}")))?;
        let runtime = &parts.reloader.runtime;
        let deployed = deploy::deploy(&parts.config, runtime, &name, component, fixtures)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?
            .map_err(refused)?;
        return Ok(Json(
            json!({"route": name, "version": deployed.as_str(), "fleet": true}),
        ));
    }
    let previous = route.slot.current().version.clone();
    let version = parts
        .reloader
        .try_swap(&route, component.clone(), fixtures.as_deref(), Origin::Upload)
        .await
        .map_err(refused)?;
    Ok(Json(
        json!({"route": name, "version": version.as_str(), "previous": previous.as_str()}),
    ))
}

async fn rollback(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    find(&state, &name)?;
    let parts = &state.parts;
    let (from, to) = deploy::rollback(&parts.config, &parts.reloader.runtime, &name)
        .await
        .map_err(|e| Problem::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    Ok(Json(json!({"route": name, "from": from.as_str(), "to": to.as_str()})))
}

async fn connect(state: &AdminState) -> Result<Arc<lapin::Connection>, Problem> {
    let connection = amqp::connect_first(&state.parts.config.amqp.urls, "passerelle-admin")
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Arc::new(connection))
}

async fn dead_letters(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let route = find(&state, &name)?.clone();
    let connection = connect(&state).await?;
    let listed = dlq::list(&connection, &route.route).await;
    let _ = connection.close(200, "listed".into()).await;
    let letters = listed.map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    let letters: Vec<Value> = letters
        .iter()
        .map(|letter| {
            json!({
                "message_id": letter.message_id,
                "reason": letter.record.reason,
                "attempts": letter.record.attempt.to_string(),
                "version": letter.record.version,
                "http_status": letter.record.http_status.map(|s| s.to_string()),
                "age_seconds": letter.age.map(|age| age.as_secs()),
            })
        })
        .collect();
    Ok(Json(json!({"route": name, "dead_letters": letters})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<String>,
}

async fn replay(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Json(request): Json<ReplayRequest>,
) -> Answer {
    let route = find(&state, &name)?.clone();
    let selection = match (request.all, request.ids.is_empty()) {
        (true, true) => dlq::Selection::All,
        (false, false) => dlq::Selection::Ids(request.ids),
        _ => {
            let problem = r#"say {"all": true} or {"ids": ["..."]}, not both nor neither"#;
            return Err(Problem::new(StatusCode::BAD_REQUEST, problem.into()));
        }
    };
    let connection = connect(&state).await?;
    let replayed = dlq::replay(&connection, &route.route, &selection).await;
    let _ = connection.close(200, "replayed".into()).await;
    let replayed = replayed.map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    Ok(Json(json!({"route": name, "replayed": replayed})))
}
