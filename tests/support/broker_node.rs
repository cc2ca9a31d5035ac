//! RabbitMQ nodes a test owns, for the tests that stop or restart a broker
//! or need a cluster: the shared broker on 5672 belongs to everyone and is
//! never touched. Each node has its own name (`<base>-<random>@localhost`),
//! AMQP and distribution ports, data and log folders in a temporary folder,
//! no plugins, and the Erlang cookie of the machine's broker (so that
//! `rabbitmqctl` reaches it). Dropping a node stops it, and only it.
//!
//! A node takes about 10 s to start here, three at once about 30 s, and a
//! restart 15 to 25 s: that bounds the tests that use them.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package keeps the server and the CLI (the `/usr/sbin`
/// wrappers would switch to the `rabbitmq` user and its home).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// The machine broker's cookie, when the user has none of their own.
const BROKER_COOKIE: &str = "/var/lib/rabbitmq/.erlang.cookie";
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// One RabbitMQ node of this test's own, running as a child process.
pub struct BrokerNode {
    /// `soak-1a2b3c4d@localhost`.
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    /// The nodes of its cluster (written into its configuration), if any.
    peers: Vec<String>,
    server: Option<Child>,
}

impl BrokerNode {
    /// Starts a node alone and waits until it takes connections.
    pub async fn start(base: &str) -> Self {
        let mut node = Self::prepare(base);
        node.launch();
        node.wait_until_up().await;
        node
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn prepare(base: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("broker-node-").tempdir().unwrap();
        let home_cookie = std::env::var_os("HOME").map(|home| Path::new(&home).join(".erlang.cookie"));
        let cookie = home_cookie
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(BROKER_COOKIE));
        let own_cookie = dir.path().join(".erlang.cookie");
        std::fs::copy(&cookie, &own_cookie)
            .unwrap_or_else(|e| panic!("cannot copy the Erlang cookie {}: {e}", cookie.display()));
        set_owner_only(&own_cookie);
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        Self {
            name: format!("{base}-{:08x}@localhost", rand::random::<u32>()),
            port: free_port(),
            dist_port: free_port(),
            dir,
            peers: Vec::new(),
            server: None,
        }
    }

    fn launch(&mut self) {
        let config = self.dir.path().join("rabbitmq.conf");
        std::fs::write(&config, cluster_config(&self.peers)).unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.out"))
            .unwrap();
        let server = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .envs(self.environment())
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.path().join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.path().join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", self.dir.path().join("advanced.config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a stop that fails kills this node's processes and no others.
            .process_group(0)
            .spawn()
            .expect("starting rabbitmq-server (is RabbitMQ installed?)");
        self.server = Some(server);
    }

    /// What both the server and `rabbitmqctl` need to find this node.
    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOME", self.dir.path().display().to_string()),
            ("RABBITMQ_NODENAME", self.name.clone()),
        ]
    }

    async fn wait_until_up(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            let exited = self.server.as_mut().and_then(|child| child.try_wait().unwrap());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "RabbitMQ node {} did not start ({}):\n{}",
                self.name,
                exited.map_or("timed out".to_string(), |status| status.to_string()),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The server's output so far, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default()
    }

    /// Stops the node (its data stays) and waits until its process exited.
    pub async fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = self.ctl(&["stop"]).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                kill_group(&mut server);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a stopped node again, on the same ports and data.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "node {} is running", self.name);
        self.launch();
        self.wait_until_up().await;
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Runs `rabbitmqctl -n <this node>` with `args`; its stdout, or an error with its output.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .envs(self.environment())
            .args(["-q", "-n", &self.name])
            .args(args)
            .output()
            .await
            .map_err(|e| format!("running rabbitmqctl: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "rabbitmqctl {args:?} on {}: {}\n{stdout}{}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Whether a client connection named exactly `name` (e.g. `passerelle
    /// pid 1234`) is open on this node.
    pub async fn has_connection(&self, name: &str) -> bool {
        let listing = self.ctl(&["list_connections", "client_properties"]).await;
        listing.is_ok_and(|listing| listing.contains(&format!("\"{name}\"")))
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let stopped = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .envs(self.environment())
            .args(["-q", "-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|status| status.success()) {
            kill_group(&mut server);
        }
        let _ = server.wait();
    }
}

/// Three (or more) nodes that form one cluster at boot (classic peer
/// discovery: each node's configuration lists them all), started at once.
pub struct Cluster {
    pub nodes: Vec<BrokerNode>,
}

impl Cluster {
    pub async fn start(base: &str, size: usize) -> Self {
        let mut nodes: Vec<BrokerNode> = (0..size).map(|_| BrokerNode::prepare(base)).collect();
        let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
        for node in &mut nodes {
            node.peers = names.clone();
            node.launch();
        }
        for node in &mut nodes {
            node.wait_until_up().await;
        }
        let cluster = Self { nodes };
        cluster.wait_until_formed().await;
        cluster
    }

    /// Every node's URL, in order: what `amqp.urls` lists.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(BrokerNode::url).collect()
    }

    async fn wait_until_formed(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self.nodes[0].ctl(&["cluster_status", "--formatter", "json"]).await;
            let running = status
                .as_deref()
                .ok()
                .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
                .and_then(|json| json["running_nodes"].as_array().map(Vec::len))
                .unwrap_or(0);
            if running == self.nodes.len() {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not form: {status:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn cluster_config(peers: &[String]) -> String {
    if peers.is_empty() {
        return String::new();
    }
    let mut config = "cluster_formation.peer_discovery_backend = classic_config\n".to_string();
    for (n, peer) in peers.iter().enumerate() {
        config.push_str(&format!("cluster_formation.classic_config.nodes.{} = {peer}\n", n + 1));
    }
    config
}

/// A port free now (the OS's pick); the node binds it a moment later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

fn kill_group(server: &mut Child) {
    // The negative pid is the node's own process group (`process_group(0)` above).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", server.id())])
        .status();
    let _ = server.wait();
}
