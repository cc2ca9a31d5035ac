//! What the benches share: the broker objects of a run (random names,
//! deleted at the end), a recording HTTP server standing in for the shop,
//! the configuration of the measured route, and small helpers.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, anyhow, ensure};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use passerelle::config::Config;
use tokio::sync::{Notify, oneshot};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const ROUTE: &str = "crm-to-shop";
pub const CONCURRENCY: u16 = 16;
pub const ACCOUNT: &str = r#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;

/// Logs (warnings by default, `RUST_LOG` to change) go to stderr.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}

pub fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow!("{name}={text:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

/// The shipped crm-to-shop component, built by `scripts/build-transforms`.
pub fn shipped_transform() -> anyhow::Result<PathBuf> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/transforms/crm-to-shop.wasm");
    ensure!(
        wasm.is_file(),
        "{} is missing: run scripts/build-transforms first",
        wasm.display()
    );
    Ok(wasm)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The design doc's configuration, reduced to the route measured.
pub fn pipeline_config(broker: &Broker, wasm: &Path, port: u16) -> anyhow::Result<Config> {
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

/// Publishes account `i` (Id gg-`i`, message id `tag`-`i`, persistent,
/// mandatory) straight to `queue`; await the result for the confirm.
pub async fn publish_account(channel: &Channel, queue: &str, i: usize, tag: &str) -> anyhow::Result<PublisherConfirm> {
    let body = ACCOUNT.replace("gg-11", &format!("gg-{i}"));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(format!("{tag}-{i}").into())
        .with_delivery_mode(2);
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    Ok(channel
        .basic_publish("".into(), queue.into(), options, body.as_bytes(), properties)
        .await?)
}

/// Fails unless the broker took the message into `queue`.
pub async fn confirmed(confirm: PublisherConfirm, queue: &str) -> anyhow::Result<()> {
    let confirm = confirm.await?;
    ensure!(
        confirm.is_ack() && confirm.take_message().is_none(),
        "a publish to {queue} was refused"
    );
    Ok(())
}

/// The broker objects of this run, named `passerelle-bench.<base>.<suffix>`.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
    suffix: String,
    /// Queues and exchanges (`true`) to delete at the end.
    to_delete: Mutex<Vec<(String, bool)>>,
}

impl Broker {
    pub async fn connect() -> anyhow::Result<Self> {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .with_context(|| format!("RabbitMQ is not reachable at {AMQP_URL}: start it (scripts/ensure-rabbitmq)"))?;
        Ok(Self {
            channel: connection.create_channel().await?,
            connection,
            suffix: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            to_delete: Mutex::default(),
        })
    }

    pub fn name(&self, base: &str) -> String {
        format!("passerelle-bench.{base}.{}", self.suffix)
    }

    /// Everything the host declares for `config`, to delete at the end.
    pub fn owns(&self, config: &Config) {
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
    pub async fn declare_queue(&self, queue: &str) -> anyhow::Result<()> {
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
    pub async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
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

    /// N accounts straight to `queue`, all confirmed.
    pub async fn publish(&self, queue: &str, n: usize, tag: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            confirms.push(publish_account(&channel, queue, i, tag).await?);
        }
        for confirm in confirms {
            confirmed(confirm, queue).await?;
        }
        let _ = channel.close(200, "published".into()).await;
        Ok(())
    }

    pub async fn clean_up(&self) {
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

/// A minimal HTTP server: 200 to everything, counting, noting when the
/// expected count is reached, and when a call from an awaited transform
/// version first arrives.
pub struct Server {
    pub port: u16,
    state: Arc<Calls>,
}

#[derive(Default)]
struct Calls {
    count: AtomicUsize,
    expected: AtomicUsize,
    reached: Notify,
    /// A version (`X-Passerelle-Transform-Version`) and who to tell.
    awaited: Mutex<Option<(String, oneshot::Sender<Instant>)>>,
}

impl Server {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Calls::default());
        let app = axum::Router::new().fallback(record).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { port, state })
    }

    pub fn expect(&self, n: usize) {
        self.state.count.store(0, Ordering::SeqCst);
        self.state.expected.store(n, Ordering::SeqCst);
    }

    /// Returns once the expected count is reached (at once if it was
    /// reached since the last wait).
    pub async fn reached(&self) {
        self.state.reached.notified().await
    }

    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// The arrival time of the next call made by transform `version`
    /// (replacing any earlier wait).
    pub fn first_call_from(&self, version: &str) -> oneshot::Receiver<Instant> {
        let (tell, arrival) = oneshot::channel();
        *self.state.awaited.lock().unwrap() = Some((version.to_string(), tell));
        arrival
    }
}

async fn record(
    axum::extract::State(calls): axum::extract::State<Arc<Calls>>,
    headers: axum::http::HeaderMap,
) -> &'static str {
    let arrived = Instant::now();
    let seen = calls.count.fetch_add(1, Ordering::SeqCst) + 1;
    if seen == calls.expected.load(Ordering::SeqCst) {
        calls.reached.notify_one();
    }
    let version = headers.get(passerelle::delivery::VERSION_HEADER).map(|v| v.as_bytes());
    let mut awaited = calls.awaited.lock().unwrap();
    if awaited.as_ref().is_some_and(|(v, _)| Some(v.as_bytes()) == version)
        && let Some((_, tell)) = awaited.take()
    {
        let _ = tell.send(arrived);
    }
    ""
}
