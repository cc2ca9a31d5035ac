//! RabbitMQ: connecting, declaring each route's topology idempotently and
//! publishing with confirms. `headers` is every header we read or write;
//! `consumer` is the AMQP side of a route's message path, `settler` sends
//! its acks in batches; `brokers` is the list of addresses a connection
//! may go to.

pub mod brokers;
pub mod consumer;
pub mod headers;
pub mod settler;

pub use brokers::Brokers;

use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::config::{QueueType, Route, Secret, redact_url};

/// Connects to the first of `urls` that answers: for one connection
/// that is not re-established (operator commands).
pub async fn connect_first(urls: &[Secret], name: &str) -> anyhow::Result<Connection> {
    Brokers::new(urls).connect(name).await
}

async fn connect(url: &Secret, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose(), properties)
        .await
        // lapin's message already carries its cause: no second copy of it.
        .map_err(|e| anyhow!("connecting to {}: {e}", redact_url(url.expose())))
}

/// Declares a route's exchanges, work queue, bindings and dead-letter
/// queue. Declaring what exists with the same settings changes nothing;
/// different settings are refused by the broker and reported.
pub async fn declare_topology(channel: &Channel, route: &Route) -> anyhow::Result<()> {
    let route_name = &route.name;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut arguments = FieldTable::default();
    if route.queue_type == QueueType::Quorum {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    channel
        .queue_declare(route.queue.as_str().into(), durable, arguments.clone())
        .await
        .with_context(|| format!("route {route_name}: declaring queue {}", route.queue))?;
    channel
        .queue_declare(route.dead_letter_queue().as_str().into(), durable, arguments.clone())
        .await
        .with_context(|| format!("route {route_name}: declaring queue {}", route.dead_letter_queue()))?;
    for (delay, retry_queue) in route.retry_queues() {
        // Messages wait out the delay here, then the broker dead-letters
        // them back into the work queue: no plugin needed.
        let mut retry_arguments = arguments.clone();
        let ttl = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        retry_arguments.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
        retry_arguments.insert("x-dead-letter-exchange".into(), headers::text(""));
        retry_arguments.insert("x-dead-letter-routing-key".into(), headers::text(route.queue.as_str()));
        channel
            .queue_declare(retry_queue.as_str().into(), durable, retry_arguments)
            .await
            .with_context(|| format!("route {route_name}: declaring retry queue {retry_queue}"))?;
    }
    for binding in &route.bindings {
        channel
            .exchange_declare(
                binding.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("route {route_name}: declaring topic exchange {}", binding.exchange))?;
        channel
            .queue_bind(
                route.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!(
                    "route {route_name}: binding {} to {} with {:?}",
                    route.queue, binding.exchange, binding.routing_key
                )
            })?;
    }
    Ok(())
}

/// The most bytes an AMQP short string holds: exchange names, routing
/// keys, header names, message ids.
pub const MAX_SHORT_STRING: usize = 255;

/// `text` as an AMQP short string, or an error naming `what` when it is too long.
pub fn short_string(what: &str, text: &str) -> Result<ShortString, String> {
    ShortString::try_new(text).map_err(|_| {
        let start: String = text.chars().take(40).collect();
        format!("{what} {start:?}... is longer than {MAX_SHORT_STRING} bytes")
    })
}

/// Publishes with publisher confirms: `publish` returns once the broker
/// has taken responsibility for the message. A channel closed by the
/// broker (say, publishing to a missing exchange) is reopened on next use.
#[derive(Clone)]
pub struct Publisher {
    connection: Arc<Connection>,
    channel: Arc<Mutex<Option<Channel>>>,
}

impl Publisher {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            channel: Arc::new(Mutex::new(None)),
        }
    }

    /// Publishes persistently and mandatorily: a message no queue takes is
    /// an error, not a silent loss.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let exchange_name = short_string("exchange", exchange).map_err(|problem| anyhow!(problem))?;
        let key = short_string("routing key", routing_key).map_err(|problem| anyhow!(problem))?;
        let channel = self.channel().await?;
        let properties = properties.with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                exchange_name,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .with_context(|| format!("publishing to exchange {exchange:?} with key {routing_key:?}"))?
            .await
            .with_context(|| format!("confirming a publish to exchange {exchange:?}"))?;
        let target = format!("exchange {exchange:?} with routing key {routing_key:?}");
        if confirm.is_nack() {
            return Err(anyhow!("the broker refused a message for {target}"));
        }
        if confirm.take_message().is_some() {
            return Err(anyhow!("no queue takes messages from {target}"));
        }
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            let _ = channel.close(200, "done".into()).await;
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await.context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}
