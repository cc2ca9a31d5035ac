//! The ingest server's own broker connection. It is apart from the
//! consumers' so that a burst of webhooks never competes with them, and so
//! that the host's reconnect loop (which re-declares and re-consumes) is
//! not needed here: a request that finds the connection broken drops it
//! and answers 503, and the next request connects again. Nothing is
//! acknowledged to a sender before the broker confirmed it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures_util::future::join_all;
use lapin::{BasicProperties, Connection};
use tokio::sync::Mutex;

use crate::amqp::{Brokers, Publisher};
use crate::config::Secret;

/// How long a request waits for a connection, then for a confirm.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed connect, requests within this time fail at once instead
/// of each trying (and waiting) again.
const CONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// One message to publish.
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

pub struct Link {
    brokers: Brokers,
    name: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Linked>,
    last_failed_connect: Option<Instant>,
}

#[derive(Clone)]
struct Linked {
    connection: Arc<Connection>,
    publisher: Publisher,
}

impl Link {
    /// Connects at once: a host whose ingest cannot reach the broker does not start.
    pub async fn connect(urls: &[Secret], name: String) -> anyhow::Result<Self> {
        let brokers = Brokers::new(urls);
        let linked = open(&brokers, &name).await?;
        let state = State {
            current: Some(linked),
            last_failed_connect: None,
        };
        Ok(Self {
            brokers,
            name,
            state: Mutex::new(state),
        })
    }

    /// Publishes every message, persistent and mandatory, concurrently on
    /// one channel; Ok once the broker confirmed them all. On an error some
    /// may have been taken: senders retry, and the message ids let
    /// consumers drop the copies.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> anyhow::Result<()> {
        let linked = self.linked().await?;
        let publishes = messages.iter().map(|message| {
            let publish = linked.publisher.publish(
                &message.exchange,
                &message.routing_key,
                &message.body,
                message.properties.clone(),
            );
            tokio::time::timeout(CONFIRM_TIMEOUT, publish)
        });
        let mut first_error = None;
        for outcome in join_all(publishes).await {
            let error = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(_) => anyhow!("no confirm from the broker within {CONFIRM_TIMEOUT:?}"),
            };
            first_error.get_or_insert(error);
        }
        let Some(error) = first_error else {
            return Ok(());
        };
        if !linked.connection.status().connected() {
            self.forget(&linked).await;
        }
        Err(error)
    }

    /// The live connection, or a new one when there is none. A connection
    /// found broken is dropped, and this request fails: the next connects.
    async fn linked(&self) -> anyhow::Result<Linked> {
        let mut state = self.state.lock().await;
        if let Some(linked) = state.current.take() {
            if linked.connection.status().connected() {
                state.current = Some(linked.clone());
                return Ok(linked);
            }
            close_in_background(linked.connection);
            self.brokers.lost();
            return Err(anyhow!("the broker connection was lost; the next request reconnects"));
        }
        if state
            .last_failed_connect
            .is_some_and(|at| at.elapsed() < CONNECT_BACKOFF)
        {
            return Err(anyhow!("the broker was unreachable less than {CONNECT_BACKOFF:?} ago"));
        }
        match open(&self.brokers, &self.name).await {
            Ok(linked) => {
                tracing::info!("ingest: connected to the broker again");
                state.current = Some(linked.clone());
                state.last_failed_connect = None;
                Ok(linked)
            }
            Err(error) => {
                state.last_failed_connect = Some(Instant::now());
                Err(error)
            }
        }
    }

    /// Drops `linked` if it is still the current connection.
    async fn forget(&self, linked: &Linked) {
        let mut state = self.state.lock().await;
        if let Some(current) = state
            .current
            .take_if(|current| Arc::ptr_eq(&current.connection, &linked.connection))
        {
            close_in_background(current.connection);
            self.brokers.lost();
        }
    }

    pub async fn close(&self) {
        if let Some(linked) = self.state.lock().await.current.take() {
            linked.publisher.close().await;
            let _ = linked.connection.close(200, "shutting down".into()).await;
        }
    }
}

async fn open(brokers: &Brokers, name: &str) -> anyhow::Result<Linked> {
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, brokers.connect(name))
        .await
        .map_err(|_| anyhow!("connecting to the broker took more than {CONNECT_TIMEOUT:?}"))??;
    let connection = Arc::new(connection);
    Ok(Linked {
        publisher: Publisher::new(connection.clone()),
        connection,
    })
}

/// A broken connection may still hold a socket; closing must not hold up the request.
fn close_in_background(connection: Arc<Connection>) {
    tokio::spawn(async move {
        let _ = connection.close(200, "dropped after a failure".into()).await;
    });
}
