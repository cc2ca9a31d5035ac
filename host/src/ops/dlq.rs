//! A route's dead letters, in the spirit of rabbit-mq-admin-toolkit's
//! message commands: list them with their reason, replay them into the
//! work queue with a fresh attempt budget (confirmed before they leave the
//! dead-letter queue, so an interrupted replay loses nothing), or purge them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::amqp::{Publisher, headers};
use crate::config::Route;

/// At most this many dead letters are looked at in one command: they are
/// all held unacked until it ends.
pub const MAX_MESSAGES: usize = 10_000;

/// A dead letter as `dlq list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub record: headers::DeadLetterRecord,
    pub age: Option<Duration>,
}

/// Which dead letters `dlq replay` sends back.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// Reads every dead letter, leaving them all in place.
pub async fn list(connection: &Connection, route: &Route) -> anyhow::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let present = present(&channel, route).await?;
    let mut letters = Vec::new();
    while let Some(message) = next(&channel, route, letters.len(), present).await? {
        letters.push(describe(&message));
    }
    // Closing the channel returns the unacked messages to the queue.
    let _ = channel.close(200, "listed".into()).await;
    Ok(letters)
}

/// Publishes the selected dead letters to the work queue with a fresh
/// attempt count; each leaves the dead-letter queue only once the broker
/// confirmed its copy. Returns how many were replayed.
pub async fn replay(connection: &Arc<Connection>, route: &Route, selection: &Selection) -> anyhow::Result<usize> {
    let channel = connection.create_channel().await?;
    let publisher = Publisher::new(connection.clone());
    // Only what is there now: a replayed message that fails again lands
    // back in the queue, and must not be replayed in a loop.
    let present = present(&channel, route).await?;
    let (mut seen, mut replayed) = (0, 0);
    while let Some(message) = next(&channel, route, seen, present).await? {
        seen += 1;
        if !selection.takes(message.delivery.properties.message_id().as_ref().map(|id| id.as_str())) {
            continue;
        }
        let properties = message
            .delivery
            .properties
            .clone()
            .with_headers(fresh_headers(&message));
        publisher
            .publish("", &route.queue, &message.delivery.data, properties)
            .await
            .context("replaying into the work queue")?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    Ok(replayed)
}

/// Drops every dead letter of the route; returns how many.
pub async fn purge(connection: &Connection, route: &Route) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let queue = route.dead_letter_queue();
    let count = channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purging {queue}"))?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(count)
}

/// How many dead letters the route has now.
async fn present(channel: &Channel, route: &Route) -> anyhow::Result<usize> {
    let queue = route.dead_letter_queue();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.as_str().into(), options, FieldTable::default())
        .await
        .with_context(|| format!("no dead-letter queue {queue}: has the route run yet?"))?;
    Ok(declared.message_count() as usize)
}

async fn next(
    channel: &Channel,
    route: &Route,
    seen: usize,
    present: usize,
) -> anyhow::Result<Option<BasicGetMessage>> {
    if seen >= present.min(MAX_MESSAGES) {
        return Ok(None);
    }
    let queue = route.dead_letter_queue();
    channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .with_context(|| format!("reading {queue}"))
}

impl Selection {
    fn takes(&self, message_id: Option<&str>) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => message_id.is_some_and(|id| ids.iter().any(|wanted| wanted == id)),
        }
    }
}

/// The original headers without the failure's, and attempt 1 again.
fn fresh_headers(message: &BasicGetMessage) -> FieldTable {
    let mut table = headers::without_ours(message.delivery.properties.headers().as_ref());
    headers::set_attempt(&mut table, 1);
    table
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let properties = &message.delivery.properties;
    let record = headers::DeadLetterRecord::read(properties.headers().as_ref());
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        age: record.age(),
        record,
    }
}
