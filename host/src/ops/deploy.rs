//! A route's transform on every host at once: `deploy` checks a component
//! here first (world, fixtures: a bad one is published nowhere), then
//! publishes it on the control exchange, signed with the fleet's key;
//! `rollback` publishes again the version deployed before the current one,
//! once its old signature checked out, signed anew.

use std::sync::Arc;

use anyhow::{Context as _, anyhow};

use crate::amqp;
use crate::config::Config;
use crate::config::Unsigned;
use crate::reload::fleet::{Deployment, Trust};
use crate::reload::signature::DeploySigner;
use crate::reload::{self, Refusal, fleet};
use crate::routes::context_for;
use crate::runtime::Runtime;
use crate::version::Version;

/// Checks a component for a route as every host will (world, fixtures),
/// then publishes it to all of them. The inner error is the refusal.
pub async fn deploy(
    config: &Config,
    runtime: &Runtime,
    route_name: &str,
    component: Vec<u8>,
    fixtures: Option<String>,
) -> anyhow::Result<Result<Version, Refusal>> {
    let route = config.route(route_name)?;
    let signer = signer(config)?;
    if let Err(refusal) = reload::validate(runtime, component.clone(), &context_for(route), fixtures.as_deref()).await {
        return Ok(Err(refusal));
    }
    let deployment = Deployment::new(route_name, component, fixtures, signer);
    publish_deployment(config, &deployment, signer).await?;
    Ok(Ok(deployment.version))
}

/// The fleet's signing key, or None where deploys go unsigned
/// (`fleet.unsigned: allow`). `Config::load_for_deploy` has read it.
pub fn signer(config: &Config) -> anyhow::Result<Option<&DeploySigner>> {
    match (&config.fleet.signer, config.fleet.unsigned) {
        (Some(signer), _) => Ok(Some(signer)),
        (None, Unsigned::Allow) => Ok(None),
        (None, Unsigned::Refuse) => {
            let variable = config
                .fleet
                .signing_key_env
                .as_deref()
                .unwrap_or("(fleet.signing_key_env)");
            Err(anyhow!(
                "no fleet signing key here: deploys are signed, and {variable} is not set \
                 (fleet.signing_key_env; or fleet.unsigned: allow)"
            ))
        }
    }
}

/// What a rollback may republish: what this key signed (hosts would refuse
/// anything else anyway), or anything when deploys go unsigned.
fn rollback_trust(config: &Config) -> anyhow::Result<Trust> {
    Ok(match signer(config)? {
        Some(signer) => Trust::Signed(signer.verifier()),
        None => Trust::Unsigned,
    })
}

/// Publishes again the latest deployed version that differs from the
/// current one. Returns (from, to).
pub async fn rollback(config: &Config, runtime: &Runtime, route_name: &str) -> anyhow::Result<(Version, Version)> {
    config.route(route_name)?;
    let trust = rollback_trust(config)?;
    let connection = amqp::connect_first(&config.amqp.urls, "passerelle-rollback").await?;
    let history = fleet::history(&connection, &config.amqp.control_exchange, route_name).await?;
    let _ = connection.close(200, "read".into()).await;
    // Entries the key did not sign are skipped: a rollback must never
    // sign what someone with broker access slipped into the history.
    let history: Vec<Deployment> = history
        .into_iter()
        .filter(|deployment| trust.admit(deployment).is_ok())
        .collect();
    let current = history
        .last()
        .ok_or_else(|| anyhow!("route {route_name} has no signed deploy to roll back"))?
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

async fn publish_deployment(
    config: &Config,
    deployment: &Deployment,
    signer: Option<&DeploySigner>,
) -> anyhow::Result<()> {
    let connection = Arc::new(amqp::connect_first(&config.amqp.urls, "passerelle-deploy").await?);
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
        let baseline = baseline(config, &deployment.route, signer)?;
        fleet::record(&connection, exchange, &baseline).await?;
    }
    let published = fleet::publish(&connection, exchange, deployment).await;
    let _ = connection.close(200, "deployed".into()).await;
    published
}

fn baseline(config: &Config, route_name: &str, signer: Option<&DeploySigner>) -> anyhow::Result<Deployment> {
    let path = &config.route(route_name)?.transform;
    let component = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let fixtures = reload::fixtures_beside(path).map_err(anyhow::Error::msg)?;
    Ok(Deployment::new(route_name, component, fixtures, signer))
}
