//! A small key-value memory that survives restarts and is shared by every
//! host, kept on the one piece of shared infrastructure Passerelle has:
//! the broker. A ledger is a RabbitMQ stream (`x-queue-type: stream`), an
//! append-only log of `(key, value, expiry)` records. Each host replays it
//! when it connects, keeps consuming it to learn what other hosts write,
//! and answers reads from the map it builds in memory. The stream's
//! retention (`x-max-age`, `x-max-length-bytes`) bounds its size.
//!
//! What a ledger holds is its user's business: the stale-update guard
//! keeps the newest ordering value per entity (`guard.rs`), echo
//! suppression the fingerprint of each system's last known state
//! (`echo.rs`). Each says, with its `Prefer` rule, whether a record
//! replaces the value a key already has, so replaying the log in any
//! interleaving of hosts ends in the same map for the guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::amqp::Publisher;

/// Records the follower may hold unacknowledged: streams need a prefetch.
const PREFETCH: u16 = 500;
/// While catching up, records are acknowledged this many at a time.
const ACK_BATCH: u32 = 100;
/// Applies between two sweeps of expired entries.
const SWEEP_EVERY: u32 = 1024;

/// Whether a `new` value replaces the `old` one of the same key.
pub type Prefer = fn(new: &str, old: &str) -> bool;

/// The latest record wins.
pub fn latest(_new: &str, _old: &str) -> bool {
    true
}

/// How much of the log the broker keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments older than this are deleted (`x-max-age`).
    pub max_age: Duration,
    /// The log's size bound (`x-max-length-bytes`).
    pub max_bytes: u64,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    /// `key` now has `value`, until `expires_at` (unix milliseconds) if set.
    Set {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// The ledger instance that wrote it: it applied it already.
        origin: String,
    },
    /// Written when a host connects: once it reads its own mark back, it
    /// has read everything written before (a stream keeps its order).
    Mark { id: String },
}

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    expires_at: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// One stream and the map built from it.
pub struct Ledger {
    stream: String,
    retention: Retention,
    prefer: Prefer,
    /// Tells this instance's records apart from other hosts' (and from
    /// its own previous runs, which it must replay).
    origin: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Where to resume after a lost connection: the offset after the last
    /// record read.
    next_offset: Option<i64>,
    applied_since_sweep: u32,
}

impl Ledger {
    pub fn new(stream: &str, retention: Retention, prefer: Prefer) -> Self {
        Self {
            stream: stream.to_string(),
            retention,
            prefer,
            origin: format!("{:032x}", rand::random::<u128>()),
            state: Mutex::default(),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The live value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let state = self.state();
        let entry = state.entries.get(key)?;
        entry.live(now_millis()).then(|| entry.value.clone())
    }

    /// Appends a record (confirmed by the broker), then applies it here:
    /// when this returns Ok, the value is durable and other hosts will
    /// learn it. `ttl` makes it expire.
    pub async fn record(
        &self,
        publisher: &Publisher,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let expires_at = ttl.map(|ttl| now_millis().saturating_add(ttl.as_millis() as u64));
        let record = Record::Set {
            key: key.to_string(),
            value: value.to_string(),
            expires_at,
            origin: self.origin.clone(),
        };
        self.append(publisher, &record)
            .await
            .with_context(|| format!("recording in ledger {}", self.stream))?;
        self.apply_set(key, value, expires_at);
        Ok(())
    }

    /// Declares the stream (durable, with its retention). Declaring it
    /// again with the same settings changes nothing.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        declare(channel, &self.stream, self.retention).await
    }

    /// Reads the log from where this instance stopped (from the start the
    /// first time) up to its end, then returns the follower that keeps
    /// reading it. Routes that use the ledger start consuming only after
    /// this, so a restarted host holds what it held before.
    pub async fn catch_up(self: &Arc<Self>, connection: &Arc<Connection>) -> anyhow::Result<Follower> {
        let channel = connection.create_channel().await.context("opening a channel")?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .context("setting the ledger's prefetch")?;
        let tag = format!("passerelle-ledger-{}", self.origin);
        let consumer = channel
            .basic_consume(
                self.stream.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                self.offset_argument(),
            )
            .await
            .with_context(|| format!("reading ledger {}", self.stream))?;
        let mut follower = Follower {
            ledger: self.clone(),
            channel,
            consumer,
            tag,
            unacked: 0,
        };
        let mark = format!("{:032x}", rand::random::<u128>());
        let publisher = Publisher::new(connection.clone());
        let marked = self.append(&publisher, &Record::Mark { id: mark.clone() }).await;
        publisher.close().await;
        marked.with_context(|| format!("marking ledger {}", self.stream))?;
        follower.read_until(&mark).await?;
        tracing::debug!(ledger = %self.stream, entries = self.state().entries.len(), "ledger read");
        Ok(follower)
    }

    fn offset_argument(&self) -> FieldTable {
        let offset = match self.state().next_offset {
            Some(next) => AMQPValue::LongLongInt(next),
            None => AMQPValue::LongString("first".into()),
        };
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), offset);
        arguments
    }

    async fn append(&self, publisher: &Publisher, record: &Record) -> anyhow::Result<()> {
        let body = serde_json::to_vec(record)?;
        let properties = BasicProperties::default().with_content_type("application/json".into());
        publisher.publish("", &self.stream, &body, properties).await
    }

    /// Applies one record read from the log; returns the mark it is, if so.
    fn apply_read(&self, body: &[u8], offset: Option<i64>) -> Option<String> {
        if let Some(offset) = offset {
            self.state().next_offset = Some(offset + 1);
        }
        match serde_json::from_slice::<Record>(body) {
            Ok(Record::Mark { id }) => Some(id),
            // Its writer applied it when it wrote it.
            Ok(Record::Set { origin, .. }) if origin == self.origin => None,
            Ok(Record::Set {
                key, value, expires_at, ..
            }) => {
                self.apply_set(&key, &value, expires_at);
                None
            }
            Err(error) => {
                tracing::warn!(ledger = %self.stream, "skipping a record that is not ours: {error}");
                None
            }
        }
    }

    fn apply_set(&self, key: &str, value: &str, expires_at: Option<u64>) {
        let now = now_millis();
        if expires_at.is_some_and(|at| at <= now) {
            return;
        }
        let mut state = self.state();
        let replaces = match state.entries.get(key) {
            Some(old) if old.live(now) => (self.prefer)(value, &old.value),
            _ => true,
        };
        if replaces {
            let entry = Entry {
                value: value.to_string(),
                expires_at,
            };
            state.entries.insert(key.to_string(), entry);
        }
        state.applied_since_sweep += 1;
        if state.applied_since_sweep >= SWEEP_EVERY {
            state.applied_since_sweep = 0;
            state.entries.retain(|_, entry| entry.live(now));
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Declares a ledger's stream: durable, with its retention.
async fn declare(channel: &Channel, stream: &str, retention: Retention) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    let max_age = format!("{}s", retention.max_age.as_secs().max(1));
    arguments.insert("x-max-age".into(), AMQPValue::LongString(max_age.as_str().into()));
    let max_bytes = i64::try_from(retention.max_bytes).unwrap_or(i64::MAX);
    arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(max_bytes));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.into(), options, arguments)
        .await
        .with_context(|| format!("declaring ledger stream {stream} (retention {max_age}, {max_bytes} bytes)"))?;
    Ok(())
}

/// Keeps reading a ledger's stream, so that this host learns what the
/// others record.
pub struct Follower {
    ledger: Arc<Ledger>,
    channel: Channel,
    consumer: Consumer,
    tag: String,
    unacked: u32,
}

/// When the follower acknowledges what it read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Every record: records trickle in while following.
    Each,
    /// A batch at a time, and every mark: the replay at connect.
    Batched,
}

impl Follower {
    /// Reads until `shutdown` (Ok) or until the channel fails (an error:
    /// the host reconnects and the ledger resumes where it stopped).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                read = self.next(Ack::Each) => { read?; }
            }
        }
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = self.channel.close(200, "shutting down".into()).await;
        Ok(())
    }

    async fn read_until(&mut self, mark: &str) -> anyhow::Result<()> {
        while self.next(Ack::Batched).await?.as_deref() != Some(mark) {}
        Ok(())
    }

    /// Applies the next record; returns the mark it was, if so.
    async fn next(&mut self, ack: Ack) -> anyhow::Result<Option<String>> {
        let stream = &self.ledger.stream;
        let delivery = match self.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error).context(format!("reading ledger {stream}")),
            None => return Err(anyhow!("the broker cancelled the reader of ledger {stream}")),
        };
        let mark = self.ledger.apply_read(&delivery.data, stream_offset(&delivery));
        self.unacked += 1;
        if ack == Ack::Each || mark.is_some() || self.unacked >= ACK_BATCH {
            // A stream counts acks to grant credit; they delete nothing.
            let up_to_here = BasicAckOptions { multiple: true };
            delivery
                .ack(up_to_here)
                .await
                .with_context(|| format!("acknowledging records of ledger {stream}"))?;
            self.unacked = 0;
        }
        Ok(mark)
    }
}

/// The record's place in the stream, which the broker puts in a header.
fn stream_offset(delivery: &Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        AMQPValue::LongUInt(offset) => Some(i64::from(*offset)),
        AMQPValue::Timestamp(offset) => i64::try_from(*offset).ok(),
        _ => None,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, expires_at: Option<u64>, origin: &str) -> Vec<u8> {
        let record = Record::Set {
            key: key.into(),
            value: value.into(),
            expires_at,
            origin: origin.into(),
        };
        serde_json::to_vec(&record).unwrap()
    }

    fn ledger(prefer: Prefer) -> Ledger {
        let retention = Retention {
            max_age: Duration::from_secs(60),
            max_bytes: 1 << 20,
        };
        Ledger::new("test", retention, prefer)
    }

    fn longer(new: &str, old: &str) -> bool {
        new.len() >= old.len()
    }

    #[test]
    fn records_read_from_the_log_follow_the_prefer_rule_and_move_the_offset() {
        let ledger = ledger(longer);
        assert_eq!(ledger.apply_read(&set("a", "xx", None, "other"), Some(7)), None);
        ledger.apply_read(&set("a", "x", None, "other"), Some(8));
        assert_eq!(ledger.get("a").as_deref(), Some("xx"));
        ledger.apply_read(&set("a", "xxx", None, "other"), Some(9));
        assert_eq!(ledger.get("a").as_deref(), Some("xxx"));
        assert_eq!(ledger.state().next_offset, Some(10));
        assert_eq!(ledger.get("b"), None);
    }

    #[test]
    fn its_own_records_are_not_applied_twice_and_marks_are_returned() {
        let ledger = ledger(latest);
        ledger.apply_set("a", "new", None);
        // Its own older record, read back after a newer local one.
        let own = set("a", "old", None, &ledger.origin.clone());
        ledger.apply_read(&own, Some(1));
        assert_eq!(ledger.get("a").as_deref(), Some("new"));
        let mark = serde_json::to_vec(&Record::Mark { id: "m1".into() }).unwrap();
        assert_eq!(ledger.apply_read(&mark, Some(2)).as_deref(), Some("m1"));
        assert_eq!(ledger.apply_read(b"not json", Some(3)), None);
    }

    #[test]
    fn expired_values_are_not_read_and_do_not_block_a_new_one() {
        let ledger = ledger(longer);
        ledger.apply_set("gone", "long value", Some(now_millis() - 1));
        assert_eq!(ledger.get("gone"), None);
        ledger.apply_set("a", "long value", Some(now_millis() + 50));
        assert_eq!(ledger.get("a").as_deref(), Some("long value"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ledger.get("a"), None);
        ledger.apply_set("a", "short", None);
        assert_eq!(ledger.get("a").as_deref(), Some("short"));
    }
}
