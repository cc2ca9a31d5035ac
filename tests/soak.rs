//! The soak (issue 12): messages with unique ids go through real hosts
//! while faults are injected on a schedule, then a ledger reconciles them:
//! every id delivered at least once, or dead-lettered for a permanent
//! reason; nothing lost. Both tests run on RabbitMQ nodes of their own
//! (`support::broker_node`), never the shared broker.
//!
//! - `soak_with_faults`: one node and the schedule of faults (a host
//!   SIGKILLed twice, the broker restarted, the shop down, 503s and slow
//!   answers throughout, a hot swap, a fleet deploy, a second host joining
//!   and leaving).
//! - `cluster_failover`: three nodes, quorum queues, three hosts given
//!   every node's address; the node the hosts are connected to is stopped
//!   mid-stream and they carry on from the others.
//!
//! The defaults are the short form CI runs (each well under 3 minutes);
//! `scripts/soak` runs the long form through the environment:
//! `SOAK_MESSAGES`, `SOAK_DURATION` (the publishing window, over which the
//! faults are spread), `SOAK_HTTP_OUTAGE`, `SOAK_SETTLE` (how long the
//! hosts get to finish afterwards).

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use support::broker_node::{BrokerNode, Cluster};
use support::ledger::{Ledger, Misbehaviour};
use support::{ConfigDir, Host, TEST_SECRETS};

const EXCHANGE: &str = "crm.events";
const QUEUE: &str = "crm.account.changed";
/// One message in this many names a status the shop does not know: the
/// transform rejects it, and it must be dead-lettered with that reason.
const POISON_EVERY: usize = 50;
const UNKNOWN_STATUS: &str = "CLIENT_UNKNOWN";

/// The run's size, from the environment or the short defaults.
struct Settings {
    messages: usize,
    duration: Duration,
    http_outage: Duration,
    settle: Duration,
}

impl Settings {
    fn from_env(messages: usize, duration: u64) -> Self {
        Self {
            messages: env_or("SOAK_MESSAGES", messages),
            duration: Duration::from_secs(env_or("SOAK_DURATION", duration)),
            http_outage: Duration::from_secs(env_or("SOAK_HTTP_OUTAGE", 10)),
            settle: Duration::from_secs(env_or("SOAK_SETTLE", 120)),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults() {
    let settings = Settings::from_env(2000, 60);
    let mut node = BrokerNode::start("soak").await;
    let scene = Scene::new(&[node.url()], "classic").await;
    let faults = Faults::new();
    let mut host_a = scene.start_host(1).await;

    let publishing = scene.publish_all(&settings);
    let d = settings.duration;
    let at = |share: f64| faults.started + d.mul_f64(share);

    tokio::time::sleep_until(at(0.10).into()).await;
    faults.note(format!("SIGKILL host A (pid {}), started again", host_a.pid()));
    host_a.kill();
    host_a = scene.start_host(1).await;

    tokio::time::sleep_until(at(0.15).into()).await;
    let mut host_b = scene.start_host(2).await;
    faults.note(format!("host B (pid {}) joined", host_b.pid()));

    tokio::time::sleep_until(at(0.25).into()).await;
    faults.note(format!("HTTP server down for {:?}", settings.http_outage));
    scene.ledger.go_down();
    tokio::time::sleep(settings.http_outage).await;
    scene.ledger.come_back().await;
    faults.note("HTTP server back".into());

    tokio::time::sleep_until(at(0.45).into()).await;
    scene.hot_swap();
    faults.note("hot swap: the component file replaced by a new version".into());

    tokio::time::sleep_until(at(0.55).into()).await;
    faults.note("broker stopped".into());
    node.restart().await;
    faults.note("broker started again".into());

    tokio::time::sleep_until(at(0.70).into()).await;
    faults.note(format!("SIGKILL host A (pid {}), started again", host_a.pid()));
    host_a.kill();
    host_a = scene.start_host(1).await;

    tokio::time::sleep_until(at(0.75).into()).await;
    let version = scene.fleet_deploy().await;
    faults.note(format!("fleet deploy of version {version}"));

    tokio::time::sleep_until(at(0.85).into()).await;
    let status = host_b.terminate();
    faults.note(format!("host B left (SIGTERM, {status})"));

    let published = publishing.await.unwrap();
    let report = scene
        .settle_and_reconcile(&published, &settings, &faults, &[&host_a])
        .await;
    report.assert_nothing_lost(&[&host_a, &host_b]);
    // The shipped version, the hot-swapped one and the deployed one each delivered.
    assert!(report.versions.len() >= 3, "{:?}", report.versions);
    assert!(report.versions.contains_key(&version), "{:?}", report.versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover() {
    let settings = Settings::from_env(1000, 30);
    let mut cluster = Cluster::start("soak", 3).await;
    let scene = Scene::new(&cluster.urls(), "quorum").await;
    let faults = Faults::new();
    let mut hosts = Vec::new();
    for nth in 1..=3 {
        hosts.push(scene.start_host(nth).await);
    }
    faults.note("three hosts consuming the route".into());

    let publishing = scene.publish_all(&settings);
    tokio::time::sleep_until((faults.started + settings.duration.mul_f64(0.4)).into()).await;
    let pids: Vec<u32> = hosts.iter().map(Host::pid).collect();
    let (busiest, connected) = busiest_node(&cluster, &pids).await;
    let stopped_name = cluster.nodes[busiest].name.clone();
    cluster.nodes[busiest].stop().await;
    faults.note(format!(
        "stopped node {stopped_name}, which {connected} of the 3 hosts were connected to"
    ));

    // Every host goes on from one of the nodes left.
    for pid in &pids {
        let name = format!("passerelle pid {pid}");
        support::eventually(
            &format!("host {pid} to reconnect to another node"),
            Duration::from_secs(90),
            async || {
                for node in cluster.nodes.iter().filter(|node| node.is_running()) {
                    if node.has_connection(&name).await {
                        return Some(());
                    }
                }
                None
            },
        )
        .await;
    }
    faults.note("every host reconnected to another node".into());

    let published = publishing.await.unwrap();
    let host_refs: Vec<&Host> = hosts.iter().collect();
    let report = scene
        .settle_and_reconcile(&published, &settings, &faults, &host_refs)
        .await;
    report.assert_nothing_lost(&host_refs);
}

/// The node with the most host connections, and how many.
async fn busiest_node(cluster: &Cluster, pids: &[u32]) -> (usize, usize) {
    let mut counts = Vec::new();
    for node in &cluster.nodes {
        let mut count = 0;
        for pid in pids {
            count += usize::from(node.has_connection(&format!("passerelle pid {pid}")).await);
        }
        counts.push(count);
    }
    assert!(counts.iter().sum::<usize>() > 0, "no host connection on any node");
    let busiest = (0..counts.len()).max_by_key(|&n| counts[n]).unwrap();
    (busiest, counts[busiest])
}

/// What the faults were, and when.
struct Faults {
    started: Instant,
    notes: Mutex<Vec<String>>,
}

impl Faults {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            notes: Mutex::default(),
        }
    }

    fn note(&self, what: String) {
        let line = format!("{:>7.1}s  {what}", self.started.elapsed().as_secs_f64());
        eprintln!("soak: {line}");
        self.notes.lock().unwrap().push(line);
    }
}

/// One run's world: the broker addresses, the shop's ledger, the hosts'
/// configuration and component.
struct Scene {
    urls: Vec<String>,
    ledger: Ledger,
    dir: ConfigDir,
    config: PathBuf,
}

impl Scene {
    async fn new(urls: &[String], queue_type: &str) -> Self {
        let ledger = Ledger::start().await;
        ledger.misbehave(Misbehaviour {
            unavailable: 0.10,
            slow: 0.05,
            slow_delay: Duration::from_millis(1500),
        });
        let dir = ConfigDir::new();
        std::fs::copy(
            support::transform("crm-to-shop"),
            dir.dir.path().join("crm-to-shop.wasm"),
        )
        .unwrap();
        let config = dir.write("passerelle.yaml", &config_yaml(urls, queue_type, &ledger));
        Self {
            urls: urls.to_vec(),
            ledger,
            dir,
            config,
        }
    }

    /// Starts a host and waits until it is the `nth` consumer of the route.
    async fn start_host(&self, nth: u32) -> Host {
        let host = Host::start_with_env(&self.config, TEST_SECRETS);
        let deadline = Instant::now() + Duration::from_secs(120);
        while consumers(&self.urls).await < nth {
            assert!(Instant::now() < deadline, "host {nth} did not consume:\n{}", host.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        host
    }

    /// Publishes every message over the run's duration, in the background;
    /// gives the ids the broker confirmed.
    fn publish_all(&self, settings: &Settings) -> tokio::task::JoinHandle<BTreeSet<String>> {
        let mut feeder = Feeder::new(&self.urls);
        let (messages, duration) = (settings.messages, settings.duration);
        tokio::spawn(async move {
            let start = Instant::now();
            let mut published = BTreeSet::new();
            for n in 0..messages {
                let due = start + duration.mul_f64(n as f64 / messages as f64);
                tokio::time::sleep_until(due.into()).await;
                let (id, body) = account(n);
                feeder.publish(&id, &body).await;
                published.insert(id);
            }
            published
        })
    }

    /// Replaces the component file the way deploy tools do (write beside, rename).
    fn hot_swap(&self) {
        let target = self.dir.dir.path().join("crm-to-shop.wasm");
        let beside = self.dir.dir.path().join("crm-to-shop.wasm.new");
        std::fs::write(&beside, support::new_version()).unwrap();
        std::fs::rename(&beside, &target).unwrap();
    }

    /// `passerelle deploy` of another new version to every host, signed
    /// with the test fleet key; its version.
    async fn fleet_deploy(&self) -> String {
        let component = self.dir.dir.path().join("deployed.wasm");
        std::fs::write(&component, support::new_version()).unwrap();
        let config = self.config.clone();
        let output = tokio::task::spawn_blocking(move || {
            support::operator_command(&["deploy", "crm-to-shop", &component.display().to_string()], &config)
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "deploy failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // "deployed <version> to route crm-to-shop on every host"
        stdout.split_whitespace().nth(1).unwrap_or_default().to_string()
    }

    /// Waits (up to `settle`) until every good id reached the shop and
    /// every poisoned one the dead-letter queue, then drains that queue and
    /// reconciles.
    async fn settle_and_reconcile(
        &self,
        published: &BTreeSet<String>,
        settings: &Settings,
        faults: &Faults,
        hosts: &[&Host],
    ) -> Report {
        let poisoned: BTreeSet<&String> = published.iter().filter(|id| is_poisoned(id)).collect();
        let deadline = Instant::now() + settings.settle;
        loop {
            let accepted = self.ledger.accepted();
            let delivered = published.iter().filter(|id| accepted.contains_key(*id)).count();
            let dead = depth(&self.urls, &format!("{QUEUE}.dead")).await;
            if delivered + poisoned.len() == published.len() && dead as usize >= poisoned.len() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "soak: gave up waiting after {:?}: {delivered} delivered, {dead} dead",
                    settings.settle
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let dead_letters = drain(&self.urls, &format!("{QUEUE}.dead")).await;
        let report = Report::reconcile(published, &self.ledger, dead_letters, faults);
        eprintln!("{report}");
        if !report.is_clean() {
            for host in hosts {
                eprintln!("--- host log ---\n{}", host.log());
            }
        }
        report
    }
}

fn config_yaml(urls: &[String], queue_type: &str, ledger: &Ledger) -> String {
    format!(
        r#"
amqp:
  urls: [{urls}]
  shutdown_grace: 10s
endpoints:
  shop:
    base_url: {base}
    auth: {{ bearer: {{ token_env: TEST_SHOP_TOKEN }} }}
    timeout: 2s
    breaker: {{ failures: 5, cool_down: 2s, max_cool_down: 10s }}
    operations:
      upsertBusiness:
        method: PUT
        uri: businesses/{{crmId}}
        parameters:
          crmId: {{ location: uri, required: true }}
          business: {{ location: json }}
          status: {{ location: json }}
          country: {{ location: json }}
routes:
  crm-to-shop:
    queue: {QUEUE}
    queue_type: {queue_type}
    bindings: [{{ exchange: {EXCHANGE}, routing_key: "account.*" }}]
    transform: crm-to-shop.wasm
    endpoints: [shop]
    concurrency: 16
    retry: {{ immediate: 2, backoff: 100ms, delays: [1s, 2s, 5s, 10s, 20s, 40s] }}
{fleet}"#,
        urls = urls.join(", "),
        base = ledger.base_url(),
        // Fleet deploys are signed: hosts check them with the test key.
        fleet = support::fleet_section(),
    )
}

/// The n-th CRM account; one in `POISON_EVERY` has a status the shop does not know.
fn account(n: usize) -> (String, String) {
    let id = format!("soak-{n}");
    let status = if n % POISON_EVERY == POISON_EVERY - 1 {
        UNKNOWN_STATUS
    } else {
        "CLIENT_ACTIVE"
    };
    let body = format!(r#"{{"Id": "{id}", "Name": "Account {n}", "Status__c": "{status}", "Country__c": "FR"}}"#);
    (id, body)
}

fn is_poisoned(id: &str) -> bool {
    let n = id.strip_prefix("soak-").and_then(|n| n.parse::<usize>().ok());
    n.is_some_and(|n| n % POISON_EVERY == POISON_EVERY - 1)
}

/// The test's publisher: persistent, mandatory, confirmed; it rides out
/// a broker restart or a lost node by connecting again (next address
/// first) until the broker confirms. A message that was taken but not
/// confirmed is published again: a duplicate, never a loss.
struct Feeder {
    urls: Vec<String>,
    next: usize,
    channel: Option<(Connection, Channel)>,
}

impl Feeder {
    fn new(urls: &[String]) -> Self {
        Self {
            urls: urls.to_vec(),
            next: 0,
            channel: None,
        }
    }

    async fn publish(&mut self, id: &str, body: &str) {
        loop {
            match self.try_publish(id, body).await {
                Ok(()) => return,
                Err(error) => {
                    eprintln!("publishing {id} failed ({error}); again");
                    self.channel = None;
                    self.next += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    async fn try_publish(&mut self, id: &str, body: &str) -> Result<(), String> {
        if self.channel.is_none() {
            let url = &self.urls[self.next % self.urls.len()];
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            self.channel = Some((connection, channel));
        }
        let (_, channel) = self.channel.as_ref().unwrap();
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    "account.updated".into(),
                    options,
                    body.as_bytes(),
                    properties,
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            if confirm.is_nack() {
                return Err("nacked".to_string());
            }
            if confirm.take_message().is_some() {
                return Err("returned: no queue bound".to_string());
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .map_err(|_| "no confirm within 10 s".to_string())?
    }
}

/// Opens a channel on the first node that answers.
async fn any_channel(urls: &[String]) -> Option<(Connection, Channel)> {
    for url in urls {
        if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            return Some((connection, channel));
        }
    }
    None
}

async fn passive(urls: &[String], queue: &str) -> Option<lapin::Queue> {
    let (connection, channel) = any_channel(urls).await?;
    let found = support::declare_passive(&channel, queue).await;
    let _ = connection.close(200, "".into()).await;
    found
}

async fn consumers(urls: &[String]) -> u32 {
    passive(urls, QUEUE).await.map_or(0, |queue| queue.consumer_count())
}

async fn depth(urls: &[String], queue: &str) -> u32 {
    passive(urls, queue).await.map_or(0, |queue| queue.message_count())
}

/// A dead letter: its message id and the reason it records.
struct DeadLetter {
    id: String,
    reason: String,
}

async fn drain(urls: &[String], queue: &str) -> Vec<DeadLetter> {
    let (connection, channel) = any_channel(urls)
        .await
        .expect("no broker node answers to drain the dead letters");
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let reason = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("x-passerelle-reason").cloned())
            .map(|value| match value {
                lapin::types::AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        taken.push(DeadLetter { id, reason });
    }
    let _ = connection.close(200, "".into()).await;
    taken
}

/// The reconciliation: published against the ledger and the dead letters.
struct Report {
    total: usize,
    delivered: usize,
    lost: Vec<String>,
    duplicated: usize,
    dead_lettered: usize,
    /// Dead letters of good messages, or without the reason that names the bad value.
    wrongly_dead: Vec<String>,
    faults: Vec<String>,
    misbehaved: (u64, u64),
    /// Requests accepted per transform version: the swaps took effect.
    versions: std::collections::BTreeMap<String, u32>,
    duration: Duration,
}

impl Report {
    fn reconcile(
        published: &BTreeSet<String>,
        ledger: &Ledger,
        dead_letters: Vec<DeadLetter>,
        faults: &Faults,
    ) -> Self {
        let accepted = ledger.accepted();
        let dead_ids: BTreeSet<&str> = dead_letters.iter().map(|letter| letter.id.as_str()).collect();
        let wrongly_dead = dead_letters
            .iter()
            .filter(|letter| !(is_poisoned(&letter.id) && letter.reason.contains(UNKNOWN_STATUS)))
            .map(|letter| format!("{}: {}", letter.id, letter.reason))
            .collect();
        Self {
            total: published.len(),
            delivered: published.iter().filter(|id| accepted.contains_key(*id)).count(),
            lost: published
                .iter()
                .filter(|id| !accepted.contains_key(*id) && !dead_ids.contains(id.as_str()))
                .cloned()
                .collect(),
            duplicated: accepted.values().filter(|&&times| times > 1).count(),
            dead_lettered: dead_letters.len(),
            wrongly_dead,
            faults: faults.notes.lock().unwrap().clone(),
            misbehaved: ledger.misbehaved(),
            versions: ledger.versions(),
            duration: faults.started.elapsed(),
        }
    }

    fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.wrongly_dead.is_empty()
    }

    fn assert_nothing_lost(&self, hosts: &[&Host]) {
        let _ = hosts; // their logs were printed by settle_and_reconcile when not clean
        assert!(
            self.lost.is_empty(),
            "{} lost: {:?}",
            self.lost.len(),
            first(&self.lost)
        );
        assert!(
            self.wrongly_dead.is_empty(),
            "dead letters without a permanent reason: {:?}",
            first(&self.wrongly_dead)
        );
        let poisoned = (0..self.total).filter(|n| n % POISON_EVERY == POISON_EVERY - 1).count();
        assert_eq!(
            self.dead_lettered, poisoned,
            "every poisoned message, and only those, dead-lettered"
        );
        assert_eq!(self.delivered + self.dead_lettered, self.total);
    }
}

fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(10)]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "soak: reconciled after {:.0} s", self.duration.as_secs_f64())?;
        writeln!(f, "| messages | delivered | lost | duplicated | dead-lettered |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|")?;
        writeln!(
            f,
            "| {} | {} | {} | {} | {} |",
            self.total,
            self.delivered,
            self.lost.len(),
            self.duplicated,
            self.dead_lettered
        )?;
        writeln!(f, "faults injected:")?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        let (unavailable, slow) = self.misbehaved;
        writeln!(
            f,
            "  throughout: {unavailable} requests answered 503, {slow} answered slowly (1.5 s)"
        )?;
        let versions: Vec<String> = self.versions.iter().map(|(v, n)| format!("{v} ({n})")).collect();
        writeln!(f, "accepted per transform version: {}", versions.join(", "))
    }
}
