//! The transform's cost alone, without broker or HTTP: the native
//! service's mapping (`passerelle-bench-native map`) against the shipped
//! crm-to-shop component run through the host's `Runtime` (a fresh
//! instance per message) with the pooling allocator `passerelle run`
//! uses and with the on-demand one of the one-off commands. What the
//! sandbox adds is the difference.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use passerelle::config::Config;
use passerelle::routes;
use passerelle::runtime::{Message, RouteContext, Runtime, Transform};

use crate::broker::account;
use crate::median;

/// Messages per measurement of the component (after as many to warm up).
const COMPONENT_RUNS: u32 = 3000;
const NATIVE_RUNS: u32 = 200_000;

/// Nanoseconds per message, medians over the rounds.
pub struct TransformCost {
    pub native_ns: f64,
    pub pooled_ns: f64,
    pub on_demand_ns: f64,
}

pub async fn measure(native: &Path, config: &Config, rounds: usize) -> anyhow::Result<TransformCost> {
    let route = config.route("crm-to-shop")?;
    let context = routes::context_for(route);
    let bytes = std::fs::read(&route.transform)?;
    let pooled = Runtime::pooled(routes::pool_size(config))?;
    let on_demand = Runtime::new()?;
    let (pooled_transform, on_demand_transform) = (pooled.load(&bytes)?, on_demand.load(&bytes)?);
    let (mut native_ns, mut pooled_ns, mut on_demand_ns) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        native_ns.push(native_mapping(native).await?);
        pooled_ns.push(component(&pooled, &pooled_transform, &context).await?);
        on_demand_ns.push(component(&on_demand, &on_demand_transform, &context).await?);
        println!(
            "transform {round}: native mapping {:>7.0} ns, component pooled {:>7.0} ns, on demand {:>7.0} ns",
            native_ns[round - 1],
            pooled_ns[round - 1],
            on_demand_ns[round - 1]
        );
    }
    Ok(TransformCost {
        native_ns: median(native_ns),
        pooled_ns: median(pooled_ns),
        on_demand_ns: median(on_demand_ns),
    })
}

async fn native_mapping(native: &Path) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new(native)
        .args(["map", &NATIVE_RUNS.to_string()])
        .output()
        .await?;
    ensure!(output.status.success(), "{} map failed", native.display());
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("{} map printed {text:?}", native.display()))
}

/// Mean time of `Runtime::run` (a fresh instance each time), one task.
async fn component(runtime: &Runtime, transform: &Transform, context: &RouteContext) -> anyhow::Result<f64> {
    let message = Message {
        body: account(11).into_bytes(),
        content_type: Some("application/json".into()),
        routing_key: "account.updated".into(),
        message_id: Some("msg-11".into()),
        attempt: 1,
        ..Default::default()
    };
    let timed = async || -> anyhow::Result<f64> {
        let started = Instant::now();
        for _ in 0..COMPONENT_RUNS {
            let actions = runtime.run(transform, context, &message).await?;
            ensure!(actions.len() == 1, "crm-to-shop gave {actions:?}");
        }
        Ok(started.elapsed().as_nanos() as f64 / f64::from(COMPONENT_RUNS))
    };
    timed().await?; // warm-up
    timed().await
}
