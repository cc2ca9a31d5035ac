//! What a hot reload costs, in one run:
//!
//! - compile: `Runtime::load` (compile and check against the world) of the
//!   shipped crm-to-shop transform, with no cache, and with the on-disk
//!   compile cache both cold (compile + store) and warm (the same bytes
//!   loaded a second time). Each round loads a new version (the shipped
//!   bytes plus a random custom section), so nothing is cached by accident.
//! - swap: the real host in process (`service::run` and
//!   `reload::watch_components`, compile cache on, like `passerelle run`)
//!   serves a steady stream (one confirmed message every 2 ms) to an HTTP
//!   server started here. Each round replaces the component file the way a
//!   deploy tool does (write beside it, then rename) with a new version and
//!   times until the first HTTP call whose `X-Passerelle-Transform-Version`
//!   is the new version. This includes the watcher's 250 ms debounce, the
//!   compile and the fixtures check.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (for the swap part) and
//! `scripts/build-transforms`:
//!
//!     cargo bench -p passerelle --bench reload
//!
//! `PASSERELLE_BENCH_ROUNDS` (default 5) changes the number of rounds.
//! Broker objects carry a random suffix and are deleted at the end, also
//! after an error.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::{Broker, ROUTE, Server, median};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;
use passerelle::host::Host;
use passerelle::reload;
use passerelle::runtime::{LoadError, Runtime, Transform};
use passerelle::version::Version;
use tokio_util::sync::CancellationToken;

const PUBLISH_EVERY: Duration = Duration::from_millis(2);
/// How long a new version may take to handle its first message.
const SWAP_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let rounds = common::env_number("PASSERELLE_BENCH_ROUNDS", 5)?;
    tokio::runtime::Runtime::new()?.block_on(bench(rounds))
}

async fn bench(rounds: usize) -> anyhow::Result<()> {
    let wasm = common::shipped_transform()?;
    let shipped = std::fs::read(&wasm)?;
    println!(
        "passerelle reload bench: {rounds} round(s), crm-to-shop.wasm ({} KiB)",
        shipped.len() / 1024
    );
    compile_rounds(&shipped, rounds)?;
    let broker = Broker::connect().await?;
    let result = swap_rounds(&broker, &wasm, &shipped, rounds).await;
    broker.clean_up().await;
    result
}

/// Prints the times of `Runtime::load`: no cache, cold cache, warm cache.
fn compile_rounds(shipped: &[u8], rounds: usize) -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let plain = Runtime::new()?;
    let cached = Runtime::new()?.with_cache(cache.path())?;
    let (mut fresh, mut stored, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let bytes = new_version(shipped);
        let (ms, _) = timed(|| plain.load(&bytes))?;
        fresh.push(ms);
        let (ms, first) = timed(|| cached.load(&bytes))?;
        ensure!(!first.from_cache, "a new version came from the cache");
        stored.push(ms);
        let (ms, second) = timed(|| cached.load(&bytes))?;
        ensure!(
            second.from_cache,
            "the second load of the same bytes did not come from the cache"
        );
        warm.push(ms);
        println!(
            "round {round}: compile {:>7.1} ms, compile + cache store {:>7.1} ms, from the cache {:>6.1} ms",
            fresh[round - 1],
            stored[round - 1],
            warm[round - 1]
        );
    }
    println!();
    println!("median over {rounds} round(s), Runtime::load of crm-to-shop (compile + world check)");
    println!("  no cache                         {:>9.1} ms", median(fresh));
    println!("  cold cache (compile + store)     {:>9.1} ms", median(stored));
    println!("  warm cache (same bytes again)    {:>9.1} ms", median(warm));
    println!();
    Ok(())
}

/// Milliseconds taken by `load`, and what it loaded.
fn timed(load: impl FnOnce() -> Result<Transform, LoadError>) -> anyhow::Result<(f64, Transform)> {
    let started = Instant::now();
    let transform = load()?;
    Ok((started.elapsed().as_secs_f64() * 1e3, transform))
}

/// Runs the host on a copy of the component and replaces it each round.
async fn swap_rounds(broker: &Broker, wasm: &Path, shipped: &[u8], rounds: usize) -> anyhow::Result<()> {
    let (dir, cache) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let component = dir.path().join("crm-to-shop.wasm");
    std::fs::write(&component, shipped)?;
    // The shipped fixtures come along: a swap checks them, as in production.
    let fixtures = reload::fixtures_path(wasm);
    if fixtures.is_file() {
        std::fs::copy(&fixtures, reload::fixtures_path(&component))?;
    }
    let server = Server::start().await?;
    let config = common::pipeline_config(broker, &component, server.port)?;
    broker.owns(&config);
    let route = &config.routes[ROUTE];
    // The host's own declaration, so that the stream can start at once.
    passerelle::amqp::declare_topology(&broker.channel, route).await?;
    let runtime = Runtime::pooled(passerelle::routes::pool_size(&config))?.with_cache(cache.path())?;
    let first = server.first_call_from(Version::of(shipped).as_str());

    let host = Host::start(config.clone(), runtime).await?;
    let shutdown = host.shutdown_token();
    let channel = broker.connection.create_channel().await?;
    let stream = tokio::spawn(publish_steadily(channel, route.queue.clone(), shutdown.clone()));

    let measured = async {
        tokio::time::timeout(SWAP_TIMEOUT, first)
            .await
            .with_context(|| format!("the host handled no message within {SWAP_TIMEOUT:?}"))??;
        swaps(&server, &component, shipped, rounds).await
    }
    .await;
    shutdown.cancel();
    let (published, served) = (stream.await, host.wait().await);
    served?;
    let published = published.context("the publisher panicked")??;
    let latencies = measured?;

    let dead = broker.depth(&route.dead_letter_queue()).await?;
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let (min, max) = (latencies.iter().min().unwrap(), latencies.iter().max().unwrap());
    println!();
    println!("median over {rounds} swap(s), a message every {PUBLISH_EVERY:?} ({published} published)");
    println!(
        "  file replaced -> first call from the new version {:>7.1} ms (min {:.1}, max {:.1})",
        median(latencies.iter().map(ms).collect()),
        ms(min),
        ms(max)
    );
    println!("  (includes the watcher's 250 ms debounce, the compile, the cache store and the fixtures check)");
    if dead > 0 {
        println!("  {dead} message(s) dead-lettered, see the warnings above");
    }
    Ok(())
}

/// Each round: a new version replaces the file; the time until its first call.
async fn swaps(server: &Server, component: &Path, shipped: &[u8], rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for round in 1..=rounds {
        let bytes = new_version(shipped);
        let version = Version::of(&bytes);
        let first = server.first_call_from(version.as_str());
        let temporary = component.with_extension("incoming");
        std::fs::write(&temporary, &bytes)?;
        std::fs::rename(&temporary, component)?;
        let replaced = Instant::now();
        let arrived = tokio::time::timeout(SWAP_TIMEOUT, first)
            .await
            .with_context(|| format!("round {round}: no call from {version} within {SWAP_TIMEOUT:?}"))??;
        let latency = arrived.saturating_duration_since(replaced);
        println!(
            "round {round}: file replaced -> first call from {version} {:>7.1} ms",
            latency.as_secs_f64() * 1e3
        );
        latencies.push(latency);
    }
    Ok(latencies)
}

/// One account every `PUBLISH_EVERY` to `queue` until `stop`, each
/// confirmed (confirms are awaited alongside, not in turn). Returns how
/// many were published.
async fn publish_steadily(channel: Channel, queue: String, stop: CancellationToken) -> anyhow::Result<usize> {
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = FuturesUnordered::new();
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(confirmed) = pending.next() => confirmed?,
            _ = tick.tick() => {
                let confirm = common::publish_account(&channel, &queue, sent, "reload").await?;
                pending.push(common::confirmed(confirm, &queue));
                sent += 1;
            }
        }
    }
    while let Some(confirmed) = pending.next().await {
        confirmed?;
    }
    let _ = channel.close(200, "published".into()).await;
    Ok(sent)
}

/// A new version of the shipped bytes: the same code with a random custom
/// section, so a different content hash (as in tests/reload.rs).
fn new_version(shipped: &[u8]) -> Vec<u8> {
    let mut bytes = shipped.to_vec();
    let name = b"passerelle-bench";
    let payload = format!("{:032x}", rand::random::<u128>());
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8); // LEB128: one byte below 128
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}
