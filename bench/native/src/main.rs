//! The hand-written native Rust service Passerelle is measured against
//! (`bench/harness`): what a team would write for the crm-to-shop job
//! instead of adopting Passerelle. A lapin consumer, a serde mapping with
//! the code tables compiled in, a `PUT businesses/{Id}` with reqwest
//! (pooled connections, rustls available), an ack after a 2xx, at most
//! CONCURRENCY messages at once (the prefetch too).
//!
//! Three modes, by the first argument:
//! - `serve AMQP_URL QUEUE BASE_URL CONCURRENCY`: the service, until
//!   SIGTERM; then it stops taking messages and lets those in flight finish.
//! - `ack-only AMQP_URL QUEUE MESSAGES PREFETCH`: the ceiling, a consumer
//!   that only acks. After MESSAGES acks it prints
//!   `{"seconds": .., "cpu_seconds": ..}` (first delivery to last ack, its
//!   own user + system time over that window) and exits.
//! - `map ITERATIONS`: the mapping alone; prints nanoseconds per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

const ACCOUNT: &str = r#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;

/// The CRM account fields the mapping reads.
#[derive(Deserialize)]
struct Account {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Status__c")]
    status: String,
    #[serde(rename = "Country__c")]
    country: String,
}

/// The shop's `PUT businesses/{Id}` body.
#[derive(Serialize)]
struct ShopBusiness<'a> {
    business: Business<'a>,
    status: i64,
    country: Country,
}

#[derive(Serialize)]
struct Business<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Country {
    id: i64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", url, queue, base, concurrency] => runtime()?.block_on(serve(url, queue, base, concurrency.parse()?)),
        ["ack-only", url, queue, messages, prefetch] => {
            runtime()?.block_on(ack_only(url, queue, messages.parse()?, prefetch.parse()?))
        }
        ["map", iterations] => map_only(iterations.parse()?),
        _ => bail!(
            "usage: passerelle-bench-native serve AMQP_URL QUEUE BASE_URL CONCURRENCY\n\
             \x20      passerelle-bench-native ack-only AMQP_URL QUEUE MESSAGES PREFETCH\n\
             \x20      passerelle-bench-native map ITERATIONS"
        ),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The mapping: the account's Id, and the shop body as JSON.
fn shop_business(body: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
    let account: Account = serde_json::from_slice(body).context("not a CRM account")?;
    let status = match account.status.as_str() {
        "CLIENT_ACTIVE" => 70,
        other => bail!("unknown Status__c {other:?}"),
    };
    let country = match account.country.as_str() {
        "FR" => 76,
        other => bail!("unknown Country__c {other:?}"),
    };
    let shop = ShopBusiness {
        business: Business { name: &account.name },
        status,
        country: Country { id: country },
    };
    Ok((account.id.clone(), serde_json::to_vec(&shop)?))
}

async fn consume(url: &str, queue: &str, prefetch: u16) -> anyhow::Result<(Connection, Channel, Consumer)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "bench-native".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, consumer))
}

async fn serve(url: &str, queue: &str, base: &str, concurrency: u16) -> anyhow::Result<()> {
    let base = Arc::new(Url::parse(base)?);
    let client = reqwest::Client::new();
    let (connection, channel, mut deliveries) = consume(url, queue, concurrency).await?;
    let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let delivery = tokio::select! {
            _ = terminate.recv() => break,
            next = deliveries.next() => next.ok_or_else(|| anyhow!("the broker cancelled the consumer"))??,
        };
        let slot = slots.clone().acquire_owned().await?;
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            handle(&client, &base, delivery).await;
            drop(slot);
        });
    }
    // Every permit back: the messages in flight are settled.
    let _all = slots.acquire_many(u32::from(concurrency)).await?;
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// Delivers one message and acks it; a message it cannot map is rejected,
/// one it could not deliver is requeued.
async fn handle(client: &reqwest::Client, base: &Url, delivery: Delivery) {
    let settled = match shop_business(&delivery.data) {
        Err(error) => {
            eprintln!("passerelle-bench-native: rejected: {error:#}");
            delivery.nack(BasicNackOptions::default()).await
        }
        Ok((id, body)) => match put(client, base, &id, body, &delivery).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(error) => {
                eprintln!("passerelle-bench-native: requeued: {error:#}");
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                delivery.nack(requeue).await
            }
        },
    };
    if let Err(error) = settled {
        eprintln!("passerelle-bench-native: could not settle a message: {error}");
    }
}

async fn put(client: &reqwest::Client, base: &Url, id: &str, body: Vec<u8>, delivery: &Delivery) -> anyhow::Result<()> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow!("{base} cannot be a base URL"))?
        .pop_if_empty()
        .extend(["businesses", id]);
    let mut request = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(message_id) = delivery.properties.message_id() {
        request = request.header("Idempotency-Key", message_id.as_str());
    }
    let response = request.send().await?;
    ensure!(response.status().is_success(), "PUT answered {}", response.status());
    Ok(())
}

async fn ack_only(url: &str, queue: &str, messages: usize, prefetch: u16) -> anyhow::Result<()> {
    let (connection, channel, mut deliveries) = consume(url, queue, prefetch).await?;
    let mut first = None;
    for _ in 0..messages {
        let delivery = tokio::time::timeout(Duration::from_secs(60), deliveries.next())
            .await
            .context("no delivery for 60s")?
            .ok_or_else(|| anyhow!("the broker cancelled the consumer"))??;
        first.get_or_insert_with(|| (Instant::now(), cpu_seconds()));
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let (started, cpu) = first.context("no messages")?;
    println!(
        r#"{{"seconds": {}, "cpu_seconds": {}}}"#,
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// This process's user + system time so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn map_only(iterations: u32) -> anyhow::Result<()> {
    let expected = r#"{"business":{"name":"Eleven Labs"},"status":70,"country":{"id":76}}"#;
    ensure!(shop_business(ACCOUNT.as_bytes())?.1 == expected.as_bytes());
    let timed = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(shop_business(std::hint::black_box(ACCOUNT.as_bytes()))?);
        }
        Ok(started.elapsed())
    };
    timed()?; // warm-up
    println!("{:.0}", timed()?.as_nanos() as f64 / f64::from(iterations));
    Ok(())
}
