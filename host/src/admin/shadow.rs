//! The admin API of shadow runs, what `passerelle shadow` talks to:
//! start a candidate beside a route's live transform, read its report,
//! stop it, or promote it (a swap like any other, through
//! `Reloader::try_swap`).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AdminState, Answer, Problem, find, read_upload, refused};
use crate::reload::Origin;
use crate::routes::RouteHandle;
use crate::shadow::{self, Candidate, Shadow, StartError};

/// `POST /transforms/{route}/shadow`: the candidate as an upload
/// (`application/wasm`, or a form with `component` and `fixtures`).
pub(super) async fn start(State(state): State<AdminState>, Path(name): Path<String>, request: Request) -> Answer {
    let route = find(&state, &name)?.clone();
    let (bytes, fixtures) = read_upload(request).await?;
    let parts = &state.parts;
    let started = shadow::start(
        &route,
        &parts.reloader.runtime,
        parts.stats.clone(),
        Candidate { bytes, fixtures },
    )
    .await
    .map_err(|error| match error {
        StartError::Refused(refusal) => refused(refusal),
        running @ StartError::Running { .. } => Problem::new(StatusCode::CONFLICT, running.to_string()),
    })?;
    let live = route.slot.current().version.clone();
    Ok(axum::Json(json!({
        "route": name,
        "candidate": started.version.as_str(),
        "live": live.as_str(),
    })))
}

/// `GET /transforms/{route}/shadow`: the report so far.
pub(super) async fn report(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let route = find(&state, &name)?;
    let shadow = running(route)?;
    Ok(report_of(route, &shadow))
}

/// `DELETE /transforms/{route}/shadow`: stops it; answers its last report.
pub(super) async fn stop(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let route = find(&state, &name)?;
    let shadow = running(route)?;
    route.shadow.stop(&shadow);
    tracing::info!(route = %route.name, candidate = %shadow.version, "stopped the shadow of {}", shadow.version);
    Ok(report_of(route, &shadow))
}

/// `POST /transforms/{route}/shadow/promote`: swaps the candidate in,
/// then stops the shadow; answers the version and the last report.
pub(super) async fn promote(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let route = find(&state, &name)?.clone();
    let shadow = running(&route)?;
    let previous = route.slot.current().version.clone();
    let Candidate { bytes, fixtures } = shadow.candidate.clone();
    let origin = Origin::Promotion(shadow.version.clone());
    let version = state
        .parts
        .reloader
        .try_swap(&route, bytes, fixtures.as_deref(), origin)
        .await
        .map_err(refused)?;
    let report = shadow.report(&previous);
    route.shadow.stop(&shadow);
    Ok(axum::Json(json!({
        "route": name,
        "version": version.as_str(),
        "previous": previous.as_str(),
        "report": report,
    })))
}

fn running(route: &RouteHandle) -> Result<std::sync::Arc<Shadow>, Problem> {
    route.shadow.current().ok_or_else(|| {
        let problem = format!("route {} has no shadow running", route.name);
        Problem::new(StatusCode::NOT_FOUND, problem)
    })
}

fn report_of(route: &RouteHandle, shadow: &Shadow) -> axum::Json<Value> {
    axum::Json(json!(shadow.report(&route.slot.current().version)))
}
