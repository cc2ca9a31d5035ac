//! Hot reload: a route's transform is replaced while the host runs, from a
//! changed file (`watch`), a fleet-wide deploy through the broker
//! (`fleet`), an upload to the admin API or a shadow's promotion. Either
//! way the candidate is compiled off the message path, checked against the
//! world and against its fixtures, then swapped in atomically: messages in
//! flight finish on the old version. A candidate that fails any check is refused and the
//! old version keeps serving.

mod fixtures;
pub mod fleet;
pub mod signature;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

pub use fixtures::{
    Expected, Fixture, Mismatch, Verdict, check_fixtures, fixtures_beside, fixtures_path, parse_fixtures, run_fixtures,
};
pub use watch::watch_components;

use crate::routes::{RouteHandle, Source};
use crate::runtime::{LoadError, RouteContext, Runtime, Transform, write_atomically};
use crate::stats::Stats;
use crate::version::Version;

/// Why a candidate was refused. The kinds matter to callers: a script
/// tells a bad component (exit 13) from a failing fixture (exit 14).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not a component, does not compile, or does not fit the world.
    #[error("{0}")]
    Component(#[from] LoadError),
    /// The fixtures could not be read, or one of them failed.
    #[error("{0}")]
    Fixtures(String),
}

/// Compiles `bytes` (on a blocking thread), checks them against the world,
/// then runs `fixtures` (JSON text) if any.
pub async fn validate(
    runtime: &Runtime,
    bytes: Vec<u8>,
    route: &RouteContext,
    fixtures: Option<&str>,
) -> Result<Transform, Refusal> {
    let compiler = runtime.clone();
    let transform = tokio::task::spawn_blocking(move || compiler.load(&bytes))
        .await
        .map_err(|e| LoadError::Compile(format!("compilation did not finish: {e}")))??;
    if let Some(text) = fixtures {
        let fixtures = parse_fixtures(text, "file").map_err(Refusal::Fixtures)?;
        check_fixtures(runtime, &transform, route, &fixtures)
            .await
            .map_err(Refusal::Fixtures)?;
    }
    Ok(transform)
}

/// Where a candidate comes from, for the logs and the admin API.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Deploy(Version),
    /// The latest deploy, taken at start or after a reconnect.
    LatestDeploy(Version),
    Upload,
    /// A shadow's candidate, promoted.
    Promotion(Version),
}

impl Origin {
    /// A deploy or an upload is written to the route's file, so that a
    /// restart and the file watcher agree with what was swapped in.
    fn is_stored(&self) -> bool {
        !matches!(self, Self::File(_))
    }

    fn source(&self) -> Source {
        match self {
            Self::File(_) => Source::File,
            Self::Deploy(_) | Self::LatestDeploy(_) => Source::Deploy,
            Self::Upload => Source::Upload,
            Self::Promotion(_) => Source::Shadow,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Deploy(version) => format!("deploy of {version}"),
            Self::LatestDeploy(version) => format!("latest deploy of {version}"),
            Self::Upload => "upload".into(),
            Self::Promotion(version) => format!("promotion of shadow {version}"),
        }
    }
}

/// Validates candidates and swaps them in, counting both outcomes.
#[derive(Clone)]
pub struct Reloader {
    pub runtime: Runtime,
    pub stats: Arc<Stats>,
}

impl Reloader {
    /// Validates a candidate for `route` and swaps it in (a deploy or an
    /// upload is also stored in the route's file), or logs why not.
    /// Returns the version the route now runs. Swaps of one route run one
    /// at a time.
    pub async fn try_swap(
        &self,
        route: &RouteHandle,
        bytes: Vec<u8>,
        fixtures: Option<&str>,
        origin: Origin,
    ) -> Result<Version, Refusal> {
        let _one_at_a_time = route.swaps.lock().await;
        let current = route.slot.current().version.clone();
        let candidate = Version::of(&bytes);
        if candidate == current || is_stale(route, &bytes, &origin).await {
            return Ok(current);
        }
        let origin_text = origin.describe();
        match validate(&self.runtime, bytes.clone(), &route.context, fixtures).await {
            Ok(transform) => {
                let old = route.install(transform, origin.source());
                self.stats.reloaded(&route.name, true);
                tracing::info!(
                    route = %route.name, old = %old.version, new = %candidate,
                    "swapped transform {} -> {candidate} ({origin_text})", old.version
                );
                if origin.is_stored()
                    && let Err(error) = store(route, &bytes, fixtures)
                {
                    tracing::error!(route = %route.name, "swapped in {candidate} but could not store it: {error:#}");
                }
                Ok(candidate)
            }
            Err(refusal) => {
                self.stats.reloaded(&route.name, false);
                tracing::warn!(
                    route = %route.name, current = %current, refused = %candidate,
                    "refused transform {candidate} ({origin_text}); {current} keeps serving: {refusal}"
                );
                Err(refusal)
            }
        }
    }
}

/// A file candidate read before a newer one was stored (by a deploy or an
/// upload that took the lock first) is stale: the file's latest bytes are
/// what the route runs, and installing the older ones would undo it.
async fn is_stale(route: &RouteHandle, bytes: &[u8], origin: &Origin) -> bool {
    let Origin::File(path) = origin else {
        return false;
    };
    let stale = tokio::fs::read(path).await.is_ok_and(|now| now != bytes);
    if stale {
        tracing::debug!(route = %route.name, "{} changed since it was read; its latest bytes come next", path.display());
    }
    stale
}

/// Stores a component and its fixtures where the route reads them, so a
/// restart and the file watcher agree with what was swapped in. Stale
/// fixtures must not stay beside a component that came without any.
fn store(route: &RouteHandle, component: &[u8], fixtures: Option<&str>) -> anyhow::Result<()> {
    let path = &route.path;
    write_atomically(path, component, 0o644)?;
    match fixtures {
        Some(fixtures) => write_atomically(&fixtures_path(path), fixtures.as_bytes(), 0o644),
        None => match std::fs::remove_file(fixtures_path(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        },
    }
}
