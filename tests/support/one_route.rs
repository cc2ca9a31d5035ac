//! One route on an exchange, queues and an HTTP server of its own, run by
//! a real host: for tests about what one component does with what it is
//! sent (`tests/hostile.rs`, `tests/languages.rs`).

use std::path::Path;
use std::time::Duration;

use super::{AMQP_URL, Broker, ConfigDir, Host, HttpServer, TEST_SECRETS, eventually};

pub struct OneRoute {
    pub broker: Broker,
    pub server: HttpServer,
    pub exchange: String,
    pub queue: String,
    pub host: Host,
    _dir: ConfigDir,
}

impl OneRoute {
    /// Starts a host with route `name` running `wasm`, and waits up to
    /// `ready_within` for it to consume. `endpoints` writes the
    /// `endpoints:` entries (indented by two spaces) given the server that
    /// stands behind them; `route` is the route's keys past `transform`
    /// (indented by four spaces).
    pub async fn start(
        name: &str,
        wasm: &Path,
        endpoints: impl FnOnce(&HttpServer) -> String,
        route: &str,
        ready_within: Duration,
    ) -> Self {
        let broker = Broker::connect().await;
        let server = HttpServer::start().await;
        let (exchange, queue) = (broker.exchange(&format!("{name}.in")), broker.queue(name));
        let control = broker.exchange("passerelle.control");
        broker.also_delete_queue(&format!("{control}.history.{name}"));
        let dir = ConfigDir::new();
        let yaml = format!(
            "amqp:\n  url: {AMQP_URL}\n  control_exchange: {control}\nendpoints:\n{endpoints}routes:\n  {name}:\n    queue: {queue}\n    bindings: [{{ exchange: {exchange} }}]\n    transform: {wasm}\n{route}",
            endpoints = endpoints(&server),
            wasm = wasm.display(),
        );
        let config = dir.write("passerelle.yaml", &yaml);
        let host = Host::start_with_env(&config, TEST_SECRETS);
        eventually("the host consuming", ready_within, async || {
            (broker.consumers(&queue).await >= 1).then_some(())
        })
        .await;
        Self {
            broker,
            server,
            exchange,
            queue,
            host,
            _dir: dir,
        }
    }

    pub async fn publish(&self, id: &str, body: &[u8]) {
        self.broker.publish(&self.exchange, "any", body, Some(id)).await;
    }

    /// The route's dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}
