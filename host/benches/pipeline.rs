//! Throughput of the whole pipeline against a bare consumer, in one run.
//!
//! - bare: a lapin consumer (prefetch 16, manual ack) that only acks;
//! - pipeline: the real host in process (`service::run`) with the shipped
//!   crm-to-shop transform, concurrency 16, calling a minimal HTTP server
//!   started here (it answers 200 and counts);
//! - pipeline + shadow: the same, with a shadow of the same component
//!   beside it (the worst case of an equal-cost candidate): what a shadow
//!   costs the live path, and how much of the traffic it compared;
//! - hand-off: the live path's part of a shadow (`ShadowSlot::offer`), per
//!   message: a clone into the bounded queue, or a skip once it is full;
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
use passerelle::shadow::{self, Candidate};
use passerelle::stats::Stats;

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

    let (mut bare, mut piped, mut shadowed, mut dead_letters) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 1..=rounds {
        let rate = bare_round(broker, n, round).await?;
        println!("round {round}: bare     {rate:>9.0} msg/s");
        bare.push(rate);

        for with_shadow in [false, true] {
            let (rate, dead, compared) =
                pipeline_round(broker, &config, &runtime, &server, n, round, with_shadow).await?;
            let mut note = match dead {
                0 => String::new(),
                _ => format!("  ({dead} dead-lettered, see the warnings above)"),
            };
            if let Some((compared, skipped)) = compared {
                note += &format!("  (shadow: {compared} compared, {skipped} skipped)");
            }
            let name = if with_shadow { "+ shadow" } else { "pipeline" };
            println!("round {round}: {name} {rate:>9.0} msg/s{note}");
            if with_shadow { &mut shadowed } else { &mut piped }.push(rate);
            dead_letters += dead;
        }
    }
    let (queued_ns, skipped_ns) = hand_off(&config, &runtime, wasm, 100_000).await?;
    let (transform_ns, transform_failed) = transform_only(&runtime, route, wasm, n.min(2000)).await?;
    let (on_demand_ns, _) = transform_only(&Runtime::new()?, route, wasm, n.min(2000)).await?;

    let (bare, piped, shadowed) = (median(bare), median(piped), median(shadowed));
    println!();
    println!("median over {rounds} round(s) of {n} messages");
    println!("  bare lapin consumer (ack only)   {bare:>9.0} msg/s");
    println!("  pipeline (transform + HTTP PUT)  {piped:>9.0} msg/s");
    println!("  ratio bare / pipeline            {:>9.1}x", bare / piped);
    println!(
        "  pipeline with a shadow           {shadowed:>9.0} msg/s ({:+.1}% against without)",
        (shadowed / piped - 1.0) * 100.0
    );
    println!(
        "  shadow hand-off, queued          {queued_ns:>9.0} ns/msg (the live path's cost while the candidate keeps up)"
    );
    println!("  shadow hand-off, skipped         {skipped_ns:>9.0} ns/msg (once the candidate is behind)");
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

/// Publishes, then runs the real host (with a shadow of the same component
/// when `with_shadow`) until every message reached the server or the
/// dead-letter queue. Returns msg/s, the dead-lettered count, and what the
/// shadow compared and skipped.
async fn pipeline_round(
    broker: &Broker,
    config: &Config,
    runtime: &Runtime,
    server: &Server,
    n: usize,
    round: usize,
    with_shadow: bool,
) -> anyhow::Result<(f64, usize, Option<(u64, u64)>)> {
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
    let shadow = match with_shadow {
        true => Some(start_shadow(measured(&loaded)?, runtime, &std::fs::read(&route.transform)?).await?),
        false => None,
    };
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
    let compared = shadow.map(|shadow| {
        let tally = shadow.report(&shadow.version).tally;
        (tally.compared, tally.skipped)
    });
    Ok((n as f64 / elapsed.as_secs_f64(), dead, compared))
}

async fn start_shadow(
    route: &routes::RouteHandle,
    runtime: &Runtime,
    bytes: &[u8],
) -> anyhow::Result<std::sync::Arc<shadow::Shadow>> {
    let candidate = Candidate {
        bytes: bytes.to_vec(),
        fixtures: None,
    };
    Ok(shadow::start(route, runtime, std::sync::Arc::new(Stats::default()), candidate).await?)
}

/// Mean time of the live path's hand-off to a running shadow: the first
/// `QUEUE_CAPACITY` offers find room (a clone into the queue), the next
/// `n` mostly find it full (one more skip counted). Returns both, in ns.
async fn hand_off(config: &Config, runtime: &Runtime, wasm: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let loaded = routes::load(config, runtime).await?;
    let route = measured(&loaded)?;
    let shadow = start_shadow(route, runtime, &std::fs::read(wasm)?).await?;
    let transform = route.slot.current();
    let message = account_message();
    let live = runtime.run(&transform, &route.context, &message).await;
    let mean_ns = |count: usize| {
        let started = Instant::now();
        for _ in 0..count {
            route.shadow.offer(&message, &live, &transform.version);
        }
        started.elapsed().as_nanos() as f64 / count as f64
    };
    let queued = mean_ns(shadow::QUEUE_CAPACITY);
    let skipping = mean_ns(n);
    let tally = shadow.report(&transform.version).tally;
    println!(
        "hand-off: {} offered, {} compared so far, {} skipped",
        shadow::QUEUE_CAPACITY + n,
        tally.compared,
        tally.skipped
    );
    Ok((queued, skipping))
}

fn measured(loaded: &[std::sync::Arc<routes::RouteHandle>]) -> anyhow::Result<&routes::RouteHandle> {
    loaded
        .iter()
        .find(|route| route.name == ROUTE)
        .map(|route| &**route)
        .ok_or_else(|| anyhow!("no route {ROUTE}"))
}

fn account_message() -> Message {
    Message {
        body: ACCOUNT.as_bytes().to_vec(),
        content_type: Some("application/json".into()),
        routing_key: "account.updated".into(),
        message_id: Some("msg-11".into()),
        attempt: 1,
        ..Default::default()
    }
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
    let message = account_message();
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
