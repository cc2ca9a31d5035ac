//! A route's transform on every host at once: `deploy` checks a component
//! here first (world, fixtures: a bad one is published nowhere), then
//! publishes it on the control exchange; `rollback` publishes again the
//! version deployed before the current one.

use std::sync::Arc;

use anyhow::{Context as _, anyhow};

use crate::amqp;
use crate::config::Config;
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
    if let Err(refusal) = reload::validate(runtime, component.clone(), &context_for(route), fixtures.as_deref()).await {
        return Ok(Err(refusal));
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
    config.route(route_name)?;
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
    let path = &config.route(route_name)?.transform;
    let component = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let fixtures = reload::fixtures_beside(path).map_err(anyhow::Error::msg)?;
    Ok(fleet::Deployment {
        route: route_name.to_string(),
        version: Version::of(&component),
        component,
        fixtures,
    })
}
