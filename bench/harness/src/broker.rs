//! The broker side of a run: queues named with a random suffix (the broker
//! is shared), the seed messages published before a contestant starts,
//! queue depths for the checks, and the deletion of every object the run
//! created, also after an error.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use passerelle::config::{Config, Route};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The design doc's CRM account with Id `gg-<i>`.
pub fn account(i: usize) -> String {
    format!(r#"{{"Id": "gg-{i}", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}}"#)
}

/// What every delivered body must be, whatever the Id.
pub fn expected_shop_body() -> serde_json::Value {
    serde_json::json!({"business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}})
}

enum Object {
    Queue(String),
    Exchange(String),
}

pub struct Broker {
    connection: Connection,
    channel: Channel,
    suffix: String,
    owned: Mutex<Vec<Object>>,
}

impl Broker {
    pub async fn connect() -> anyhow::Result<Self> {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .with_context(|| format!("RabbitMQ is not reachable at {AMQP_URL}: start it (scripts/ensure-rabbitmq)"))?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            connection,
            channel,
            suffix: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            owned: Mutex::default(),
        })
    }

    /// `passerelle-bench.<base>.<suffix>`: apart from everyone else's.
    pub fn name(&self, base: &str) -> String {
        format!("passerelle-bench.{base}.{}", self.suffix)
    }

    /// A durable queue of this run, deleted at the end.
    pub async fn queue(&self, base: &str) -> anyhow::Result<String> {
        let queue = self.name(base);
        self.owned.lock().unwrap().push(Object::Queue(queue.clone()));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await?;
        Ok(queue)
    }

    /// Everything `passerelle run` declares for `config`, to delete at the
    /// end; declares each route's topology now, so that seed messages can
    /// wait in its queue before the host starts.
    pub async fn own_passerelle(&self, config: &Config) -> anyhow::Result<()> {
        let control = &config.amqp.control_exchange;
        let mut owned = vec![Object::Exchange(control.clone())];
        for (name, route) in &config.routes {
            owned.extend([route.queue.clone(), route.dead_letter_queue()].map(Object::Queue));
            owned.extend(route.retry_queues().into_iter().map(|(_, q)| Object::Queue(q)));
            owned.extend(route.bindings.iter().map(|b| Object::Exchange(b.exchange.clone())));
            owned.push(Object::Queue(passerelle::reload::fleet::history_queue(control, name)));
        }
        self.owned.lock().unwrap().extend(owned);
        for route in config.routes.values() {
            self.declare_route(route).await?;
        }
        Ok(())
    }

    async fn declare_route(&self, route: &Route) -> anyhow::Result<()> {
        passerelle::amqp::declare_topology(&self.channel, route).await
    }

    /// Ready messages in `queue` (not those delivered and unacked).
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

    /// Accounts 0..n into `queue`, persistent, every one confirmed.
    pub async fn publish(&self, queue: &str, n: usize, tag: &str) -> anyhow::Result<()> {
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            confirms.push(publish_account(&self.channel, queue, i, tag).await?);
        }
        for confirm in confirms {
            confirmed(confirm, queue).await?;
        }
        Ok(())
    }

    /// One account every `every` into `queue` until `stop`, each confirmed;
    /// returns how many were published.
    pub async fn publish_steadily(
        &self,
        queue: &str,
        every: Duration,
        stop: CancellationToken,
    ) -> anyhow::Result<usize> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = FuturesUnordered::new();
        let mut sent = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(result) = pending.next() => result?,
                _ = tick.tick() => {
                    let confirm = publish_account(&self.channel, queue, sent, "steady").await?;
                    pending.push(confirmed(confirm, queue));
                    sent += 1;
                }
            }
        }
        while let Some(result) = pending.next().await {
            result?;
        }
        Ok(sent)
    }

    /// Deletes every queue and exchange of the run, then disconnects.
    pub async fn clean_up(self) {
        let owned = std::mem::take(&mut *self.owned.lock().unwrap());
        for object in owned {
            let deleted = match &object {
                Object::Queue(name) => self
                    .channel
                    .queue_delete(name.as_str().into(), Default::default())
                    .await
                    .map(drop),
                Object::Exchange(name) => {
                    self.channel
                        .exchange_delete(name.as_str().into(), Default::default())
                        .await
                }
            };
            if let (Err(error), Object::Queue(name) | Object::Exchange(name)) = (deleted, &object) {
                eprintln!("passerelle-bench: could not delete {name}: {error}");
            }
        }
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// Account `i` (message id `<tag>-<i>`), persistent and mandatory, straight
/// to `queue`; await the result for the broker's confirm.
async fn publish_account(channel: &Channel, queue: &str, i: usize, tag: &str) -> anyhow::Result<PublisherConfirm> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(format!("{tag}-{i}").into())
        .with_delivery_mode(2);
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let body = account(i);
    Ok(channel
        .basic_publish("".into(), queue.into(), options, body.as_bytes(), properties)
        .await?)
}

async fn confirmed(confirm: PublisherConfirm, queue: &str) -> anyhow::Result<()> {
    let confirm = confirm.await?;
    ensure!(
        confirm.is_ack() && confirm.take_message().is_none(),
        "a publish to {queue} was refused"
    );
    Ok(())
}
