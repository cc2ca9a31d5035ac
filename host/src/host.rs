//! The running process, owned in one place. `Host::start` loads every
//! route's transform, connects to the broker and declares the topology
//! (errors there refuse the start), then runs the file watcher, the fleet
//! listener, one consumer per route and, when configured, the admin
//! and ingest servers, until `shutdown`. A lost connection is re-established with
//! backoff (unacked messages are redelivered by the broker); a shutdown
//! stops consuming and lets the messages in flight finish, within a bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::Connection;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::amqp::{self, Brokers, consumer};
use crate::config::Config;
use crate::delivery::Http;
use crate::ingest::{self, IngestServer};
use crate::memory::Memory;
use crate::pipeline::Pipeline;
use crate::reload::{self, Reloader, fleet};
use crate::routes::{self, RouteHandle};
use crate::runtime::{Lanes, Runtime};
use crate::stats::Stats;

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// What the host's tasks share.
#[derive(Clone)]
pub struct Parts {
    pub config: Arc<Config>,
    pub routes: Vec<Arc<RouteHandle>>,
    pub reloader: Reloader,
    pub http: Arc<Http>,
    pub stats: Arc<Stats>,
    /// The ledgers, and each route's guard and echo.
    pub memory: Arc<Memory>,
}

pub struct Host {
    parts: Parts,
    shutdown: CancellationToken,
    serving: JoinHandle<anyhow::Result<()>>,
    admin_address: Option<SocketAddr>,
    ingest: Option<IngestServer>,
}

impl Host {
    /// Starts everything; returns once the first connection is up and the
    /// routes are being consumed.
    pub async fn start(config: Config, runtime: Runtime) -> anyhow::Result<Self> {
        let routes = routes::load(&config, &runtime).await?;
        Self::start_loaded(config, runtime, routes).await
    }

    /// `start`, with the routes' transforms already loaded (by `routes::load`).
    pub async fn start_loaded(config: Config, runtime: Runtime, routes: Vec<Arc<RouteHandle>>) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let parts = Parts {
            http: Arc::new(Http::new(&config.endpoints, stats.clone())?),
            reloader: Reloader {
                runtime,
                stats: stats.clone(),
            },
            memory: Arc::new(Memory::new(&config)),
            config: Arc::new(config),
            routes,
            stats,
        };
        let shutdown = CancellationToken::new();
        let admin_address = match &parts.config.admin {
            Some(settings) => Some(admin::serve(settings, parts.clone(), shutdown.clone()).await?),
            None => None,
        };
        reload::watch_components(&parts.routes, &parts.reloader, shutdown.clone())?;
        // The serving loop's own: it moves to the next address after a loss.
        let brokers = Brokers::new(&parts.config.amqp.urls);
        let connection = connect_and_declare(&parts.config, &parts.memory, &brokers).await?;
        // After the topology is declared, so that the first webhooks find their queues.
        let ingest = match &parts.config.ingest {
            Some(settings) => {
                let stats = parts.stats.clone();
                Some(ingest::serve(settings, &parts.config.amqp.urls, stats, shutdown.clone()).await?)
            }
            None => None,
        };
        let serving = tokio::spawn(serve_until_shutdown(
            parts.clone(),
            brokers,
            connection,
            shutdown.clone(),
        ));
        Ok(Self {
            parts,
            shutdown,
            serving,
            admin_address,
            ingest,
        })
    }

    pub fn routes(&self) -> &[Arc<RouteHandle>] {
        &self.parts.routes
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.parts.stats
    }

    /// Where the admin server listens, when there is one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_address
    }

    /// Where the ingest server listens, when there is one.
    pub fn ingest_address(&self) -> Option<SocketAddr> {
        self.ingest.as_ref().map(|server| server.address)
    }

    /// Cancelling it asks for a clean stop: consumers stop taking
    /// messages, messages in flight finish (up to `amqp.shutdown_grace`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the host has stopped. The ingest server's requests in
    /// flight get the same grace as messages: a sender cut off gets no
    /// acknowledgement, and sends again.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.serving.await.context("the host's main task panicked")?;
        if let Some(ingest) = self.ingest {
            let grace = self.parts.config.amqp.shutdown_grace;
            if tokio::time::timeout(grace, ingest.task).await.is_err() {
                tracing::warn!("the ingest server's requests did not finish within {grace:?}");
            }
        }
        served
    }
}

/// Serves on `connection`, then on each new one after a loss (trying the
/// next broker address first), until shutdown.
async fn serve_until_shutdown(
    parts: Parts,
    brokers: Brokers,
    mut connection: Arc<Connection>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let deploys_seen = fleet::DeploysSeen::default();
    let trust = fleet::Trust::of(&parts.config.fleet);
    announce(&trust);
    loop {
        // A host started after a deploy takes it before consuming.
        let exchange = &parts.config.amqp.control_exchange;
        let (routes, reloader) = (&parts.routes, &parts.reloader);
        if let Err(error) = fleet::apply_latest(&connection, exchange, routes, reloader, &trust, &deploys_seen).await {
            tracing::warn!("could not read the deploy history: {error:#}");
        }
        parts.stats.set_broker_connected(true);
        tracing::info!("connected to the broker; consuming {} route(s)", parts.routes.len());
        let served = serve(&connection, &parts, &trust, &deploys_seen, &shutdown).await;
        parts.stats.set_broker_connected(false);
        match served {
            Ok(()) => {
                let _ = connection.close(200, "shutting down".into()).await;
                return Ok(());
            }
            Err(error) => tracing::warn!("connection lost, reconnecting: {error:#}"),
        }
        brokers.lost();
        match reconnect(&parts.config, &parts.memory, &brokers, &shutdown).await {
            Some(next) => connection = next,
            None => return Ok(()),
        }
    }
}

/// Says once at start which deploys this host will take.
fn announce(trust: &fleet::Trust) {
    match trust {
        fleet::Trust::Signed(key) => tracing::info!("fleet deploys: only those signed by key {}", key.id()),
        fleet::Trust::Unsigned => tracing::warn!("fleet deploys: unsigned ones accepted (fleet.unsigned: allow)"),
        fleet::Trust::Nothing => tracing::warn!("fleet deploys: all refused; this host has no fleet.verify_key"),
    }
}

/// Connects again with exponential backoff; None when a shutdown came first.
async fn reconnect(
    config: &Config,
    memory: &Memory,
    brokers: &Brokers,
    shutdown: &CancellationToken,
) -> Option<Arc<Connection>> {
    let mut delay = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
        match connect_and_declare(config, memory, brokers).await {
            Ok(connection) => return Some(connection),
            Err(error) => tracing::warn!("{error:#}; retrying in {:?}", delay * 2),
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

/// Connects to the first broker address that answers and declares the
/// topology there; a node that fails the declaring counts as lost.
async fn connect_and_declare(config: &Config, memory: &Memory, brokers: &Brokers) -> anyhow::Result<Arc<Connection>> {
    // The pid tells an operator (and a test) which host a connection is.
    let name = format!("passerelle pid {}", std::process::id());
    let connection = Arc::new(brokers.connect(&name).await?);
    if let Err(error) = declare_all(&connection, config, memory).await {
        brokers.lost();
        let _ = connection.close(200, "declaring failed".into()).await;
        return Err(error);
    }
    Ok(connection)
}

async fn declare_all(connection: &Connection, config: &Config, memory: &Memory) -> anyhow::Result<()> {
    let channel = connection.create_channel().await.context("opening a channel")?;
    for route in config.routes.values() {
        amqp::declare_topology(&channel, route).await?;
    }
    memory.declare(&channel).await?;
    let routes: Vec<String> = config.routes.keys().cloned().collect();
    fleet::declare(&channel, &config.amqp.control_exchange, &routes).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// Runs the fleet listener and one consumer per route; returns Ok after a
/// clean shutdown, or the first task's error (the connection is then abandoned).
async fn serve(
    connection: &Arc<Connection>,
    parts: &Parts,
    trust: &fleet::Trust,
    deploys_seen: &fleet::DeploysSeen,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    // Before any route consumes: a guard holds only once its ledger is read.
    for follower in parts.memory.catch_up(connection).await? {
        tasks.spawn(follower.run(shutdown.clone()));
    }
    tasks.spawn(fleet::listen(
        connection.clone(),
        parts.config.amqp.control_exchange.clone(),
        parts.routes.clone(),
        parts.reloader.clone(),
        trust.clone(),
        deploys_seen.clone(),
        shutdown.clone(),
    ));
    // Lanes shared by every route: transforms that arrive together run
    // together, whichever route they come from.
    let lanes = Lanes::start(parts.reloader.runtime.clone());
    for route in &parts.routes {
        let pipeline = Pipeline::new(
            route.clone(),
            lanes.clone(),
            parts.http.clone(),
            parts.stats.clone(),
            parts.memory.of(&route.name),
        );
        let grace = parts.config.amqp.shutdown_grace;
        tasks.spawn(consumer::consume(
            connection.clone(),
            Arc::new(pipeline),
            shutdown.clone(),
            grace,
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a consumer task panicked")??;
    }
    Ok(())
}
