//! Watches each route's component file and swaps in what lands there.
//! Folders are watched, not files, so that write-to-temp-then-rename is
//! seen; events are debounced so that a file copied in several writes is
//! read once it is quiet. A half-written file that slips through fails to
//! compile and is refused; the write that completes it is picked up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Origin, Reloader, fixtures_beside, fixtures_path};
use crate::routes::RouteHandle;

/// How long a file must stay quiet before it is read.
const QUIET: Duration = Duration::from_millis(250);

/// Starts watching; the watcher lives until `shutdown`.
pub fn watch_components(
    routes: &[Arc<RouteHandle>],
    reloader: &Reloader,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (events, mut changed) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    })
    .context("starting the file watcher")?;
    let mut folders: Vec<PathBuf> = routes
        .iter()
        .filter_map(|route| route.path.parent().map(PathBuf::from))
        .collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", folder.display()))?;
    }
    let routes = routes.to_vec();
    let reloader = reloader.clone();
    tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the events
        let mut due: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(path) = changed.recv() => {
                    for (index, route) in routes.iter().enumerate() {
                        let watched = &route.path;
                        if path == *watched || path == fixtures_path(watched) {
                            due.insert(index, Instant::now() + QUIET);
                        }
                    }
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    let ready: Vec<usize> = due.iter().filter(|(_, at)| **at <= now).map(|(i, _)| *i).collect();
                    for index in ready {
                        due.remove(&index);
                        reload(&reloader, &routes[index]).await;
                    }
                }
            }
        }
    });
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn reload(reloader: &Reloader, route: &RouteHandle) {
    let path = &route.path;
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(route = %route.name, "cannot read {} ({error}); the current transform keeps serving", path.display());
            return;
        }
    };
    let fixtures = match fixtures_beside(path) {
        Ok(fixtures) => fixtures,
        Err(error) => {
            tracing::warn!(route = %route.name, "{error}; the current transform keeps serving");
            return;
        }
    };
    // A refusal is logged and counted by the reloader; the old version serves on.
    let _ = reloader
        .try_swap(route, bytes, fixtures.as_deref(), Origin::File(path.clone()))
        .await;
}
