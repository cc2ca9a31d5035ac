//! Throughput of the whole pipeline against a bare consumer, in one run.
//!
//! - bare: a lapin consumer (prefetch 16, manual ack) that only acks;
//! - pipeline: the real host in process (`service::run`) with the shipped
//!   crm-to-shop transform, concurrency 16, calling a minimal HTTP server
//!   started here (it answers 200 and counts);
//! - transform: `Runtime::run` alone in a loop, one task, a fresh instance
//!   per message (where the pipeline's time goes, without broker or HTTP).
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

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use passerelle::config::Config;
use passerelle::pipeline::Pipeline;
use passerelle::runtime::{Message, Runtime};
use passerelle::service;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ROUTE: &str = "crm-to-shop";
const CONCURRENCY: u16 = 16;
const ACCOUNT: &str = r#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let messages = env_number("PASSERELLE_BENCH_MESSAGES", 5000)?;
    let rounds = env_number("PASSERELLE_BENCH_ROUNDS", 3)?;
    tokio::runtime::Runtime::new()?.block_on(bench(messages, rounds))
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow!("{name}={text:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

async fn bench(messages: usize, rounds: usize) -> anyhow::Result<()> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/transforms/crm-to-shop.wasm");
    ensure!(
        wasm.is_file(),
        "{} is missing: run scripts/build-transforms first",
        wasm.display()
    );
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .with_context(|| format!("RabbitMQ is not reachable at {AMQP_URL}: start it (scripts/ensure-rabbitmq)"))?;
    let broker = Broker {
        channel: connection.create_channel().await?,
        connection,
        suffix: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        to_delete: Mutex::default(),
    };
    let result = run_rounds(&broker, &wasm, messages, rounds).await;
    broker.clean_up().await;
    result
}

async fn run_rounds(broker: &Broker, wasm: &Path, n: usize, rounds: usize) -> anyhow::Result<()> {
    let server = Server::start().await?;
    let config = pipeline_config(broker, wasm, server.port)?;
    broker.owns(&config);
    let runtime = Runtime::new()?;
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
        "  transform only, fresh instance   {:>9.0} ns/msg ({:.0} msg/s on one task)",
        transform_ns,
        1e9 / transform_ns
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
    passerelle::amqp::declare_topology(&broker.channel, ROUTE, route).await?;
    broker
        .channel
        .queue_purge(dlq.as_str().into(), Default::default())
        .await?;
    broker.publish(queue, n, &format!("pipeline-{round}")).await?;
    let pipelines = service::load_pipelines(config, runtime).await?;
    server.expect(n);

    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let host = tokio::spawn({
        let (config, runtime, shutdown) = (config.clone(), runtime.clone(), shutdown.clone());
        async move { service::run(&config, &pipelines, &runtime, shutdown).await }
    });
    // The N-th request wakes this at once; dead letters are noticed within 100ms.
    let finished = tokio::time::timeout(Duration::from_secs(30) + n as u32 * Duration::from_millis(10), async {
        loop {
            tokio::select! {
                _ = server.state.reached.notified() => {}
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
    shutdown.cancel();
    host.await.context("the host panicked")??;

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
    let context = Pipeline::context_for(ROUTE, route);
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

/// The design doc's configuration, reduced to the route measured.
fn pipeline_config(broker: &Broker, wasm: &Path, port: u16) -> anyhow::Result<Config> {
    let yaml = format!(
        r#"
amqp:
  url: {AMQP_URL}
  shutdown_grace: 10s
  control_exchange: {control}
endpoints:
  shop:
    base_url: http://127.0.0.1:{port}/api/
    timeout: 5s
    operations:
      upsertBusiness:
        method: PUT
        uri: businesses/{{crmId}}
        parameters:
          crmId: {{ location: uri, required: true }}
          business: {{ location: json }}
          status: {{ location: json }}
          country: {{ location: json }}
routes:
  {ROUTE}:
    queue: {queue}
    bindings: [{{ exchange: {exchange}, routing_key: "account.*" }}]
    transform: {wasm}
    endpoints: [shop]
    config: {{ status_codes: '{{"CLIENT_ACTIVE": 70}}', country_ids: '{{"FR": 76}}' }}
    concurrency: {CONCURRENCY}
    limits: {{ time: 50ms, memory: 32MiB }}
"#,
        queue = broker.name("crm.account.changed"),
        exchange = broker.name("crm.events"),
        control = broker.name("control"),
        wasm = wasm.display(),
    );
    Ok(Config::parse(&yaml, "bench.yaml", Path::new("."))?)
}

/// The broker objects of this run, named `passerelle-bench.<base>.<suffix>`.
struct Broker {
    connection: Connection,
    channel: Channel,
    suffix: String,
    /// Queues and exchanges (`true`) to delete at the end.
    to_delete: Mutex<Vec<(String, bool)>>,
}

impl Broker {
    fn name(&self, base: &str) -> String {
        format!("passerelle-bench.{base}.{}", self.suffix)
    }

    /// Everything the host declares for `config`, to delete at the end.
    fn owns(&self, config: &Config) {
        let mut names = self.to_delete.lock().unwrap();
        let control = &config.amqp.control_exchange;
        names.push((control.clone(), true));
        for (name, route) in &config.routes {
            names.extend([&route.queue, &route.dead_letter_queue()].map(|q| (q.clone(), false)));
            names.extend(route.retry_queues().into_iter().map(|(_, q)| (q, false)));
            names.extend(route.bindings.iter().map(|b| (b.exchange.clone(), true)));
            names.push((passerelle::reload::fleet::history_queue(control, name), false));
        }
    }

    /// Declares a durable queue, deleted at the end.
    async fn declare_queue(&self, queue: &str) -> anyhow::Result<()> {
        {
            let mut names = self.to_delete.lock().unwrap();
            if !names.iter().any(|(name, _)| name == queue) {
                names.push((queue.to_string(), false));
            }
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await?;
        Ok(())
    }

    /// Ready messages (not those delivered and not yet acked).
    async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }

    /// N accounts straight to `queue`, persistent, all confirmed.
    async fn publish(&self, queue: &str, n: usize, tag: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let body = ACCOUNT.replace("gg-11", &format!("gg-{i}"));
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(format!("{tag}-{i}").into())
                .with_delivery_mode(2);
            let options = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            confirms.push(
                channel
                    .basic_publish("".into(), queue.into(), options, body.as_bytes(), properties)
                    .await?,
            );
        }
        for confirm in confirms {
            let confirm = confirm.await?;
            ensure!(
                confirm.is_ack() && confirm.take_message().is_none(),
                "a publish to {queue} was refused"
            );
        }
        let _ = channel.close(200, "published".into()).await;
        Ok(())
    }

    async fn clean_up(&self) {
        let names = std::mem::take(&mut *self.to_delete.lock().unwrap());
        for (name, exchange) in names {
            let _ = if exchange {
                self.channel
                    .exchange_delete(name.as_str().into(), Default::default())
                    .await
            } else {
                self.channel
                    .queue_delete(name.as_str().into(), Default::default())
                    .await
                    .map(drop)
            };
        }
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// A minimal HTTP server: 200 to everything, counting, and noting when
/// the expected count is reached.
struct Server {
    port: u16,
    state: Arc<Counter>,
}

#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    expected: AtomicUsize,
    reached: Notify,
}

impl Server {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Counter::default());
        let app = axum::Router::new().fallback(count).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { port, state })
    }

    fn expect(&self, n: usize) {
        self.state.count.store(0, Ordering::SeqCst);
        self.state.expected.store(n, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }
}

async fn count(axum::extract::State(counter): axum::extract::State<Arc<Counter>>) -> &'static str {
    let seen = counter.count.fetch_add(1, Ordering::SeqCst) + 1;
    if seen == counter.expected.load(Ordering::SeqCst) {
        counter.reached.notify_one();
    }
    ""
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
