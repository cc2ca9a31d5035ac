//! Operator commands. On a route's dead letters, in the spirit of
//! rabbit-mq-admin-toolkit's message commands: list them with their
//! reason, replay them into the work queue with a fresh attempt budget
//! (confirmed before they leave the dead-letter queue, so an interrupted
//! replay loses nothing), or purge them. On a route's transform, for every
//! host at once: deploy a new one, or roll back to the previous one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::amqp::{self, ATTEMPT_HEADER, HEADER_PREFIX, Publisher};
use crate::config::{Config, Route};
use crate::pipeline::Pipeline;
use crate::reload::{self, fleet};
use crate::runtime::Runtime;
use crate::version::Version;

/// At most this many dead letters are looked at in one command: they are
/// all held unacked until it ends.
pub const MAX_MESSAGES: usize = 10_000;

/// A dead letter as `dlq list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub reason: String,
    pub attempts: String,
    pub version: String,
    pub http_status: Option<String>,
    pub age: Option<Duration>,
}

/// Which dead letters `dlq replay` sends back.
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// Checks a component for a route as every host will (world, fixtures),
/// then publishes it to all of them. The inner error is the refusal.
pub async fn deploy(
    config: &Config,
    runtime: &Runtime,
    route_name: &str,
    component: Vec<u8>,
    fixtures: Option<String>,
) -> anyhow::Result<Result<Version, String>> {
    let route = route(config, route_name)?;
    let context = Pipeline::context_for(route_name, route);
    if let Err(reason) = reload::validate(runtime, component.clone(), &context, fixtures.as_deref()).await {
        return Ok(Err(reason));
    }
    let deployment = fleet::Deployment {
        route: route_name.to_string(),
        version: Version::of(&component),
        component,
        fixtures,
    };
    publish_deployment(config, &deployment).await?;
    Ok(Ok(deployment.version))
}

/// Publishes again the latest deployed version that differs from the
/// current one. Returns (from, to).
pub async fn rollback(config: &Config, runtime: &Runtime, route_name: &str) -> anyhow::Result<(Version, Version)> {
    route(config, route_name)?;
    let connection = amqp::connect(&config.amqp.url, "passerelle-rollback").await?;
    let history = fleet::history(&connection, &config.amqp.control_exchange, route_name).await?;
    let _ = connection.close(200, "read".into()).await;
    let current = history
        .last()
        .ok_or_else(|| anyhow!("route {route_name} has no deploy to roll back"))?
        .version
        .clone();
    let previous = history
        .iter()
        .rev()
        .find(|deployment| deployment.version != current)
        .cloned()
        .ok_or_else(|| anyhow!("route {route_name} has no earlier version than {current} to roll back to"))?;
    let to = previous.version.clone();
    match deploy(config, runtime, route_name, previous.component, previous.fixtures).await? {
        Ok(_) => Ok((current, to)),
        Err(reason) => Err(anyhow!(
            "the previous version {to} no longer passes its checks: {reason}"
        )),
    }
}

async fn publish_deployment(config: &Config, deployment: &fleet::Deployment) -> anyhow::Result<()> {
    let connection = Arc::new(amqp::connect(&config.amqp.url, "passerelle-deploy").await?);
    let channel = connection.create_channel().await?;
    let routes: Vec<String> = config.routes.keys().cloned().collect();
    let exchange = &config.amqp.control_exchange;
    fleet::declare(&channel, exchange, &routes).await?;
    let _ = channel.close(200, "declared".into()).await;
    if fleet::history(&connection, exchange, &deployment.route)
        .await?
        .is_empty()
    {
        // Before the first deploy, hosts run the file the configuration
        // names: record it, so that a rollback can return to it.
        let baseline = baseline(config, &deployment.route)?;
        fleet::record(&connection, exchange, &baseline).await?;
    }
    let published = fleet::publish(&connection, exchange, deployment).await;
    let _ = connection.close(200, "deployed".into()).await;
    published
}

fn baseline(config: &Config, route_name: &str) -> anyhow::Result<fleet::Deployment> {
    let path = &route(config, route_name)?.transform;
    let component = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let fixtures = reload::fixtures_beside(path).map_err(anyhow::Error::msg)?;
    Ok(fleet::Deployment {
        route: route_name.to_string(),
        version: Version::of(&component),
        component,
        fixtures,
    })
}

pub fn route<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a Route> {
    config.routes.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.routes.keys().map(String::as_str).collect();
        anyhow!("no route {name:?} (routes: {})", known.join(", "))
    })
}

/// Reads every dead letter, leaving them all in place.
pub async fn list(connection: &Connection, route: &Route) -> anyhow::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let present = present(&channel, route).await?;
    let mut letters = Vec::new();
    while let Some(message) = next(&channel, route, letters.len(), present).await? {
        letters.push(describe(&message));
    }
    // Closing the channel returns the unacked messages to the queue.
    let _ = channel.close(200, "listed".into()).await;
    Ok(letters)
}

/// Publishes the selected dead letters to the work queue with a fresh
/// attempt count; each leaves the dead-letter queue only once the broker
/// confirmed its copy. Returns how many were replayed.
pub async fn replay(connection: &Arc<Connection>, route: &Route, selection: &Selection) -> anyhow::Result<usize> {
    let channel = connection.create_channel().await?;
    let publisher = Publisher::new(connection.clone());
    // Only what is there now: a replayed message that fails again lands
    // back in the queue, and must not be replayed in a loop.
    let present = present(&channel, route).await?;
    let (mut seen, mut replayed) = (0, 0);
    while let Some(message) = next(&channel, route, seen, present).await? {
        seen += 1;
        if !selection.takes(message.delivery.properties.message_id().as_ref().map(|id| id.as_str())) {
            continue;
        }
        let properties = message
            .delivery
            .properties
            .clone()
            .with_headers(fresh_headers(&message));
        publisher
            .publish("", &route.queue, &message.delivery.data, properties)
            .await
            .context("replaying into the work queue")?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    Ok(replayed)
}

/// Drops every dead letter of the route; returns how many.
pub async fn purge(connection: &Connection, route: &Route) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let queue = route.dead_letter_queue();
    let count = channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purging {queue}"))?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(count)
}

/// How many dead letters the route has now.
async fn present(channel: &Channel, route: &Route) -> anyhow::Result<usize> {
    let queue = route.dead_letter_queue();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.as_str().into(), options, FieldTable::default())
        .await
        .with_context(|| format!("no dead-letter queue {queue}: has the route run yet?"))?;
    Ok(declared.message_count() as usize)
}

async fn next(
    channel: &Channel,
    route: &Route,
    seen: usize,
    present: usize,
) -> anyhow::Result<Option<BasicGetMessage>> {
    if seen >= present.min(MAX_MESSAGES) {
        return Ok(None);
    }
    let queue = route.dead_letter_queue();
    channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .with_context(|| format!("reading {queue}"))
}

impl Selection {
    fn takes(&self, message_id: Option<&str>) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => message_id.is_some_and(|id| ids.iter().any(|wanted| wanted == id)),
        }
    }
}

/// The original headers without the failure's, and attempt 1 again.
fn fresh_headers(message: &BasicGetMessage) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(original) = message.delivery.properties.headers() {
        for (name, value) in original.inner() {
            if !name.as_str().starts_with(HEADER_PREFIX) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers.insert(ATTEMPT_HEADER.into(), amqp::text("1"));
    headers
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let properties = &message.delivery.properties;
    let headers = amqp::headers_as_text(properties.headers().as_ref());
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let age = header("x-passerelle-dead-lettered-at")
        .and_then(|at| at.parse::<u64>().ok())
        .and_then(|at| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(Duration::from_secs(now.saturating_sub(at)))
        });
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        reason: header("x-passerelle-reason").unwrap_or_else(|| "(no reason recorded)".into()),
        attempts: header(ATTEMPT_HEADER).unwrap_or_else(|| "?".into()),
        version: header(amqp::VERSION_HEADER).unwrap_or_else(|| "?".into()),
        http_status: header("x-passerelle-http-status"),
        age,
    }
}
