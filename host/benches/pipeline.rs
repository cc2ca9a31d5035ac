//! Throughput of the whole pipeline against a bare consumer, in one run.
//!
//! - bare: a lapin consumer (prefetch 16, manual ack) that only acks;
//! - pipeline: the real host in process (`service::run`) with the shipped
//!   crm-to-shop transform, concurrency 16, calling a minimal HTTP server
//!   started here (it answers 200 and counts);
//! - transform: `Runtime::run` alone in a loop, one task, a fresh instance
//!   per message (where the pipeline's time goes, without broker or HTTP),
//!   with the pooling allocator `run` uses and with the on-demand one.
//!
//! Each round publishes N copies of the design doc's CRM account (Ids
//! gg-0.., distinct message ids, persistent, publisher confirms) to a
//! durable queue, then times from the start of the consumer (connection
//! included, for both) until the N-th ack (bare) or the N-th HTTP request
//! with the queue empty (pipeline). Phases alternate; medians are printed
//! with the ratio bare / pipeline.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 and `scripts/build-transforms`:
//!
//!     cargo bench -p passerelle --bench pipeline
//!
//! `PASSERELLE_BENCH_MESSAGES` (default 5000) and `PASSERELLE_BENCH_ROUNDS`
//! (default 3) change the size. Broker objects carry a random suffix and are
//! deleted at the end, also after an error.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use common::{ACCOUNT, AMQP_URL, Broker, CONCURRENCY, ROUTE, Server, env_number, median, pipeline_config};
use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use passerelle::config::Config;
use passerelle::host::Host;
use passerelle::routes;
use passerelle::runtime::{Message, Runtime};

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let messages = env_number("PASSERELLE_BENCH_MESSAGES", 5000)?;
    let rounds = env_number("PASSERELLE_BENCH_ROUNDS", 3)?;
    tokio::runtime::Runtime::new()?.block_on(bench(messages, rounds))
}

async fn bench(messages: usize, rounds: usize) -> anyhow::Result<()> {
    let wasm = common::shipped_transform()?;
    let broker = Broker::connect().await?;
    let result = run_rounds(&broker, &wasm, messages, rounds).await;
    broker.clean_up().await;
    result
}

async fn run_rounds(broker: &Broker, wasm: &Path, n: usize, rounds: usize) -> anyhow::Result<()> {
    let server = Server::start().await?;
    let config = pipeline_config(broker, wasm, server.port)?;
    broker.owns(&config);
    // As `passerelle run` does: the pooling allocator, sized from the routes.
    let runtime = Runtime::pooled(routes::pool_size(&config))?;
    let route = &config.routes[ROUTE];
    println!("passerelle pipeline bench: {n} messages, {rounds} round(s), concurrency/prefetch {CONCURRENCY}");

    let (mut bare, mut piped, mut dead_letters) = (Vec::new(), Vec::new(), 0);
    for round in 1..=rounds {
        let rate = bare_round(broker, n, round).await?;
        println!("round {round}: bare     {rate:>9.0} msg/s");
        bare.push(rate);

        let (rate, dead) = pipeline_round(broker, &config, &runtime, &server, n, round).await?;
        let note = match dead {
            0 => String::new(),
            _ => format!("  ({dead} dead-lettered, see the warnings above)"),
        };
        println!("round {round}: pipeline {rate:>9.0} msg/s{note}");
        piped.push(rate);
        dead_letters += dead;
    }
    let (transform_ns, transform_failed) = transform_only(&runtime, route, wasm, n.min(2000)).await?;
    let (on_demand_ns, _) = transform_only(&Runtime::new()?, route, wasm, n.min(2000)).await?;

    let (bare, piped) = (median(bare), median(piped));
    println!();
    println!("median over {rounds} round(s) of {n} messages");
    println!("  bare lapin consumer (ack only)   {bare:>9.0} msg/s");
    println!("  pipeline (transform + HTTP PUT)  {piped:>9.0} msg/s");
    println!("  ratio bare / pipeline            {:>9.1}x", bare / piped);
    if dead_letters > 0 {
        println!("  pipeline dead-lettered {dead_letters} of {} messages", n * rounds);
    }
    println!(
        "  transform only, fresh instance   {:>9.0} ns/msg ({:.0} msg/s on one task), pooling allocator",
        transform_ns,
        1e9 / transform_ns
    );
    println!(
        "  transform only, fresh instance   {on_demand_ns:>9.0} ns/msg, on-demand allocator ({:.1}x the pooled)",
        on_demand_ns / transform_ns
    );
    if transform_failed > 0 {
        println!("  transform only: {transform_failed} of {} runs failed", n.min(2000));
    }
    Ok(())
}

/// Publishes, then acks everything with a plain consumer.
async fn bare_round(broker: &Broker, n: usize, round: usize) -> anyhow::Result<f64> {
    let queue = broker.name("bare");
    broker.declare_queue(&queue).await?;
    broker.publish(&queue, n, &format!("bare-{round}")).await?;

    let started = Instant::now();
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(CONCURRENCY, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(60), deliveries.next())
            .await
            .context("bare consumer: no delivery for 60s")?
            .context("bare consumer: stream ended")??;
        delivery.ack(Default::default()).await?;
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "round done".into()).await;
    ensure!(broker.depth(&queue).await? == 0, "bare queue not empty after {n} acks");
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Publishes, then runs the real host until every message reached the
/// server or the dead-letter queue. Returns msg/s and the dead-lettered count.
async fn pipeline_round(
    broker: &Broker,
    config: &Config,
    runtime: &Runtime,
    server: &Server,
    n: usize,
    round: usize,
) -> anyhow::Result<(f64, usize)> {
    let route = &config.routes[ROUTE];
    let (queue, dlq) = (route.queue.as_str(), route.dead_letter_queue());
    // The host's own topology declaration, so that messages wait for it.
    passerelle::amqp::declare_topology(&broker.channel, route).await?;
    broker
        .channel
        .queue_purge(dlq.as_str().into(), Default::default())
        .await?;
    broker.publish(queue, n, &format!("pipeline-{round}")).await?;
    let loaded = routes::load(config, runtime).await?;
    server.expect(n);

    let started = Instant::now();
    let host = Host::start_loaded(config.clone(), runtime.clone(), loaded).await?;
    // The N-th request wakes this at once; dead letters are noticed within 100ms.
    let finished = tokio::time::timeout(Duration::from_secs(30) + n as u32 * Duration::from_millis(10), async {
        loop {
            tokio::select! {
                _ = server.reached() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let dead = broker.depth(&dlq).await? as usize;
            if server.count() + dead >= n && broker.depth(queue).await? == 0 {
                return anyhow::Ok(dead);
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    host.shutdown_token().cancel();
    host.wait().await?;

    let (received, left, dead) = (
        server.count(),
        broker.depth(queue).await?,
        broker.depth(&dlq).await? as usize,
    );
    let summary = format!("{received}/{n} HTTP calls, {left} left in the queue, {dead} dead-lettered");
    let dead = finished.map_err(|_| anyhow!("pipeline stalled: {summary}"))??;
    ensure!(received + dead == n && left == 0, "pipeline: {summary}");
    Ok((n as f64 / elapsed.as_secs_f64(), dead))
}

/// Mean time of `Runtime::run` (fresh instance each time), one task, and
/// how many runs failed.
async fn transform_only(
    runtime: &Runtime,
    route: &passerelle::config::Route,
    wasm: &Path,
    n: usize,
) -> anyhow::Result<(f64, usize)> {
    let transform = runtime.load(&std::fs::read(wasm)?)?;
    let context = routes::context_for(route);
    let message = Message {
        body: ACCOUNT.as_bytes().to_vec(),
        content_type: Some("application/json".into()),
        routing_key: "account.updated".into(),
        message_id: Some("msg-11".into()),
        attempt: 1,
        ..Default::default()
    };
    // Failures (a time limit hit under load, say) are counted, not fatal.
    let timed = async || -> anyhow::Result<(Duration, usize)> {
        let (started, mut failed) = (Instant::now(), 0);
        for _ in 0..n {
            match runtime.run(&transform, &context, &message).await {
                Ok(actions) => ensure!(actions.len() == 1, "transform: {actions:?}"),
                Err(failure) => {
                    eprintln!("transform only: {failure}");
                    failed += 1;
                }
            }
        }
        Ok((started.elapsed(), failed))
    };
    timed().await?; // warm-up
    let (elapsed, failed) = timed().await?;
    Ok((elapsed.as_nanos() as f64 / n as f64, failed))
}
