//! Hot reload: a route's transform is replaced while the host runs, from a
//! changed file (`watch`) or a fleet-wide deploy through the broker
//! (`fleet`). Either way the candidate is compiled off the message path,
//! checked against the world and against its fixtures, then swapped in
//! atomically: messages in flight finish on the old version. A candidate
//! that fails any check is refused and the old version keeps serving.

mod fixtures;
pub mod fleet;
mod watch;

use std::sync::Arc;

pub use fixtures::{Expected, Fixture, check_fixtures, fixtures_beside, fixtures_path, parse_fixtures};
pub use watch::watch_components;

use crate::pipeline::Pipeline;
use crate::runtime::{RouteContext, Runtime, Transform};

/// Compiles `bytes` (on a blocking thread), checks them against the world,
/// then runs `fixtures` (JSON text) if any. The error says what failed.
pub async fn validate(
    runtime: &Runtime,
    bytes: Vec<u8>,
    route: &RouteContext,
    fixtures: Option<&str>,
) -> Result<Transform, String> {
    let compiler = runtime.clone();
    let transform = tokio::task::spawn_blocking(move || compiler.load(&bytes))
        .await
        .map_err(|e| format!("compilation did not finish: {e}"))?
        .map_err(|e| e.to_string())?;
    if let Some(text) = fixtures {
        let fixtures = parse_fixtures(text, "file")?;
        check_fixtures(runtime, &transform, route, &fixtures).await?;
    }
    Ok(transform)
}

/// Validates a candidate for `pipeline` and swaps it in, or logs why not.
/// Returns whether the route now runs the candidate.
pub async fn try_swap(
    runtime: &Runtime,
    pipeline: &Arc<Pipeline>,
    bytes: Vec<u8>,
    fixtures: Option<&str>,
    origin: &str,
) -> bool {
    let current = pipeline.transform.current().version.clone();
    let candidate = crate::version::Version::of(&bytes);
    if candidate == current {
        return true;
    }
    match validate(runtime, bytes, pipeline.context(), fixtures).await {
        Ok(transform) => {
            let old = pipeline.transform.swap(transform);
            tracing::info!(
                route = %pipeline.name, old = %old.version, new = %candidate,
                "swapped transform {} -> {candidate} ({origin})", old.version
            );
            true
        }
        Err(reason) => {
            tracing::warn!(
                route = %pipeline.name, current = %current, refused = %candidate,
                "refused transform {candidate} ({origin}); {current} keeps serving: {reason}"
            );
            false
        }
    }
}
