//! What the routes remember between messages, wired together: the
//! ledgers the configuration names (one stream per guarded route,
//! `<queue>.guard`; one per echo ledger, shared by the routes that name
//! it), each route's `Guard` and `Echo`, and the steps the message path
//! takes with them: read a message's keys, take the entity's turn, drop
//! it when it is stale or an echo, remember it once delivered.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::{Channel, Connection};
use serde_json::Value;

use crate::amqp::Publisher;
use crate::config::Config;
use crate::echo::{self, Echo};
use crate::guard::{Guard, Position, Turn};
use crate::ledger::{self, Follower, Ledger, Retention};
use crate::runtime::{Action, Message};

/// The size bound of a guard's stream: about ten million records.
const GUARD_MAX_BYTES: u64 = 1 << 30;
/// The size bound of an echo ledger's stream.
const ECHO_MAX_BYTES: u64 = 256 << 20;

/// Every ledger of the host, and each route's use of them.
#[derive(Default)]
pub struct Memory {
    ledgers: Vec<Arc<Ledger>>,
    routes: HashMap<String, RouteMemory>,
}

impl Memory {
    pub fn new(config: &Config) -> Self {
        let mut memory = Self::default();
        for route in config.routes.values() {
            let mut remembers = RouteMemory::default();
            if let Some(settings) = &route.guard {
                let retention = Retention {
                    max_age: settings.keep,
                    max_bytes: GUARD_MAX_BYTES,
                };
                let prefer = Guard::prefer(settings.compare);
                let ledger = memory.ledger(&route.guard_ledger(), retention, prefer);
                remembers.guard = Some(Arc::new(Guard::new(settings.clone(), ledger)));
            }
            if let Some(settings) = &route.echo {
                let retention = Retention {
                    max_age: settings.ttl,
                    max_bytes: ECHO_MAX_BYTES,
                };
                let ledger = memory.ledger(&settings.ledger, retention, ledger::latest);
                remembers.echo = Some(Arc::new(Echo::new(settings.clone(), ledger)));
            }
            memory.routes.insert(route.name.clone(), remembers);
        }
        memory
    }

    /// The ledger on `stream`, made on first use (routes share an echo ledger).
    fn ledger(&mut self, stream: &str, retention: Retention, prefer: ledger::Prefer) -> Arc<Ledger> {
        if let Some(ledger) = self.ledgers.iter().find(|ledger| ledger.stream() == stream) {
            return ledger.clone();
        }
        let ledger = Arc::new(Ledger::new(stream, retention, prefer));
        self.ledgers.push(ledger.clone());
        ledger
    }

    pub fn of(&self, route: &str) -> RouteMemory {
        self.routes.get(route).cloned().unwrap_or_default()
    }

    /// Declares every ledger's stream, with the routes' topology (an error
    /// there refuses the start).
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        for ledger in &self.ledgers {
            ledger.declare(channel).await?;
        }
        Ok(())
    }

    /// Reads every ledger to its end; returns the followers that keep
    /// reading. Call before consuming the routes.
    pub async fn catch_up(&self, connection: &Arc<Connection>) -> anyhow::Result<Vec<Follower>> {
        let mut followers = Vec::new();
        for ledger in &self.ledgers {
            followers.push(ledger.catch_up(connection).await?);
        }
        Ok(followers)
    }
}

/// Why a message was acked without being delivered: the label of the
/// dropped-messages metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than an update of its entity already applied.
    Stale,
    /// Its source already holds what it reports.
    Echo,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Echo => "echo",
        }
    }
}

/// What one route remembers with; empty for most routes.
#[derive(Clone, Default)]
pub struct RouteMemory {
    pub guard: Option<Arc<Guard>>,
    pub echo: Option<Arc<Echo>>,
}

/// What the route's memory reads in one message.
#[derive(Debug, Default)]
pub struct Keys {
    position: Option<Position>,
    reported: Option<echo::State>,
}

impl RouteMemory {
    /// The message's keys; an error (its dead letter's reason) when the
    /// guard cannot place it.
    pub fn read(&self, message: &Message) -> Result<Keys, String> {
        if self.guard.is_none() && self.echo.is_none() {
            return Ok(Keys::default());
        }
        let body: Option<Value> = serde_json::from_slice(&message.body).ok();
        let position = match &self.guard {
            Some(guard) => Some(guard.position(body.as_ref(), &message.headers)?),
            None => None,
        };
        let reported = self
            .echo
            .as_ref()
            .and_then(|echo| echo.reported(body.as_ref(), &message.headers));
        Ok(Keys { position, reported })
    }

    /// The entity's turn in this host, for a guarded route: held from the
    /// check to the record.
    pub async fn turn(&self, keys: &Keys) -> Option<Turn<'_>> {
        match (&self.guard, &keys.position) {
            (Some(guard), Some(position)) => Some(guard.turn(&position.entity).await),
            _ => None,
        }
    }

    /// Why the message must be dropped, with the detail to log; None to deliver it.
    pub fn verdict(&self, keys: &Keys) -> Option<(DropReason, String)> {
        if let (Some(guard), Some(position)) = (&self.guard, &keys.position)
            && let Some(applied) = guard.newer_than(position)
        {
            let detail = format!(
                "entity {}: ordering value {} is older than {applied}, already applied",
                position.entity, position.order
            );
            return Some((DropReason::Stale, detail));
        }
        if let (Some(echo), Some(reported)) = (&self.echo, &keys.reported)
            && echo.is_echo(reported)
        {
            return Some((DropReason::Echo, "its source already holds what it reports".into()));
        }
        None
    }

    /// Records what the delivered message changed. Call only after every
    /// action succeeded, and ack only after this succeeded.
    pub async fn remember(&self, publisher: &Publisher, keys: &Keys, actions: &[Action]) -> anyhow::Result<()> {
        if let (Some(guard), Some(position)) = (&self.guard, &keys.position) {
            guard.record(publisher, position).await?;
        }
        if let Some(echo) = &self.echo {
            echo.remember(publisher, keys.reported.as_ref(), actions).await?;
        }
        Ok(())
    }
}
