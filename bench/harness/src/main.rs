//! The side-by-side benchmark (issue 10): what a team gives up by running
//! Passerelle instead of writing its own small consumer. In one run, on
//! the same broker and against the same checking HTTP server, with the
//! same seed messages and 64 in flight, rounds interleaved:
//!
//! - the ceiling: a bare lapin consumer that only acks;
//! - a hand-written native Rust service (`bench/native`);
//! - a Node.js service (`bench/node`);
//! - Passerelle: the real `passerelle run` with the shipped transforms.
//!
//! Then Passerelle alone: start-up time to ready (warm compile cache), the
//! transform's cost against the native mapping, and swap latency. It
//! prints the medians as a Markdown table with ratios and the issue's
//! targets, met or not. `scripts/bench` builds everything and runs it;
//! see the README's "Benchmarks" section.
//!
//! Every broker object it creates is deleted at the end, also after an
//! error; the contestants' logs are kept when it fails.

mod broker;
mod contestants;
mod passerelle;
mod process;
mod report;
mod server;
mod transform;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};

use broker::Broker;
use contestants::{Arena, Contestant, Sample};
use report::Report;
use server::Server;

/// The allocator of the `passerelle` binary: the transform's cost measured
/// here in process (`transform.rs`) is then what `passerelle run` pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What to run, from the command line.
struct Settings {
    messages: usize,
    rounds: usize,
    concurrency: u16,
    contestants: Vec<Contestant>,
    /// Start-up, transform cost and swap; skipped with `--only`.
    extras: bool,
    /// `--only transform`: the transform's cost alone, no contestant.
    transform_only: bool,
    /// The crm-to-shop build Passerelle runs: `--guest rust|js|python`.
    guest: &'static str,
    profile: Option<PathBuf>,
}

const USAGE: &str = "usage: passerelle-bench [--long] [--messages N] [--rounds N] [--only bare,native,node,passerelle|transform] \
                     [--profile DIR] [--guest rust|js|python]";

impl Settings {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut settings = Self {
            messages: 5000,
            rounds: 3,
            concurrency: 64,
            contestants: Contestant::ALL.to_vec(),
            extras: true,
            transform_only: false,
            guest: "crm-to-shop",
            profile: None,
        };
        let mut args = args.peekable();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--long" => (settings.messages, settings.rounds) = (20_000, 5),
                "--messages" => settings.messages = value()?.parse()?,
                "--rounds" => settings.rounds = value()?.parse()?,
                "--only" => {
                    let keys = value()?;
                    settings.extras = false;
                    if keys == "transform" {
                        (settings.contestants, settings.transform_only) = (Vec::new(), true);
                        continue;
                    }
                    settings.contestants = keys.split(',').map(Contestant::parse).collect::<Result<_, _>>()?;
                }
                "--profile" => {
                    let dir = PathBuf::from(value()?);
                    std::fs::create_dir_all(&dir).with_context(|| format!("--profile {}", dir.display()))?;
                    settings.profile = Some(dir);
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--guest" => {
                    settings.guest = match value()?.as_str() {
                        "rust" => "crm-to-shop",
                        "js" => "crm-to-shop-js",
                        "python" => "crm-to-shop-py",
                        other => bail!("--guest is rust, js or python, not {other:?}\n{USAGE}"),
                    }
                }
                _ => bail!("unknown argument {flag:?}\n{USAGE}"),
            }
        }
        ensure!(
            settings.messages >= 2 && settings.rounds >= 1,
            "at least 2 messages and 1 round"
        );
        Ok(settings)
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse(std::env::args().skip(1))?;
    let work = tempfile::Builder::new().prefix("passerelle-bench.").tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&settings, work.path()));
    if result.is_err() {
        eprintln!("passerelle-bench: logs kept in {}", work.keep().display());
    }
    result?.print();
    Ok(())
}

async fn run(settings: &Settings, work: &Path) -> anyhow::Result<Report> {
    let broker = Broker::connect().await?;
    let result = measure(settings, &broker, work).await;
    broker.clean_up().await;
    result
}

/// Where the release binaries are: beside this one, built by the same
/// `cargo build --release` (scripts/bench).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    ensure!(
        path.is_file(),
        "{} is missing: build it (scripts/bench does)",
        path.display()
    );
    Ok(path)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn measure(settings: &Settings, broker: &Broker, work: &Path) -> anyhow::Result<Report> {
    let server = Server::start().await?;
    let (logs, passerelle_dir) = (work.join("logs"), work.join("passerelle"));
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&passerelle_dir)?;
    let transforms = repo().join("build/transforms");
    let passerelle = passerelle::Passerelle::prepare(
        broker,
        &sibling("passerelle")?,
        &transforms,
        &passerelle_dir,
        server.port,
        settings.concurrency,
        settings.guest,
    )
    .await?;
    let node_dir = repo().join("bench/node");
    ensure!(
        node_dir.join("node_modules/amqplib").is_dir(),
        "bench/node has no node_modules: run npm ci there (scripts/bench does)"
    );
    let arena = Arena {
        broker,
        server: &server,
        passerelle: &passerelle,
        native: sibling("passerelle-bench-native")?,
        node_dir,
        logs,
        messages: settings.messages,
        concurrency: settings.concurrency,
        profile: settings.profile.clone(),
        queues: [
            broker.queue("bare").await?,
            broker.queue("native").await?,
            broker.queue("node").await?,
        ],
        broker_pid: process::broker_pid(),
    };
    println!(
        "passerelle-bench: {} persistent messages x {} round(s), {} in flight, interleaved; Passerelle runs {}.wasm",
        settings.messages, settings.rounds, settings.concurrency, settings.guest
    );
    let mut report = Report::new(settings.messages, settings.rounds, settings.concurrency);
    if settings.extras {
        report.start_up = Some(
            passerelle
                .start_up(settings.rounds, &arena.logs.join("start-up.log"))
                .await?,
        );
    } else if settings.contestants.contains(&Contestant::Passerelle) {
        passerelle.warm_cache(&arena.logs.join("warm-up.log")).await?;
    }
    report.samples = rounds(&arena, settings).await?;
    if settings.extras || settings.transform_only {
        report.transform = Some(transform::measure(&arena.native, &passerelle.config, settings.rounds).await?);
    }
    if settings.extras {
        let log = arena.logs.join("swap.log");
        let swaps = passerelle.swaps(broker, &server, settings.rounds, &log).await?;
        report.swaps = swaps.latencies;
        report.swap_peak_rss = swaps.peak_rss;
    }
    Ok(report)
}

/// Every round runs each contestant once, the order shifted by one each
/// round so that none always follows the same neighbour.
async fn rounds(arena: &Arena<'_>, settings: &Settings) -> anyhow::Result<Vec<(Contestant, Vec<Sample>)>> {
    let mut samples: Vec<(Contestant, Vec<Sample>)> = settings.contestants.iter().map(|&c| (c, Vec::new())).collect();
    if samples.is_empty() {
        return Ok(samples);
    }
    for round in 1..=settings.rounds {
        let mut order = settings.contestants.clone();
        let shift = (round - 1) % order.len();
        order.rotate_left(shift);
        for contestant in order {
            let sample = arena.round(contestant, round).await?;
            println!(
                "round {round}: {:<10} {:>8.0} msg/s, {:>6.1} µs CPU/msg, broker {:>5.1} µs/msg, machine {:>3.0}% busy",
                contestant.key(),
                sample.rate,
                sample.cpu_per_message.map_or(f64::NAN, |s| s * 1e6),
                sample.broker_cpu_per_message.map_or(f64::NAN, |s| s * 1e6),
                sample.machine_busy.map_or(f64::NAN, |s| s * 100.0)
            );
            let entry = samples.iter_mut().find(|(c, _)| *c == contestant);
            entry.context("a contestant of the round")?.1.push(sample);
        }
    }
    Ok(samples)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}
