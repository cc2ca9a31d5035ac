//! Several broker addresses, the nodes of one RabbitMQ cluster
//! (`amqp.urls`): connecting tries them in order, starting with the one
//! that served last, and after a loss the caller moves on to the next, so
//! that a host outlives the node it was connected to. One address
//! (`amqp.url`) is the same with a list of one.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::anyhow;
use lapin::Connection;

use crate::config::{Secret, redact_url};

/// The addresses, and which one to try first.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<Secret>,
    first: AtomicUsize,
}

impl Brokers {
    pub fn new(urls: &[Secret]) -> Self {
        assert!(
            !urls.is_empty(),
            "configuration validation guarantees one broker URL at least"
        );
        Self {
            urls: urls.to_vec(),
            first: AtomicUsize::new(0),
        }
    }

    /// Connects to the first address that answers, trying each once in
    /// order from the one that served last; names every failure (URLs
    /// without their passwords) when none does.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Connection> {
        let first = self.first.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            match super::connect(&self.urls[index], name).await {
                Ok(connection) => {
                    self.first.store(index, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!("connected to {}", self.address(index));
                    }
                    return Ok(connection);
                }
                Err(error) => failures.push(error.to_string()),
            }
        }
        match <[String; 1]>::try_from(failures) {
            Ok([only]) => Err(anyhow!(only)),
            Err(failures) => Err(anyhow!("no broker answered: {}", failures.join("; "))),
        }
    }

    /// The connection from the last `connect` was lost: the next `connect`
    /// starts with the following address (its node may be the one that went).
    pub fn lost(&self) {
        let next = (self.first.load(Ordering::Relaxed) + 1) % self.urls.len();
        self.first.store(next, Ordering::Relaxed);
    }

    fn address(&self, index: usize) -> String {
        redact_url(self.urls[index].expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(port: u16) -> Secret {
        Secret::new(format!("amqp://user:hunter2@127.0.0.1:{port}/%2f"))
    }

    #[tokio::test]
    async fn when_none_answers_every_address_is_named_without_its_password() {
        // Ports 1 and 2 of the loopback: nothing listens there.
        let brokers = Brokers::new(&[unreachable(1), unreachable(2)]);
        let error = brokers.connect("test").await.unwrap_err().to_string();
        assert!(
            error.contains("127.0.0.1:1/") && error.contains("127.0.0.1:2/"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_loss_moves_to_the_next_address_and_wraps_around() {
        let brokers = Brokers::new(&[unreachable(1), unreachable(2), unreachable(3)]);
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                brokers.lost();
                brokers.first.load(Ordering::Relaxed)
            })
            .collect();
        assert_eq!(firsts, [1, 2, 0, 1]);
    }
}
