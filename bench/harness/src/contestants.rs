//! One round of one contestant: seed its queue with N messages, start it
//! as a process, wait until it has done the job, stop it, and check.
//!
//! Rate and CPU are measured over the same window, from the first request
//! the shop receives to the N-th (the bare consumer, which sends none,
//! reports its own window: first delivery to N-th ack), so a contestant's
//! start-up is not counted; Passerelle's start-up is measured apart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use tokio::process::Command;

use crate::broker::{AMQP_URL, Broker};
use crate::passerelle::Passerelle;
use crate::process::{Service, peak_rss};
use crate::server::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contestant {
    Bare,
    Native,
    Node,
    Passerelle,
}

impl Contestant {
    pub const ALL: [Self; 4] = [Self::Bare, Self::Native, Self::Node, Self::Passerelle];

    pub fn key(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Native => "native",
            Self::Node => "node",
            Self::Passerelle => "passerelle",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Bare => "ceiling: bare lapin consumer, ack only",
            Self::Native => "native Rust: lapin + serde + reqwest",
            Self::Node => "Node.js: amqplib + fetch",
            Self::Passerelle => "Passerelle: passerelle run + crm-to-shop.wasm",
        }
    }

    pub fn parse(key: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.key() == key)
            .ok_or_else(|| anyhow!("unknown contestant {key:?} (bare, native, node, passerelle)"))
    }
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rate: f64,
    /// Seconds of CPU (user + system) per message.
    pub cpu_per_message: Option<f64>,
    /// The broker's seconds of CPU per message, over the same window.
    pub broker_cpu_per_message: Option<f64>,
    /// The share of the machine's cores busy over the window (anything:
    /// contestant, broker, the harness's HTTP server).
    pub machine_busy: Option<f64>,
    /// Passerelle's peak RSS (VmHWM), in bytes.
    pub peak_rss: Option<u64>,
}

/// What the rounds need: where things are, and the run's shared parts.
pub struct Arena<'a> {
    pub broker: &'a Broker,
    pub server: &'a Server,
    pub passerelle: &'a Passerelle,
    pub native: PathBuf,
    pub node_dir: PathBuf,
    pub logs: PathBuf,
    pub messages: usize,
    pub concurrency: u16,
    /// Where to put a `perf record` of each delivering contestant's rounds.
    pub profile: Option<PathBuf>,
    /// The queue each of bare, native and node consumes.
    pub queues: [String; 3],
    /// RabbitMQ's process, whose CPU time a round also reads.
    pub broker_pid: Option<u32>,
}

impl Arena<'_> {
    pub async fn round(&self, contestant: Contestant, round: usize) -> anyhow::Result<Sample> {
        let queue = self.queue(contestant);
        let tag = format!("{}-{round}", contestant.key());
        self.broker.publish(queue, self.messages, &tag).await?;
        let sample = match contestant {
            Contestant::Bare => self.bare_round(queue).await,
            _ => self.delivery_round(contestant, queue, round).await,
        };
        let sample = sample.with_context(|| format!("{} round {round}", contestant.key()))?;
        let left = self.broker.depth(queue).await?;
        ensure!(
            left == 0,
            "{} round {round}: {left} messages left in {queue}",
            contestant.key()
        );
        Ok(sample)
    }

    fn queue(&self, contestant: Contestant) -> &str {
        match contestant {
            Contestant::Bare => &self.queues[0],
            Contestant::Native => &self.queues[1],
            Contestant::Node => &self.queues[2],
            Contestant::Passerelle => &self.passerelle.queue,
        }
    }

    /// Generous: a slow contestant on a loaded machine is still measured.
    fn timeout(&self) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(5) * self.messages as u32
    }

    async fn bare_round(&self, queue: &str) -> anyhow::Result<Sample> {
        let mut command = Command::new(&self.native);
        let (n, prefetch) = (self.messages.to_string(), self.concurrency.to_string());
        command.args(["ack-only", AMQP_URL, queue, &n, &prefetch]);
        let service = Service::start("the bare consumer", command, &self.logs.join("bare.log"), true)?;
        let output = tokio::time::timeout(self.timeout(), service.output())
            .await
            .context("the bare consumer did not finish")??;
        let report: serde_json::Value =
            serde_json::from_str(output.trim()).with_context(|| format!("the bare consumer printed {output:?}"))?;
        let figure = |key: &str| report[key].as_f64().ok_or_else(|| anyhow!("no {key} in {report}"));
        let (seconds, cpu) = (figure("seconds")?, figure("cpu_seconds")?);
        Ok(Sample {
            rate: self.messages as f64 / seconds,
            cpu_per_message: Some(cpu / self.messages as f64),
            broker_cpu_per_message: None,
            machine_busy: None,
            peak_rss: None,
        })
    }

    async fn delivery_round(&self, contestant: Contestant, queue: &str, round: usize) -> anyhow::Result<Sample> {
        self.server.arm(self.messages);
        let mut service = self.start(contestant, queue)?;
        self.server.watch(service.pid(), self.broker_pid);
        let profiler = self.profile(contestant, &mut service, round).await?;
        self.wait_delivered(contestant, &mut service).await?;
        if let (Some(mut profiler), Some(dir)) = (profiler, &self.profile) {
            profiler.signal_and_wait(libc::SIGINT).await?;
            let data = profile_data(dir, contestant, round);
            ensure!(
                data.is_file(),
                "perf record wrote no {}{}",
                data.display(),
                profiler.log_tail()
            );
        }
        let peak_rss = match contestant {
            Contestant::Passerelle => peak_rss(service.pid()),
            _ => None,
        };
        service.stop().await?;
        let window = self.server.window();
        window.ensure_complete()?;
        let (first, last) = window.first.zip(window.last).context("no first or last request")?;
        // The window holds the n-1 messages after the first.
        let intervals = (self.messages - 1) as f64;
        let per_message = |last: Option<f64>, first: Option<f64>| last.zip(first).map(|(l, f)| (l - f) / intervals);
        let seconds = (last.at - first.at).as_secs_f64();
        let machine_busy = last
            .machine
            .zip(first.machine)
            .map(|((last, cores), (first, _))| (last - first) / (seconds * cores as f64));
        Ok(Sample {
            rate: intervals / seconds,
            cpu_per_message: per_message(last.cpu, first.cpu),
            broker_cpu_per_message: per_message(last.broker, first.broker),
            machine_busy,
            peak_rss,
        })
    }

    fn start(&self, contestant: Contestant, queue: &str) -> anyhow::Result<Service> {
        let log = self.logs.join(format!("{}.log", contestant.key()));
        let base = format!("http://127.0.0.1:{}/api/", self.server.port);
        let concurrency = self.concurrency.to_string();
        let args = [AMQP_URL, queue, &base, &concurrency];
        match contestant {
            Contestant::Native => {
                let mut command = Command::new(&self.native);
                command.arg("serve").args(args);
                Service::start("the native service", command, &log, false)
            }
            Contestant::Node => {
                let mut command = Command::new("node");
                command.arg("service.js").args(args).current_dir(&self.node_dir);
                Service::start("the Node.js service", command, &log, false)
            }
            Contestant::Passerelle => self.passerelle.start(&log),
            Contestant::Bare => unreachable!("the bare consumer has its own round"),
        }
    }

    /// Until the shop has the N-th request; fails if the contestant exits,
    /// Passerelle dead-letters, or it takes longer than the timeout.
    async fn wait_delivered(&self, contestant: Contestant, service: &mut Service) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout();
        loop {
            tokio::select! {
                _ = self.server.delivered() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            service.ensure_running()?;
            if contestant == Contestant::Passerelle {
                let dead = self.broker.depth(&self.passerelle.dead_letters).await?;
                ensure!(
                    dead == 0,
                    "passerelle dead-lettered {dead} messages{}",
                    service.log_tail()
                );
            }
            let received = self.server.window().received;
            ensure!(
                Instant::now() < deadline,
                "{received} of {} requests after {:?}{}",
                self.messages,
                self.timeout(),
                service.log_tail()
            );
        }
    }

    /// `perf record` attached to the contestant once the first request has
    /// arrived (start-up left out), when a profile is asked for.
    async fn profile(
        &self,
        contestant: Contestant,
        service: &mut Service,
        round: usize,
    ) -> anyhow::Result<Option<Service>> {
        let Some(dir) = &self.profile else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.timeout();
        while self.server.window().first.is_none() {
            service.ensure_running()?;
            ensure!(Instant::now() < deadline, "no request after {:?}", self.timeout());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut command = Command::new("perf");
        command
            .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p"])
            .arg(service.pid().to_string())
            .arg("-o")
            .arg(profile_data(dir, contestant, round));
        let log = self.logs.join(format!("perf-{}-round-{round}.log", contestant.key()));
        Ok(Some(Service::start("perf record", command, &log, false)?))
    }
}

/// Where `perf record` writes a round's profile, in the `--profile` folder.
fn profile_data(dir: &Path, contestant: Contestant, round: usize) -> PathBuf {
    dir.join(format!("{}-round-{round}.perf.data", contestant.key()))
}
