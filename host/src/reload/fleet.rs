//! Fleet-wide deploys through the broker. `passerelle deploy` publishes a
//! component on a durable control exchange (with publisher confirms);
//! every running host validates it like a changed file, stores it
//! atomically where its route reads it, and swaps. Each route keeps a short
//! deploy history in a durable queue, so that a host started later takes
//! the latest deployed version before it consumes, and `rollback` can
//! publish the one before. A host installs only what its `Trust` admits
//! (a deploy the fleet's key signed, checked before anything else), so
//! publishing to the broker is not enough to push code to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio_util::sync::CancellationToken;

use super::signature::{BadSignature, DeploySigner, DeployVerifier};
use super::{Origin, Reloader};
use crate::amqp::{Publisher, headers};
use crate::config::{Fleet, Unsigned};
use crate::routes::RouteHandle;
use crate::version::Version;

/// Deploys kept per route: enough to roll back, small enough to read at start.
const HISTORY_LENGTH: i32 = 10;

/// One deployed component, as the control exchange carries it.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub route: String,
    pub version: Version,
    pub component: Vec<u8>,
    pub fixtures: Option<String>,
    /// Of route, component and fixtures, by the fleet's key (base64).
    pub signature: Option<String>,
    /// Who published it, as the broker delivered it (user and app ids),
    /// for logs; empty for a deployment made here.
    pub sender: String,
}

impl Deployment {
    /// A deployment to publish, signed when there is a key.
    pub fn new(route: &str, component: Vec<u8>, fixtures: Option<String>, signer: Option<&DeploySigner>) -> Self {
        Self {
            route: route.to_string(),
            version: Version::of(&component),
            signature: signer.map(|signer| signer.sign(route, &component, fixtures.as_deref())),
            component,
            fixtures,
            sender: String::new(),
        }
    }
}

/// Which deploys a host installs: the configuration's `fleet:` section.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those the fleet's key signed (`fleet.verify_key`).
    Signed(DeployVerifier),
    /// Any (`fleet.unsigned: allow`).
    Unsigned,
    /// None: no key, and no opt-out.
    Nothing,
}

/// Why a deploy was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Distrust {
    #[error("{0}")]
    Signature(#[from] BadSignature),
    #[error("this host accepts no deploys: it has no fleet.verify_key (nor fleet.unsigned: allow)")]
    NoKey,
}

impl Distrust {
    /// The `reason` label of `passerelle_fleet_deploys_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Signature(BadSignature::Missing) => "unsigned",
            Self::Signature(_) => "bad_signature",
            Self::NoKey => "no_key",
        }
    }
}

impl Trust {
    pub fn of(fleet: &Fleet) -> Self {
        match (&fleet.verifier, fleet.unsigned) {
            (Some(verifier), _) => Self::Signed(verifier.clone()),
            (None, Unsigned::Allow) => Self::Unsigned,
            (None, Unsigned::Refuse) => Self::Nothing,
        }
    }

    /// Whether a deployment may be installed (or republished by a
    /// rollback). Nothing of it is read before this says yes.
    pub fn admit(&self, deployment: &Deployment) -> Result<(), Distrust> {
        match self {
            Self::Signed(verifier) => Ok(verifier.verify(
                &deployment.route,
                &deployment.component,
                deployment.fixtures.as_deref(),
                deployment.signature.as_deref(),
            )?),
            Self::Unsigned => Ok(()),
            Self::Nothing => Err(Distrust::NoKey),
        }
    }
}

fn routing_key(route: &str) -> String {
    format!("deploy.{route}")
}

pub fn history_queue(control_exchange: &str, route: &str) -> String {
    format!("{control_exchange}.history.{route}")
}

/// Declares the control exchange and each route's history queue.
pub async fn declare(channel: &Channel, control_exchange: &str, routes: &[String]) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            control_exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring the control exchange {control_exchange}"))?;
    for route in routes {
        let queue = history_queue(control_exchange, route);
        let mut arguments = FieldTable::default();
        // The oldest deploy falls off the head as a new one arrives.
        arguments.insert("x-max-length".into(), AMQPValue::LongInt(HISTORY_LENGTH));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await
            .with_context(|| format!("declaring the deploy history {queue}"))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                control_exchange.into(),
                routing_key(route).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding the deploy history {queue}"))?;
    }
    Ok(())
}

/// Publishes a deployment to every host (and the route's history);
/// returns once the broker confirmed it.
pub async fn publish(
    connection: &Arc<Connection>,
    control_exchange: &str,
    deployment: &Deployment,
) -> anyhow::Result<()> {
    let key = routing_key(&deployment.route);
    send(connection, control_exchange, &key, deployment).await
}

/// Adds a deployment to the route's history only: no host swaps.
pub async fn record(
    connection: &Arc<Connection>,
    control_exchange: &str,
    deployment: &Deployment,
) -> anyhow::Result<()> {
    let queue = history_queue(control_exchange, &deployment.route);
    send(connection, "", &queue, deployment).await
}

async fn send(
    connection: &Arc<Connection>,
    exchange: &str,
    routing_key: &str,
    deployment: &Deployment,
) -> anyhow::Result<()> {
    let mut table = FieldTable::default();
    headers::set(&mut table, headers::ROUTE, &deployment.route);
    headers::set_version(&mut table, deployment.version.as_str());
    if let Some(fixtures) = &deployment.fixtures {
        headers::set(&mut table, headers::FIXTURES, fixtures);
    }
    if let Some(signature) = &deployment.signature {
        headers::set(&mut table, headers::SIGNATURE, signature);
    }
    let properties = BasicProperties::default()
        .with_content_type("application/wasm".into())
        .with_app_id("passerelle deploy".into())
        .with_headers(table);
    let publisher = Publisher::new(connection.clone());
    let published = publisher
        .publish(exchange, routing_key, &deployment.component, properties)
        .await;
    publisher.close().await;
    published
}

/// A route's deploys, oldest first. They stay in the queue.
pub async fn history(connection: &Connection, control_exchange: &str, route: &str) -> anyhow::Result<Vec<Deployment>> {
    let channel = connection.create_channel().await?;
    let queue = history_queue(control_exchange, route);
    let mut deployments = Vec::new();
    while deployments.len() < HISTORY_LENGTH as usize {
        let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading the deploy history {queue}"))?
        else {
            break;
        };
        deployments.push(deployment_of(
            route,
            &message.delivery.properties,
            message.delivery.data.clone(),
        ));
    }
    // Closing the channel returns them all, in order.
    let _ = channel.close(200, "history read".into()).await;
    Ok(deployments)
}

/// A deployment as received. The route is the one it was delivered for
/// (routing key or history queue), which its signature must cover: the
/// route header is not trusted.
fn deployment_of(route: &str, properties: &BasicProperties, component: Vec<u8>) -> Deployment {
    let table = properties.headers().as_ref();
    Deployment {
        route: route.to_string(),
        version: Version::of(&component),
        component,
        fixtures: headers::get(table, headers::FIXTURES),
        signature: headers::get(table, headers::SIGNATURE),
        sender: sender_of(properties),
    }
}

/// The publisher's user id (which RabbitMQ checks against the connection's
/// user) and app id, quoted: they come from whoever published.
fn sender_of(properties: &BasicProperties) -> String {
    let named = [("user", properties.user_id()), ("app", properties.app_id())]
        .into_iter()
        .filter_map(|(what, id)| Some(format!("{what} {:?}", id.as_ref()?.as_str())))
        .collect::<Vec<_>>();
    if named.is_empty() {
        return "an unnamed publisher".into();
    }
    named.join(", ")
}

/// The last deploy this process saw per route. A reconnect applies only
/// deploys it missed, so it never undoes a later change of the local file.
pub type DeploysSeen = Arc<std::sync::Mutex<BTreeMap<String, Version>>>;

fn first_sight(seen: &DeploysSeen, deployment: &Deployment) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.insert(deployment.route.clone(), deployment.version.clone())
        .as_ref()
        != Some(&deployment.version)
}

/// The newest deployment `trust` admits, and those after it it refused.
pub fn latest_admitted(history: Vec<Deployment>, trust: &Trust) -> (Option<Deployment>, Vec<(Deployment, Distrust)>) {
    let mut refused = Vec::new();
    for deployment in history.into_iter().rev() {
        match trust.admit(&deployment) {
            Ok(()) => return (Some(deployment), refused),
            Err(distrust) => refused.push((deployment, distrust)),
        }
    }
    (None, refused)
}

/// Brings every route to its latest admitted deployed version, unless this
/// process already saw that deploy. Called before consuming.
pub async fn apply_latest(
    connection: &Connection,
    control_exchange: &str,
    routes: &[Arc<RouteHandle>],
    reloader: &Reloader,
    trust: &Trust,
    seen: &DeploysSeen,
) -> anyhow::Result<()> {
    for route in routes {
        let history = history(connection, control_exchange, &route.name).await?;
        let (latest, refused) = latest_admitted(history, trust);
        for (deployment, distrust) in refused {
            refuse(reloader, route, &deployment, &distrust);
        }
        if let Some(latest) = latest
            && first_sight(seen, &latest)
        {
            install(reloader, route, latest, Origin::LatestDeploy).await;
        }
    }
    Ok(())
}

/// Consumes deploys for this host's routes until `shutdown` or until the
/// connection fails.
pub async fn listen(
    connection: Arc<Connection>,
    control_exchange: String,
    routes: Vec<Arc<RouteHandle>>,
    reloader: Reloader,
    trust: Trust,
    seen: DeploysSeen,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    // A queue of this host's own, gone with its connection.
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await?;
    for route in &routes {
        channel
            .queue_bind(
                queue.name().clone(),
                control_exchange.as_str().into(),
                routing_key(&route.name).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut deploys = channel
        .basic_consume(
            queue.name().clone(),
            "passerelle-deploys".into(),
            consume,
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = deploys.next() => match next {
                Some(delivery) => delivery?,
                None => return Err(anyhow!("the broker cancelled the deploy consumer")),
            },
        };
        // Auto-acked (no_ack): a refused deploy is gone, not redelivered.
        let route = delivery.routing_key.as_str().trim_start_matches("deploy.").to_string();
        let Some(handle) = routes.iter().find(|handle| handle.name == route) else {
            tracing::debug!(
                "ignored a control message with routing key {:?}",
                delivery.routing_key.as_str()
            );
            continue;
        };
        let deployment = deployment_of(&route, &delivery.properties, delivery.data);
        if let Err(distrust) = trust.admit(&deployment) {
            refuse(&reloader, handle, &deployment, &distrust);
            continue;
        }
        first_sight(&seen, &deployment);
        install(&reloader, handle, deployment, Origin::Deploy).await;
    }
}

/// Logs and counts a deploy that was not admitted: the route keeps its
/// version, and nothing of the deploy was compiled or stored.
fn refuse(reloader: &Reloader, route: &RouteHandle, deployment: &Deployment, distrust: &Distrust) {
    reloader.stats.fleet_deploy_refused(&route.name, distrust.label());
    let current = route.slot.current().version.clone();
    let (version, size) = (&deployment.version, deployment.component.len());
    tracing::warn!(
        route = %route.name, current = %current, refused = %version, reason = distrust.label(),
        "refused deploy of {version} to route {} ({size} bytes, from {}): {distrust}; {current} keeps serving",
        route.name, deployment.sender
    );
}

/// Validates a deployment and swaps it in (`try_swap` stores it where the
/// route reads its component).
async fn install(reloader: &Reloader, route: &RouteHandle, deployment: Deployment, origin: fn(Version) -> Origin) {
    if deployment.version == route.slot.current().version {
        return;
    }
    let origin = origin(deployment.version.clone());
    let fixtures = deployment.fixtures.as_deref();
    if reloader
        .try_swap(route, deployment.component.clone(), fixtures, origin)
        .await
        .is_err()
    {
        return;
    }
    reloader.stats.fleet_deploy_applied(&route.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(signer: Option<&DeploySigner>) -> Deployment {
        Deployment::new("crm-to-shop", b"component".to_vec(), None, signer)
    }

    #[test]
    fn trust_follows_the_fleet_section() {
        let signer = DeploySigner::generate();
        let keyed = Fleet {
            verifier: Some(signer.verifier()),
            ..Fleet::default()
        };
        let open = Fleet {
            unsigned: Unsigned::Allow,
            ..Fleet::default()
        };
        let label = |trust: &Trust, deployment| trust.admit(&deployment).map_err(|distrust| distrust.label());

        let signed = Trust::of(&keyed);
        assert_eq!(label(&signed, deployment(Some(&signer))), Ok(()));
        assert_eq!(label(&signed, deployment(None)), Err("unsigned"));
        let other = DeploySigner::generate();
        assert_eq!(label(&signed, deployment(Some(&other))), Err("bad_signature"));

        let unsigned = Trust::of(&open);
        assert_eq!(label(&unsigned, deployment(None)), Ok(()));

        let nothing = Trust::of(&Fleet::default());
        assert_eq!(label(&nothing, deployment(Some(&signer))), Err("no_key"));
    }

    #[test]
    fn the_newest_admitted_deploy_wins_and_newer_refused_ones_are_reported() {
        let signer = DeploySigner::generate();
        let trust = Trust::Signed(signer.verifier());
        let old = Deployment::new("r", b"old".to_vec(), None, Some(&signer));
        let good = Deployment::new("r", b"good".to_vec(), None, Some(&signer));
        let intruder = Deployment::new("r", b"intruder".to_vec(), None, None);
        let (latest, refused) = latest_admitted(vec![old, good.clone(), intruder.clone()], &trust);
        assert_eq!(latest.map(|d| d.version), Some(good.version));
        let refused: Vec<_> = refused.into_iter().map(|(d, _)| d.version).collect();
        assert_eq!(refused, [intruder.version]);
    }
}
