//! The routes as a running host holds them. A `RouteHandle` is one
//! route's name, component file, transform slot (the atomic swap point)
//! and run context; the message path, hot reload, fleet deploys and the
//! admin API all share it, so a swap made by one is seen by all.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::{Config, Route};
use crate::reload;
use crate::runtime::{PoolSize, RouteContext, Runtime, Transform, TransformSlot};
use crate::shadow::ShadowSlot;

/// Where the transform a route runs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Compiled from the route's file.
    File,
    /// The route's file, with the machine code from the compile cache.
    Cache,
    /// A fleet deploy through the broker.
    Deploy,
    /// Uploaded through the admin API.
    Upload,
    /// A shadow's candidate, promoted through the admin API.
    Shadow,
}

/// What the admin API says of a route's transform.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    pub at: SystemTime,
}

pub struct RouteHandle {
    pub name: String,
    /// The component file (a deploy or an upload is stored there too).
    pub path: PathBuf,
    pub slot: TransformSlot,
    pub context: RouteContext,
    pub route: Route,
    loaded: Mutex<Loaded>,
    /// One swap of this route at a time (`Reloader::try_swap`), so that a
    /// file reload that read the file before a deploy stored a newer
    /// version cannot install the older bytes after it.
    pub swaps: tokio::sync::Mutex<()>,
    /// A candidate running beside the live transform, if any.
    pub shadow: ShadowSlot,
}

impl RouteHandle {
    pub fn new(route: &Route, transform: Transform, source: Source) -> Self {
        Self {
            name: route.name.clone(),
            path: route.transform.clone(),
            slot: TransformSlot::new(transform),
            context: context_for(route),
            route: route.clone(),
            loaded: Mutex::new(Loaded {
                source,
                at: SystemTime::now(),
            }),
            swaps: tokio::sync::Mutex::new(()),
            shadow: ShadowSlot::default(),
        }
    }

    /// Swaps in a new transform; returns the one it replaces.
    pub fn install(&self, transform: Transform, source: Source) -> Arc<Transform> {
        let old = self.slot.swap(transform);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Loaded {
            source,
            at: SystemTime::now(),
        };
        old
    }

    pub fn loaded(&self) -> Loaded {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Instances that validation (fixtures of a candidate) may run beside
/// the routes' messages.
const VALIDATION_INSTANCES: u32 = 4;
/// Instances a route's shadow runs at once: its candidate takes one
/// message at a time, so it never takes a slot from the live messages.
const SHADOW_INSTANCES_PER_ROUTE: u32 = 1;

/// The instance pool the routes need: one instance per message a route
/// may handle at once (and one for its shadow), and memories as large as
/// the largest route limit.
pub fn pool_size(config: &Config) -> PoolSize {
    let routes = config.routes.values();
    let instances = routes
        .clone()
        .map(|route| u32::from(route.concurrency) + SHADOW_INSTANCES_PER_ROUTE)
        .sum::<u32>();
    let max_memory = routes
        .map(|route| route.limits.guest().memory)
        .max()
        .unwrap_or_default();
    PoolSize {
        instances: instances + VALIDATION_INSTANCES,
        max_memory,
    }
}

/// What a route's transform runs with.
pub fn context_for(route: &Route) -> RouteContext {
    RouteContext {
        route: route.name.as_str().into(),
        config: Arc::new(route.config.clone()),
        limits: route.limits.guest(),
    }
}

/// Loads each route's component and checks it against its fixtures; a bad
/// one refuses the start, naming the route and the file.
pub async fn load(config: &Config, runtime: &Runtime) -> anyhow::Result<Vec<Arc<RouteHandle>>> {
    let mut handles = Vec::new();
    for route in config.routes.values() {
        let (name, file) = (&route.name, route.transform.display());
        let bytes =
            std::fs::read(&route.transform).with_context(|| format!("route {name}: reading transform {file}"))?;
        let fixtures = reload::fixtures_beside(&route.transform).map_err(|e| anyhow::anyhow!("route {name}: {e}"))?;
        let transform = reload::validate(runtime, bytes, &context_for(route), fixtures.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("route {name}: transform {file} refused: {e}"))?;
        let (source, how) = if transform.from_cache {
            (Source::Cache, "from the compile cache")
        } else {
            (Source::File, "compiled")
        };
        tracing::info!(route = %name, version = %transform.version, "loaded transform {file} ({how})");
        handles.push(Arc::new(RouteHandle::new(route, transform, source)));
    }
    Ok(handles)
}
