//! Passerelle as a contestant: the real `passerelle run` binary as a
//! separate process, with a configuration written here (both shipped
//! routes loaded, only crm-to-shop fed; an admin server for `/readyz`;
//! its own compile cache through `PASSERELLE_CACHE_DIR`). Also what only
//! Passerelle has: start-up time to ready, and swap latency (a replaced
//! `.wasm` file to the first delivery made by the new version).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use passerelle::config::Config;
use passerelle::version::Version;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::broker::{AMQP_URL, Broker};
use crate::median;
use crate::process::{Service, peak_rss};
use crate::server::Server;

const ADMIN_TOKEN: &str = "passerelle-bench-admin-token";
/// The steady stream the swap rounds are measured under.
const PUBLISH_EVERY: Duration = Duration::from_millis(2);
/// How long start-up or a swap may take before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Passerelle {
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    pub config: Config,
    /// crm-to-shop's work queue and dead-letter queue.
    pub queue: String,
    pub dead_letters: String,
    /// crm-to-shop's component, a copy that the swap rounds replace.
    component: PathBuf,
    admin_port: u16,
}

impl Passerelle {
    /// Copies the shipped transforms (and their fixtures) into `dir`,
    /// writes the configuration there and declares its broker objects.
    /// `guest` is the crm-to-shop build the route runs: `crm-to-shop` (Rust),
    /// `crm-to-shop-js` or `crm-to-shop-py`.
    pub async fn prepare(
        broker: &Broker,
        bin: &Path,
        transforms: &Path,
        dir: &Path,
        server_port: u16,
        concurrency: u16,
        guest: &str,
    ) -> anyhow::Result<Self> {
        for (source, file) in [
            (format!("{guest}.wasm"), "crm-to-shop.wasm"),
            (format!("{guest}.fixtures.json"), "crm-to-shop.fixtures.json"),
            ("shop-to-crm.wasm".into(), "shop-to-crm.wasm"),
            ("shop-to-crm.fixtures.json".into(), "shop-to-crm.fixtures.json"),
        ] {
            let from = transforms.join(source);
            std::fs::copy(&from, dir.join(file))
                .with_context(|| format!("{}: run scripts/build-transforms first", from.display()))?;
        }
        let admin_port = free_port()?;
        let config_path = dir.join("passerelle.yaml");
        std::fs::write(&config_path, yaml(broker, server_port, admin_port, concurrency))?;
        let config = Config::load_for_broker(&config_path)?;
        broker.own_passerelle(&config).await?;
        let route = config.route("crm-to-shop")?;
        Ok(Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            queue: route.queue.clone(),
            dead_letters: route.dead_letter_queue(),
            component: route.transform.clone(),
            config_path,
            admin_port,
            config,
        })
    }

    /// `passerelle run` with this configuration, logging into `log`.
    pub fn start(&self, log: &Path) -> anyhow::Result<Service> {
        let mut command = Command::new(&self.bin);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("PASSERELLE_CACHE_DIR", self.dir.join("cache"))
            .env("PASSERELLE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Service::start("passerelle run", command, log, false)
    }

    /// Polls `/readyz` until it answers 200.
    async fn ready(&self, service: &mut Service) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            service.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "passerelle not ready after {PHASE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts and stops once, so that the rounds find the compile cache
    /// warm: a round's peak RSS is then the service's under load, not
    /// Cranelift's compiling both transforms (with transparent huge pages,
    /// about 125 MiB against 58; the swap phase measures that case).
    /// `start_up` warms it too, when it runs.
    pub async fn warm_cache(&self, log: &Path) -> anyhow::Result<()> {
        let mut service = self.start(log)?;
        self.ready(&mut service).await?;
        service.stop().await
    }

    /// Milliseconds from start to `/readyz` answering 200: the first start
    /// (compile cache cold), then `rounds` starts with the cache warm.
    pub async fn start_up(&self, rounds: usize, log: &Path) -> anyhow::Result<StartUp> {
        let mut times = Vec::new();
        for round in 0..=rounds {
            let started = Instant::now();
            let mut service = self.start(log)?;
            self.ready(&mut service).await?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            service.stop().await?;
            let cache = if round == 0 { "cold" } else { "warm" };
            println!("start-up {round}: {ms:>7.1} ms to ready ({cache} compile cache)");
            times.push(ms);
        }
        Ok(StartUp {
            cold_ms: times.remove(0),
            warm_ms: median(times),
        })
    }

    /// Each round replaces crm-to-shop's file with a new version while a
    /// steady stream flows; milliseconds until the new version's first
    /// delivery. Includes the watcher's debounce, the compile and the
    /// fixtures check.
    pub async fn swaps(&self, broker: &Broker, server: &Server, rounds: usize, log: &Path) -> anyhow::Result<Swaps> {
        let shipped = std::fs::read(&self.component)?;
        server.arm(0);
        let first = server.first_call_from(Version::of(&shipped).as_str());
        let mut service = self.start(log)?;
        self.ready(&mut service).await?;
        let stop = CancellationToken::new();
        let measured = async {
            tokio::time::timeout(PHASE_TIMEOUT, first)
                .await
                .context("passerelle made no delivery")??;
            let latencies = self.replace_rounds(server, &shipped, rounds).await;
            stop.cancel();
            latencies
        };
        let (published, latencies) = tokio::join!(
            broker.publish_steadily(&self.queue, PUBLISH_EVERY, stop.clone()),
            measured
        );
        let peak_rss = peak_rss(service.pid());
        service.stop().await?;
        std::fs::write(&self.component, &shipped)?;
        let published = published?;
        let latencies = latencies?;
        let window = server.window();
        ensure!(
            window.mismatches == 0,
            "swap rounds: wrong requests: {:?}",
            window.examples
        );
        let dead = broker.depth(&self.dead_letters).await?;
        ensure!(dead == 0, "swap rounds: {dead} of {published} messages dead-lettered");
        Ok(Swaps { latencies, peak_rss })
    }

    async fn replace_rounds(&self, server: &Server, shipped: &[u8], rounds: usize) -> anyhow::Result<Vec<f64>> {
        let mut latencies = Vec::new();
        for round in 1..=rounds {
            let bytes = new_version(shipped);
            let version = Version::of(&bytes);
            let first = server.first_call_from(version.as_str());
            // As a deploy tool does: write beside it, then rename.
            let incoming = self.component.with_extension("incoming");
            std::fs::write(&incoming, &bytes)?;
            std::fs::rename(&incoming, &self.component)?;
            let replaced = Instant::now();
            let arrived = tokio::time::timeout(PHASE_TIMEOUT, first)
                .await
                .with_context(|| format!("swap {round}: no delivery from {version} within {PHASE_TIMEOUT:?}"))??;
            let ms = arrived.saturating_duration_since(replaced).as_secs_f64() * 1e3;
            println!("swap {round}: file replaced -> first delivery from {version} {ms:>7.1} ms");
            latencies.push(ms);
        }
        Ok(latencies)
    }
}

/// The swap phase's figures.
pub struct Swaps {
    /// Milliseconds from each file replaced to its first delivery.
    pub latencies: Vec<f64>,
    /// The serving host's peak RSS (VmHWM), in bytes: it compiled each new
    /// version while it served, as a host in production does on a swap.
    pub peak_rss: Option<u64>,
}

pub struct StartUp {
    pub cold_ms: f64,
    pub warm_ms: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The shipped bytes with a random custom section: the same code, a new
/// version (as in host/benches/reload.rs).
fn new_version(shipped: &[u8]) -> Vec<u8> {
    let mut bytes = shipped.to_vec();
    let name = b"passerelle-bench";
    let payload = format!("{:032x}", rand::random::<u128>());
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8); // LEB128: one byte below 128
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// The demo's configuration (examples/passerelle.yaml) with this run's
/// names, no credentials, crm-to-shop at `concurrency`.
fn yaml(broker: &Broker, server_port: u16, admin_port: u16, concurrency: u16) -> String {
    format!(
        r#"
amqp:
  url: {AMQP_URL}
  shutdown_grace: 10s
  control_exchange: {control}
endpoints:
  shop:
    base_url: http://127.0.0.1:{server_port}/api/
    timeout: 5s
    operations:
      upsertBusiness:
        method: PUT
        uri: businesses/{{crmId}}
        parameters:
          crmId: {{ location: uri }}
          business: {{ location: json, required: true }}
          status: {{ location: json, required: true }}
          country: {{ location: json, required: true }}
  salesforce:
    base_url: http://127.0.0.1:{server_port}/crm/
    timeout: 5s
    operations:
      updateAccount:
        method: PATCH
        uri: sobjects/Account/{{accountId}}
        parameters:
          accountId: {{ location: uri }}
          Name: {{ location: json }}
          Status__c: {{ location: json }}
          Country__c: {{ location: json }}
routes:
  crm-to-shop:
    queue: {crm_queue}
    bindings: [{{ exchange: {crm_exchange}, routing_key: "account.*" }}]
    transform: crm-to-shop.wasm
    endpoints: [shop]
    config: &code_tables
      status_codes: '{{"CLIENT_ACTIVE": 70}}'
      country_ids: '{{"FR": 76}}'
    concurrency: {concurrency}
    retry: {{ immediate: 2, backoff: 200ms, delays: [5s, 30s, 5m] }}
    limits: {{ time: 50ms, memory: 32MiB }}
  shop-to-crm:
    queue: {shop_queue}
    bindings: [{{ exchange: {shop_exchange}, routing_key: "business.*" }}]
    transform: shop-to-crm.wasm
    endpoints: [salesforce]
    config: *code_tables
    concurrency: 16
    limits: {{ time: 50ms, memory: 32MiB }}
admin:
  listen: 127.0.0.1:{admin_port}
  token_env: PASSERELLE_ADMIN_TOKEN
"#,
        control = broker.name("control"),
        crm_queue = broker.name("crm.account.changed"),
        crm_exchange = broker.name("crm.events"),
        shop_queue = broker.name("shop.business.changed"),
        shop_exchange = broker.name("shop.events"),
    )
}
