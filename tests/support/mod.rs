//! What the end-to-end tests share: the real components built from this
//! repository, the real broker (with names unique to each test, deleted
//! afterwards), a real HTTP server that records what it receives and
//! answers as told, and the real `passerelle` binary as a child process.
#![allow(dead_code)] // each test file uses its own part of this

pub mod broker_node;
pub mod browser;
pub mod ledger;
pub mod one_route;
pub mod swap;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A shipped transform, as built by scripts/build-transforms.
pub fn transform(name: &str) -> PathBuf {
    built("transforms", name)
}

/// A hostile guest kept for tests.
pub fn fixture(name: &str) -> PathBuf {
    built("fixtures", name)
}

fn built(kind: &str, name: &str) -> PathBuf {
    let path = repo().join("build").join(kind).join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-transforms first",
        path.display()
    );
    path
}

pub fn passerelle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
}

/// Runs an operator command against a test's configuration, with the
/// secrets that configuration names.
pub fn operator_command(args: &[&str], config: &Path) -> std::process::Output {
    // Without the endpoints' secrets: operator commands talk to the broker
    // only, and must not need them. The fleet's signing key is there for
    // `deploy` and `rollback`.
    let output = passerelle()
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(FLEET_SIGNING_KEY_ENV, FLEET_SIGNING_KEY)
        .output()
        .unwrap();
    keep_for_secret_scan(&format!("passerelle {}", args.join(" ")), &output);
    output
}

/// Keeps what a command printed where scripts/test searches for secrets.
pub fn keep_for_secret_scan(command: &str, output: &std::process::Output) {
    let text = format!(
        "{command}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    keep_seen("command", &text);
}

/// Keeps `text` (what a test saw: dead-letter headers, `/metrics`,
/// `/status`, a command's output) in `$PASSERELLE_TEST_LOGS`, where
/// scripts/test searches every file for the test secrets.
pub fn keep_seen(what: &str, text: &str) {
    if let Some(dir) = std::env::var_os("PASSERELLE_TEST_LOGS") {
        let name = format!("seen-{what}-{:08x}.txt", rand::random::<u32>());
        let _ = std::fs::write(Path::new(&dir).join(name), text);
    }
}

/// A suffix that keeps this test's broker objects apart from every other.
pub fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real RabbitMQ. Queues and exchanges named through it are deleted
/// when it is dropped, even when the test fails.
pub struct Broker {
    connection: Connection,
    pub channel: Channel,
    suffix: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ is not reachable at 127.0.0.1:5672 ({e}): start it with `rabbitmq-server -detached`")
            });
        let channel = connection.create_channel().await.unwrap();
        Self {
            connection,
            channel,
            suffix: unique_suffix(),
            queues: Mutex::default(),
            exchanges: Mutex::default(),
        }
    }

    /// A queue name for this test; it, its dead-letter queue and the
    /// delayed-retry queues of the default ladder are deleted afterwards
    /// (a test with other delays names its own with `also_delete_queue`).
    pub fn queue(&self, base: &str) -> String {
        let name = format!("{base}.{}", self.suffix);
        let mut queues = self.queues.lock().unwrap();
        queues.push(name.clone());
        for suffix in ["dead", "retry.5s", "retry.30s", "retry.5m"] {
            queues.push(format!("{name}.{suffix}"));
        }
        name
    }

    /// Another queue to delete afterwards (one the host declares for a route).
    pub fn also_delete_queue(&self, name: &str) {
        self.queues.lock().unwrap().push(name.to_string());
    }

    pub fn exchange(&self, base: &str) -> String {
        let name = format!("{base}.{}", self.suffix);
        self.exchanges.lock().unwrap().push(name.clone());
        name
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        self.publish_with_headers(exchange, routing_key, body, message_id, &[])
            .await;
    }

    pub async fn publish_with_headers(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
        headers: &[(&str, &str)],
    ) {
        let mut table = lapin::types::FieldTable::default();
        for (name, value) in headers {
            table.insert((*name).into(), lapin::types::AMQPValue::LongString((*value).into()));
        }
        let mut properties = BasicProperties::default()
            .with_headers(table)
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        self.publish_with_properties(exchange, routing_key, body, properties)
            .await;
    }

    /// Publishes with these properties as they are, and waits for the confirm.
    pub async fn publish_with_properties(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Declares a durable queue the way the host does (for tests that
    /// publish before the host starts).
    pub async fn declare_queue(&self, name: &str) {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(name.into(), options, FieldTable::default())
            .await
            .unwrap();
    }

    /// Declares a topic exchange and a queue bound to it, as a consumer
    /// of what the host publishes would.
    pub async fn bind_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        let durable = lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.declare_queue(queue).await;
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn passive(&self, queue: &str) -> Option<lapin::Queue> {
        // A passive declare of a missing queue closes the channel: use a
        // throwaway one.
        let channel = self.connection.create_channel().await.unwrap();
        let queue = declare_passive(&channel, queue).await;
        let _ = channel.close(200, "".into()).await;
        queue
    }

    /// A channel of its own, for a test that consumes.
    pub async fn open_channel(&self) -> Channel {
        self.connection.create_channel().await.unwrap()
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.message_count())
    }

    pub async fn consumers(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.consumer_count())
    }

    pub async fn wait_for_consumers(&self, queue: &str, count: u32) {
        eventually(
            &format!("{count} consumer(s) on {queue}"),
            Duration::from_secs(60),
            async || (self.consumers(queue).await >= count).then_some(()),
        )
        .await;
    }

    /// Takes every message from a queue (acking them).
    pub async fn drain(&self, queue: &str) -> Vec<Taken> {
        let mut taken = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .map(header_texts)
                .unwrap_or_default();
            keep_seen("message", &format!("from {queue}: {headers:?}"));
            taken.push(Taken {
                body: message.delivery.data.clone(),
                headers,
                message_id: message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string()),
            });
        }
        taken
    }
}

/// A message taken from a queue, its headers as text.
#[derive(Debug, Clone)]
pub struct Taken {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub message_id: Option<String>,
}

fn header_texts(table: &FieldTable) -> BTreeMap<String, String> {
    table
        .inner()
        .iter()
        .map(|(name, value)| {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            (name.to_string(), text)
        })
        .collect()
}

impl Drop for Broker {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap());
        // Drop cannot await: delete from a thread with its own runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in exchanges {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), Default::default())
                        .await;
                }
                let _ = connection.close(200, "".into()).await;
            });
        })
        .join()
        .ok();
    }
}

/// One request as the test server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// How the test server answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long to wait before answering.
    pub delay: Duration,
    /// When set, the body is sent at once but ends only this much later
    /// (chunked), as a server that streams its answer does.
    pub body_ends_after: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            body_ends_after: None,
        }
    }

    pub fn ending_body_after(mut self, delay: Duration) -> Self {
        self.body_ends_after = Some(delay);
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }
}

#[derive(Default)]
struct ServerState {
    received: Vec<Received>,
    /// Answers for the next requests, in order; then `default`.
    script: VecDeque<Reply>,
    default: Option<Reply>,
    tokens_issued: u32,
    /// TCP connections accepted.
    connections: usize,
}

/// A real HTTP server on a free local port. It records every request and
/// answers 200 unless told otherwise. `POST /oauth/token` issues OAuth2
/// client-credentials tokens `token-1`, `token-2`, …
#[derive(Clone)]
pub struct HttpServer {
    pub port: u16,
    state: Arc<Mutex<ServerState>>,
}

impl HttpServer {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ServerState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(record).with_state(state.clone());
        let counted = state.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| counted.lock().unwrap().connections += 1);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, state }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// A base URL ending in `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn reply_next(&self, reply: Reply) {
        self.state.lock().unwrap().script.push_back(reply);
    }

    pub fn reply_always(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().default = reply;
    }

    /// Requests received, OAuth token requests included.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Requests received except OAuth token requests.
    pub fn calls(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.uri != "/oauth/token")
            .collect()
    }

    pub async fn wait_for_calls(&self, count: usize, timeout: Duration) -> Vec<Received> {
        eventually(&format!("{count} HTTP call(s)"), timeout, async || {
            let calls = self.calls();
            (calls.len() >= count).then_some(calls)
        })
        .await
    }
}

async fn record(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<ServerState>>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
    let received = Received {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body,
        at: Instant::now(),
    };
    let reply = next_reply(&mut state.lock().unwrap(), received);
    tokio::time::sleep(reply.delay).await;
    let mut response = axum::response::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = match reply.body_ends_after {
        None => axum::body::Body::from(reply.body),
        Some(delay) => {
            let now = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(reply.body) });
            let end_later = futures_util::stream::once(async move {
                tokio::time::sleep(delay).await;
                Ok(String::new())
            });
            axum::body::Body::from_stream(futures_util::StreamExt::chain(now, end_later))
        }
    };
    response.body(body).unwrap()
}

fn next_reply(state: &mut ServerState, received: Received) -> Reply {
    let is_token_request = received.uri == "/oauth/token";
    state.received.push(received);
    if is_token_request {
        state.tokens_issued += 1;
        let token = format!(
            r#"{{"access_token": "token-{}", "expires_in": 3600}}"#,
            state.tokens_issued
        );
        return Reply::status(200)
            .with_body(&token)
            .with_header("content-type", "application/json");
    }
    let scripted = state.script.pop_front();
    scripted.or_else(|| state.default.clone()).unwrap_or(Reply::status(200))
}

/// A running `passerelle run`, its log in a file; killed when dropped.
pub struct Host {
    child: Child,
    log: PathBuf,
}

impl Host {
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let log = config.with_extension(format!("{:08x}.log", rand::random::<u32>()));
        let file = std::fs::File::create(&log).unwrap();
        let child = passerelle()
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "passerelle=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting passerelle run");
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `what` at least `count` times.
    pub async fn wait_for_log(&self, what: &str, count: usize) {
        eventually(
            &format!("{count} log line(s) with {what:?}"),
            Duration::from_secs(60),
            async || (self.log().matches(what).count() >= count).then_some(()),
        )
        .await;
    }

    /// The admin server's base URL (`http://127.0.0.1:PORT`), from the log
    /// line that announces it; waits for it.
    pub async fn admin_url(&self) -> String {
        self.announced_url("admin server").await
    }

    /// The ingest server's base URL, the same way.
    pub async fn ingest_url(&self) -> String {
        self.announced_url("ingest server").await
    }

    async fn announced_url(&self, server: &str) -> String {
        let announcement = format!("{server} on http://");
        eventually(
            &format!("the {server} to listen"),
            Duration::from_secs(30),
            async || {
                let log = self.log();
                let start = log.find(&announcement)? + server.len() + " on ".len();
                let url = log[start..].split_whitespace().next()?;
                Some(url.trim_end_matches('/').to_string())
            },
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "passerelle did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- passerelle log ---\n{}", self.log());
        }
        // scripts/test collects every host's log and greps it for secrets.
        if let Some(dir) = std::env::var_os("PASSERELLE_TEST_LOGS") {
            let name = self.log.file_name().unwrap_or_default();
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A temporary folder with a configuration file in it.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

/// The shop endpoint as the design doc declares it, against `server`;
/// `extra` YAML lines (indented by four spaces) are added to it.
pub fn shop_endpoint(server: &HttpServer, extra: &str) -> String {
    format!(
        r#"
  shop:
    base_url: {base}
    auth: {{ bearer: {{ token_env: TEST_SHOP_TOKEN }} }}
    timeout: 2s
{extra}
    operations:
      upsertBusiness:
        method: PUT
        uri: businesses/{{crmId}}
        parameters:
          crmId: {{ location: uri, required: true }}
          business: {{ location: json }}
          status: {{ location: json }}
          country: {{ location: json }}
"#,
        base = server.url("api/"),
    )
}

/// The CRM endpoint with OAuth2 client credentials against `server`.
pub fn salesforce_endpoint(server: &HttpServer) -> String {
    format!(
        r#"
  salesforce:
    base_url: {base}
    auth:
      oauth2_client_credentials:
        token_url: {token}
        client_id_env: TEST_CRM_CLIENT_ID
        client_secret_env: TEST_CRM_CLIENT_SECRET
    timeout: 2s
    operations:
      updateAccount:
        method: PATCH
        uri: sobjects/Account/{{accountId}}
        parameters:
          accountId: {{ location: uri, required: true }}
          Name: {{ location: json }}
          Status__c: {{ location: json }}
          Country__c: {{ location: json }}
"#,
        base = server.url("services/data/v60.0/"),
        token = server.url("oauth/token"),
    )
}

/// Environment the endpoint snippets above read their secrets from (and
/// the fleet's signing key, for the admin API's fleet uploads).
pub const TEST_SECRETS: &[(&str, &str)] = &[
    ("TEST_SHOP_TOKEN", "shop-secret-token"),
    ("TEST_CRM_CLIENT_ID", "crm-client"),
    ("TEST_CRM_CLIENT_SECRET", "crm-client-secret"),
    ("TEST_ADMIN_TOKEN", ADMIN_TOKEN),
    (FLEET_SIGNING_KEY_ENV, FLEET_SIGNING_KEY),
];

/// The fleet's signing key in tests: the base64 of 32 bytes
/// (`passerelle-test-fleet-signing-k!`); scripts/test searches for it.
pub const FLEET_SIGNING_KEY: &str = "cGFzc2VyZWxsZS10ZXN0LWZsZWV0LXNpZ25pbmctayE=";
pub const FLEET_SIGNING_KEY_ENV: &str = "TEST_FLEET_SIGNING_KEY";

pub fn fleet_signer() -> passerelle::reload::signature::DeploySigner {
    passerelle::reload::signature::DeploySigner::from_base64(FLEET_SIGNING_KEY).unwrap()
}

/// The `fleet:` section of every test configuration: hosts check deploys
/// with the test key, and sign fleet uploads with it.
pub fn fleet_section() -> String {
    format!(
        "fleet:\n  verify_key: {}\n  signing_key_env: {FLEET_SIGNING_KEY_ENV}\n",
        fleet_signer().verifier().to_base64()
    )
}

/// The admin API's bearer token in tests (from `TEST_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "admin-secret-token";

/// An admin section on a free port of the loopback (read back from the log).
pub const ADMIN_SECTION: &str = "admin:\n  listen: 127.0.0.1:0\n  token_env: TEST_ADMIN_TOKEN\n";

pub const CRM_ACCOUNT: &str =
    r#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
pub const SHOP_BUSINESS: &str =
    r#"{"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}"#;

/// One test's deployment: both shipped routes, on names of its own.
pub struct Deployment {
    pub broker: Broker,
    pub server: HttpServer,
    pub config_dir: ConfigDir,
    pub crm_exchange: String,
    pub crm_queue: String,
    pub shop_exchange: String,
    pub shop_queue: String,
    /// Deploys of this test reach only its own hosts.
    pub control_exchange: String,
}

impl Deployment {
    pub async fn new() -> Self {
        let broker = Broker::connect().await;
        let control_exchange = broker.exchange("passerelle.control");
        for route in ["crm-to-shop", "shop-to-crm"] {
            broker.also_delete_queue(&format!("{control_exchange}.history.{route}"));
        }
        Self {
            server: HttpServer::start().await,
            config_dir: ConfigDir::new(),
            crm_exchange: broker.exchange("crm.events"),
            crm_queue: broker.queue("crm.account.changed"),
            shop_exchange: broker.exchange("shop.events"),
            shop_queue: broker.queue("shop.business.changed"),
            control_exchange,
            broker,
        }
    }

    /// Both shipped routes, in the test's own folder; `crm_route_extra` is
    /// added to the crm-to-shop route and `shop_endpoint_extra` to the shop
    /// endpoint (YAML lines, indented by four spaces).
    pub fn config(&self, crm_route_extra: &str, shop_endpoint_extra: &str) -> PathBuf {
        self.config_in(&self.config_dir, crm_route_extra, shop_endpoint_extra)
    }

    /// `config`, with the admin server on (`ADMIN_SECTION`).
    pub fn config_with_admin(&self, crm_route_extra: &str, shop_endpoint_extra: &str) -> PathBuf {
        let path = self.config(crm_route_extra, shop_endpoint_extra);
        let yaml = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{yaml}{ADMIN_SECTION}")).unwrap();
        path
    }

    /// The same in another folder, with copies of the shipped components
    /// there: a second host with files of its own.
    pub fn config_in(&self, dir: &ConfigDir, crm_route_extra: &str, shop_endpoint_extra: &str) -> PathBuf {
        for name in ["crm-to-shop", "shop-to-crm"] {
            let copy = dir.dir.path().join(format!("{name}.wasm"));
            if !copy.exists() {
                std::fs::copy(transform(name), &copy).unwrap();
            }
        }
        // The routes come last: tests append routes of their own to the file.
        let yaml = format!(
            r#"
amqp:
  url: {amqp}
  shutdown_grace: 20s
  control_exchange: {control_exchange}
{fleet}endpoints:
{shop}
{salesforce}
routes:
  crm-to-shop:
    queue: {crm_queue}
    bindings: [{{ exchange: {crm_exchange}, routing_key: "account.*" }}]
    transform: crm-to-shop.wasm
    endpoints: [shop]
    concurrency: 16
{crm_route_extra}
  shop-to-crm:
    queue: {shop_queue}
    bindings: [{{ exchange: {shop_exchange}, routing_key: "business.*" }}]
    transform: shop-to-crm.wasm
    endpoints: [salesforce]
"#,
            amqp = AMQP_URL,
            shop = shop_endpoint(&self.server, shop_endpoint_extra),
            salesforce = salesforce_endpoint(&self.server),
            crm_queue = self.crm_queue,
            crm_exchange = self.crm_exchange,
            shop_queue = self.shop_queue,
            shop_exchange = self.shop_exchange,
            control_exchange = self.control_exchange,
            fleet = fleet_section(),
        );
        dir.write("passerelle.yaml", &yaml)
    }

    pub async fn start_host(&self, config: &std::path::Path) -> Host {
        self.start_nth_host(config, 1, &[]).await
    }

    /// Starts a host with more environment, and waits until it is the
    /// `nth` consumer of both queues.
    pub async fn start_nth_host(&self, config: &std::path::Path, nth: u32, env: &[(&str, &str)]) -> Host {
        let env: Vec<(&str, &str)> = TEST_SECRETS.iter().chain(env).copied().collect();
        let host = Host::start_with_env(config, &env);
        self.broker.wait_for_consumers(&self.crm_queue, nth).await;
        self.broker.wait_for_consumers(&self.shop_queue, nth).await;
        host
    }

    /// The design doc's CRM account (gg-11), as the CRM would publish it.
    pub async fn publish_crm_account(&self, message_id: &str) {
        self.broker
            .publish(
                &self.crm_exchange,
                "account.updated",
                CRM_ACCOUNT.as_bytes(),
                Some(message_id),
            )
            .await;
    }

    /// The shop's business change (`SHOP_BUSINESS`), for the shop-to-crm route.
    pub async fn publish_shop_business(&self, message_id: &str) {
        self.broker
            .publish(
                &self.shop_exchange,
                "business.updated",
                SHOP_BUSINESS.as_bytes(),
                Some(message_id),
            )
            .await;
    }

    pub async fn publish_accounts(&self, ids: impl Iterator<Item = usize>) {
        for n in ids {
            let body = CRM_ACCOUNT.replace("gg-11", &format!("gg-{n}"));
            let id = format!("msg-{n}");
            self.broker
                .publish(&self.crm_exchange, "account.updated", body.as_bytes(), Some(&id))
                .await;
        }
    }

    /// How many times each account reached the shop.
    pub fn deliveries_per_account(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in self.server.calls() {
            let id = call.uri.rsplit('/').next().unwrap().to_string();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    pub async fn wait_until_every_account_arrives(&self, total: usize, host: &Host) {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while self.deliveries_per_account().len() < total {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {total} accounts arrived; host log:\n{}",
                self.deliveries_per_account().len(),
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_until_queue_is_empty(&self, queue: &str) {
        eventually(&format!("{queue} to be empty"), Duration::from_secs(60), async || {
            (self.broker.depth(queue).await == 0).then_some(())
        })
        .await;
    }
}

/// Closes, from the broker's side, the consumers' connection of the host with this pid.
pub fn close_connection_of(pid: u32) {
    close_connection_named(&format!("passerelle pid {pid}"));
}

/// Closes, from the broker's side, the connection named exactly `name`.
pub fn close_connection_named(name: &str) {
    let listing = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    // The name as a whole string ("…" or <<"…">>), not a prefix of another.
    let quoted = format!("\"{name}\"");
    let connection = listing
        .lines()
        .find(|line| line.contains(&quoted))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name:?} in:\n{listing}"));
    let status = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", connection, "closed by the test"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The shipped crm-to-shop component with a custom section of random
/// bytes: a new version that behaves exactly like the shipped one.
pub fn new_version() -> Vec<u8> {
    let mut bytes = std::fs::read(transform("crm-to-shop")).unwrap();
    let name = b"passerelle-test";
    let payload = format!("{:032x}", rand::random::<u128>());
    let size = 1 + name.len() + payload.len();
    bytes.push(0); // custom section id
    bytes.push(u8::try_from(size).unwrap()); // LEB128, one byte for < 128
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// One series of a host's `/metrics` (`name{labels}` exactly as written),
/// 0 when it has not been counted yet.
pub async fn metric(admin: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until a host's series reaches `value`.
pub async fn wait_for_metric(admin: &str, series: &str, value: f64) {
    eventually(
        &format!("{series} to reach {value}"),
        Duration::from_secs(60),
        async || (metric(admin, series).await >= value).then_some(()),
    )
    .await;
}

/// The queue's counts, or None when it does not exist (which closes `channel`).
pub async fn declare_passive(channel: &lapin::Channel, queue: &str) -> Option<lapin::Queue> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .ok()
}
