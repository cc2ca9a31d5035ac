//! The `passerelle` command line: parses arguments and hands each subcommand
//! to the library.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use passerelle::config::Config;
use passerelle::runtime::{
    ComponentCache, GuestLimits, LoadError, Message, RouteContext, Runtime, Transform, TransformFailure,
};
use passerelle::{admin, amqp, reload, service};
use tokio_util::sync::CancellationToken;

/// Exit codes a script can tell apart (documented in the README).
mod exit {
    pub const FAILED: u8 = 1;
    pub const REJECT: u8 = 10;
    pub const RETRY: u8 = 11;
    pub const TRAP: u8 = 12;
    pub const BAD_COMPONENT: u8 = 13;
    pub const FIXTURES_FAILED: u8 = 14;
}

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "Keeps business systems in sync through RabbitMQ with sandboxed WebAssembly transforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one message body (read from stdin) through a component and print
    /// the actions as JSON. Exit codes: 10 reject, 11 retry, 12 trap
    /// (crash, time or memory limit), 13 not a valid component, 14 a
    /// fixture failed (with --fixtures).
    Transform(TransformArgs),
    /// Check a component against the passerelle:transform world, or a whole
    /// configuration file and the components it names, without connecting.
    Check(CheckArgs),
    /// Consume every route's queue and deliver, until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Publish one message (body read from stdin) with publisher confirms.
    Publish(PublishArgs),
    /// Inspect, replay or purge a route's dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Swap a route's transform on every running host, through the broker.
    /// The component is checked here first (world, fixtures beside it):
    /// a bad one is published nowhere.
    Deploy {
        route: String,
        /// The component; `<name>.fixtures.json` beside it travels with it.
        component: PathBuf,
        #[arg(long, env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
        config: PathBuf,
    },
    /// Return every host to the version deployed before the current one.
    Rollback {
        route: String,
        #[arg(long, env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show each dead letter: id, attempts, last HTTP status, transform version, age, reason.
    List(DlqArgs),
    /// Send dead letters back to the work queue with a fresh attempt budget.
    Replay {
        #[command(flatten)]
        target: DlqArgs,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        all: bool,
        /// Replay the dead letters with this message id (repeatable).
        #[arg(long = "id", value_name = "MESSAGE_ID")]
        ids: Vec<String>,
    },
    /// Delete every dead letter of the route.
    Purge(DlqArgs),
}

#[derive(Args)]
struct DlqArgs {
    /// The route whose dead-letter queue to work on.
    route: String,
    /// The configuration file.
    #[arg(long, env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
    config: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The configuration file.
    #[arg(long, env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
    config: PathBuf,
}

#[derive(Args)]
struct PublishArgs {
    /// The configuration file (for the broker's address).
    #[arg(long, env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
    config: PathBuf,
    #[arg(long)]
    exchange: String,
    #[arg(long, default_value = "")]
    routing_key: String,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long, default_value = "application/json")]
    content_type: String,
}

#[derive(Args)]
struct TransformArgs {
    /// The component to run.
    #[arg(long)]
    component: PathBuf,
    /// A route configuration value the transform can read (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
    config: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    routing_key: String,
    /// A message header (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_pair)]
    headers: Vec<(String, String)>,
    #[arg(long, default_value = "application/json")]
    content_type: String,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    #[command(flatten)]
    limits: LimitArgs,
    /// Instead of reading a message, check these fixtures (exit 14 if any fails).
    #[arg(long, value_name = "FILE")]
    fixtures: Option<PathBuf>,
}

#[derive(Args)]
struct LimitArgs {
    /// Time the transform gets per message.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    time_limit: std::time::Duration,
    /// Linear memory the transform gets per message.
    #[arg(long, default_value = "32MiB")]
    memory_limit: bytesize::ByteSize,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["component", "config"])))]
struct CheckArgs {
    /// The component to check.
    #[arg(long)]
    component: Option<PathBuf>,
    /// The configuration file to check, with every route's component.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Transform(args) => transform(args).await,
            Command::Check(args) => check(args).await,
            Command::Run(args) => run(args).await,
            Command::Publish(args) => publish(args).await,
            Command::Dlq(command) => dlq(command).await,
            Command::Deploy {
                route,
                component,
                config,
            } => deploy(&route, &component, &config).await,
            Command::Rollback { route, config } => rollback(&route, &config).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn transform(args: TransformArgs) -> anyhow::Result<u8> {
    let runtime = Runtime::new()?;
    let transform = match load_component(&runtime, &args.component)? {
        Ok(transform) => transform,
        Err(code) => return Ok(code),
    };
    let route = RouteContext {
        route: "cli".into(),
        config: Arc::new(args.config.into_iter().collect()),
        limits: GuestLimits {
            time: args.limits.time_limit,
            memory: args.limits.memory_limit.as_u64() as usize,
        },
    };
    if let Some(path) = &args.fixtures {
        return check_fixtures(&runtime, &transform, &route, path).await;
    }
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let message = Message {
        body,
        content_type: Some(args.content_type),
        routing_key: args.routing_key,
        headers: args.headers,
        message_id: args.message_id,
        attempt: args.attempt,
    };
    match runtime.run(&transform, &route, &message).await {
        Ok(actions) => {
            println!("{}", serde_json::to_string_pretty(&actions)?);
            Ok(0)
        }
        Err(failure) => {
            let (kind, code) = match &failure {
                TransformFailure::Reject(_) => ("reject", exit::REJECT),
                TransformFailure::Retry(_) => ("retry", exit::RETRY),
                TransformFailure::Trap(_) => ("trap", exit::TRAP),
            };
            eprintln!("{kind}: {}", failure.reason());
            Ok(code)
        }
    }
}

async fn check_fixtures(
    runtime: &Runtime,
    transform: &Transform,
    route: &RouteContext,
    path: &Path,
) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let fixtures = reload::parse_fixtures(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?;
    match reload::check_fixtures(runtime, transform, route, &fixtures).await {
        Ok(()) => {
            println!("ok: {} fixture(s) passed", fixtures.len());
            Ok(0)
        }
        Err(failures) => {
            eprintln!("fixtures failed: {failures}");
            Ok(exit::FIXTURES_FAILED)
        }
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let runtime = Runtime::new()?;
    if let Some(path) = args.config {
        let config = Config::load(&path)?;
        let pipelines = service::load_pipelines(&config, &runtime).await?;
        for pipeline in pipelines {
            println!(
                "ok: route {} ({} -> version {})",
                pipeline.name,
                pipeline.route.queue,
                pipeline.transform.current().version
            );
        }
        return Ok(0);
    }
    let Some(component) = args.component else {
        unreachable!("clap requires --component or --config");
    };
    Ok(match load_component(&runtime, &component)? {
        Ok(transform) => {
            println!(
                "ok: {} fits passerelle:transform@0.1.0 (version {})",
                component.display(),
                transform.version
            );
            0
        }
        Err(code) => code,
    })
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let config = Config::load(&args.config)?;
    let runtime = Runtime::new()?;
    let runtime = runtime.with_cache(&ComponentCache::default_dir())?;
    let pipelines = service::load_pipelines(&config, &runtime).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    reload::watch_components(&pipelines, &runtime, shutdown.clone())?;
    service::run(&config, &pipelines, &runtime, shutdown).await?;
    tracing::info!("stopped");
    Ok(0)
}

/// SIGTERM or SIGINT asks for a clean stop.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested: finishing messages in flight");
    shutdown.cancel();
}

async fn publish(args: PublishArgs) -> anyhow::Result<u8> {
    let config = Config::load(&args.config)?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let connection = std::sync::Arc::new(amqp::connect(&config.amqp.url, "passerelle-publish").await?);
    let mut properties = lapin::BasicProperties::default().with_content_type(args.content_type.as_str().into());
    if let Some(id) = &args.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    amqp::Publisher::new(connection.clone())
        .publish(&args.exchange, &args.routing_key, &body, properties)
        .await?;
    let _ = connection.close(200, "published".into()).await;
    println!(
        "published to {:?} with routing key {:?}",
        args.exchange, args.routing_key
    );
    Ok(0)
}

async fn deploy(route: &str, component: &Path, config: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config)?;
    let runtime = Runtime::new()?;
    let bytes = std::fs::read(component).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", component.display()))?;
    let fixtures = reload::fixtures_beside(component).map_err(anyhow::Error::msg)?;
    match admin::deploy(&config, &runtime, route, bytes, fixtures).await? {
        Ok(version) => {
            println!("deployed {version} to route {route} on every host");
            Ok(0)
        }
        Err(reason) => {
            eprintln!("refused, nothing deployed: {reason}");
            Ok(exit::BAD_COMPONENT)
        }
    }
}

async fn rollback(route: &str, config: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config)?;
    let runtime = Runtime::new()?;
    let (from, to) = admin::rollback(&config, &runtime, route).await?;
    println!("rolled route {route} back from {from} to {to} on every host");
    Ok(0)
}

async fn dlq(command: DlqCommand) -> anyhow::Result<u8> {
    let target = match &command {
        DlqCommand::List(target) | DlqCommand::Purge(target) | DlqCommand::Replay { target, .. } => target,
    };
    let config = Config::load(&target.config)?;
    let route = admin::route(&config, &target.route)?;
    let connection = std::sync::Arc::new(amqp::connect(&config.amqp.url, "passerelle-dlq").await?);
    let dead_letter_queue = route.dead_letter_queue();
    match &command {
        DlqCommand::List(_) => print_dead_letters(&admin::list(&connection, route).await?),
        DlqCommand::Replay { all, ids, .. } => {
            let selection = if *all {
                admin::Selection::All
            } else {
                admin::Selection::Ids(ids.clone())
            };
            let replayed = admin::replay(&connection, route, &selection).await?;
            println!(
                "replayed {replayed} message(s) from {dead_letter_queue} into {}",
                route.queue
            );
        }
        DlqCommand::Purge(_) => {
            let purged = admin::purge(&connection, route).await?;
            println!("purged {purged} message(s) from {dead_letter_queue}");
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(0)
}

fn print_dead_letters(letters: &[admin::DeadLetter]) {
    println!("{} dead letter(s)", letters.len());
    if letters.is_empty() {
        return;
    }
    println!(
        "{:<24} {:>8} {:>6} {:<12} {:>8}  REASON",
        "MESSAGE ID", "ATTEMPTS", "STATUS", "VERSION", "AGE"
    );
    for letter in letters {
        let age = letter
            .age
            .map_or("?".into(), |age| humantime::format_duration(age).to_string());
        println!(
            "{:<24} {:>8} {:>6} {:<12} {:>8}  {}",
            letter.message_id.as_deref().unwrap_or("-"),
            letter.attempts,
            letter.http_status.as_deref().unwrap_or("-"),
            letter.version,
            age,
            letter.reason
        );
    }
}

/// Loads a component, or reports why it was refused and the exit code to use.
fn load_component(runtime: &Runtime, path: &Path) -> anyhow::Result<Result<Transform, u8>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read component {}: {e}", path.display()))?;
    Ok(runtime.load(&bytes).map_err(|error: LoadError| {
        eprintln!("refused: {}: {error}", path.display());
        exit::BAD_COMPONENT
    }))
}
