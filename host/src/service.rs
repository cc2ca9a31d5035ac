//! `passerelle run`: loads every route's transform, connects, declares the
//! topology and consumes each route's queue with its own concurrency. A
//! lost connection is re-established with backoff (unacked messages are
//! redelivered by the broker); a shutdown stops consuming and lets the
//! messages in flight finish, within a bound.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use lapin::Connection;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::delivery::Http;
use crate::pipeline::Pipeline;
use crate::reload::{self, fleet};
use crate::runtime::{Runtime, TransformSlot};

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Loads each route's component and checks it against its fixtures; a bad
/// one refuses the start, naming the route and the file.
pub async fn load_pipelines(config: &Config, runtime: &Runtime) -> anyhow::Result<Vec<Arc<Pipeline>>> {
    let http = Arc::new(Http::new(&config.endpoints)?);
    let mut pipelines = Vec::new();
    for (name, route) in &config.routes {
        let file = route.transform.display();
        let bytes =
            std::fs::read(&route.transform).with_context(|| format!("route {name}: reading transform {file}"))?;
        let fixtures = reload::fixtures_beside(&route.transform).map_err(|e| anyhow!("route {name}: {e}"))?;
        let context = Pipeline::context_for(name, route);
        let transform = reload::validate(runtime, bytes, &context, fixtures.as_deref())
            .await
            .map_err(|e| anyhow!("route {name}: transform {file} refused: {e}"))?;
        let source = if transform.from_cache {
            "from the compile cache"
        } else {
            "compiled"
        };
        tracing::info!(route = %name, version = %transform.version, "loaded transform {file} ({source})");
        let slot = Arc::new(TransformSlot::new(transform));
        pipelines.push(Arc::new(Pipeline::new(
            name,
            route,
            slot,
            runtime.clone(),
            http.clone(),
        )));
    }
    Ok(pipelines)
}

/// Serves until `shutdown` is cancelled, reconnecting whenever the broker
/// connection is lost. The first connection's errors (a wrong password, a
/// queue declared elsewhere with other settings) refuse the start.
pub async fn run(
    config: &Config,
    pipelines: &[Arc<Pipeline>],
    runtime: &Runtime,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    let mut first = true;
    let deploys_seen = fleet::DeploysSeen::default();
    loop {
        let connection = match connect_and_declare(config).await {
            Ok(connection) => connection,
            Err(error) if first => return Err(error),
            Err(error) => {
                tracing::warn!("{error:#}; retrying in {:?}", backoff.delay);
                if backoff.wait(&shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        // A host started after a deploy takes it before consuming.
        let exchange = &config.amqp.control_exchange;
        if let Err(error) = fleet::apply_latest(&connection, exchange, pipelines, runtime, &deploys_seen).await {
            tracing::warn!("could not read the deploy history: {error:#}");
        }
        first = false;
        backoff = Backoff::default();
        tracing::info!("connected to the broker; consuming {} route(s)", pipelines.len());
        match serve(&connection, config, pipelines, runtime, &deploys_seen, &shutdown).await {
            Ok(()) => {
                let _ = connection.close(200, "shutting down".into()).await;
                return Ok(());
            }
            Err(error) => tracing::warn!("connection lost, reconnecting: {error:#}"),
        }
        if backoff.wait(&shutdown).await {
            return Ok(());
        }
    }
}

/// Exponential delay between reconnections, reset once connected.
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// Sleeps, or returns true at once when a shutdown is requested.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delay;
        self.delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shutdown.cancelled() => true,
        }
    }
}

async fn connect_and_declare(config: &Config) -> anyhow::Result<Arc<Connection>> {
    // The pid tells an operator (and a test) which host a connection is.
    let name = format!("passerelle pid {}", std::process::id());
    let connection = Arc::new(amqp::connect(&config.amqp.url, &name).await?);
    if let Err(error) = declare_all(&connection, config).await {
        let _ = connection.close(200, "declaring failed".into()).await;
        return Err(error);
    }
    Ok(connection)
}

async fn declare_all(connection: &Connection, config: &Config) -> anyhow::Result<()> {
    let channel = connection.create_channel().await.context("opening a channel")?;
    for (name, route) in &config.routes {
        amqp::declare_topology(&channel, name, route).await?;
    }
    let routes: Vec<String> = config.routes.keys().cloned().collect();
    fleet::declare(&channel, &config.amqp.control_exchange, &routes).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// Runs one consumer per route; returns Ok after a clean shutdown, or the
/// first consumer's error (the connection is then abandoned).
async fn serve(
    connection: &Arc<Connection>,
    config: &Config,
    pipelines: &[Arc<Pipeline>],
    runtime: &Runtime,
    deploys_seen: &fleet::DeploysSeen,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut consumers = JoinSet::new();
    consumers.spawn(fleet::listen(
        connection.clone(),
        config.amqp.control_exchange.clone(),
        pipelines.to_vec(),
        runtime.clone(),
        deploys_seen.clone(),
        shutdown.clone(),
    ));
    for pipeline in pipelines {
        let consumer = consume(
            connection.clone(),
            pipeline.clone(),
            shutdown.clone(),
            config.amqp.shutdown_grace,
        );
        consumers.spawn(consumer);
    }
    while let Some(joined) = consumers.join_next().await {
        joined.context("a consumer task panicked")??;
    }
    Ok(())
}

/// Consumes one route's queue, handling up to `concurrency` messages at once.
async fn consume(
    connection: Arc<Connection>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let route = &pipeline.route;
    let channel = connection.create_channel().await.context("opening a channel")?;
    channel
        .basic_qos(route.prefetch(), BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let tag = format!("passerelle-{}-{}", pipeline.name, std::process::id());
    let mut deliveries = channel
        .basic_consume(
            route.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("route {}: consuming {}", pipeline.name, route.queue))?;
    let publisher = Publisher::new(connection.clone());
    let slots = Arc::new(Semaphore::new(usize::from(route.concurrency)));
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        // While an endpoint is down, messages stay in the queue instead of
        // being taken and failed.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = pipeline.wait_until_endpoints_usable() => {}
        }
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(error).context(format!("route {}: consumer", pipeline.name)),
                None => return Err(anyhow!("route {}: the broker cancelled the consumer", pipeline.name)),
            },
        };
        let slot = slots.clone().acquire_owned().await?;
        let (pipeline, publisher) = (pipeline.clone(), publisher.clone());
        in_flight.spawn(async move {
            pipeline.handle(delivery, &publisher).await;
            drop(slot);
        });
    }
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    drain(&pipeline.name, in_flight, grace).await;
    // Closed here, not dropped: the connection closes right after, and a
    // channel still closing would be reported as an error.
    let _ = channel.close(200, "shutting down".into()).await;
    publisher.close().await;
    Ok(())
}

/// Lets the messages in flight finish, up to `grace`; the rest stay
/// unacked and the broker redelivers them.
async fn drain(route: &str, mut in_flight: JoinSet<()>, grace: Duration) {
    let finished = tokio::time::timeout(grace, async { while in_flight.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            route,
            "{} message(s) still in flight after {grace:?}; the broker will redeliver them",
            in_flight.len()
        );
        in_flight.abort_all();
    }
}
