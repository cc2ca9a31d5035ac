//! The commands of the `passerelle` binary, one file each. They parse
//! nothing themselves (clap does) and decide nothing the library should:
//! they call it and turn its outcome into output and an exit code.

mod check;
mod deploy;
mod dlq;
mod import;
mod keygen;
mod new;
mod publish;
mod run;
mod shadow;
mod test;
mod transform;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use passerelle::logging::{self, LogFormat};

/// Exit codes a script can tell apart (documented in the README).
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const REJECT: u8 = 10;
    pub const RETRY: u8 = 11;
    pub const TRAP: u8 = 12;
    pub const BAD_COMPONENT: u8 = 13;
    pub const FIXTURES_FAILED: u8 = 14;
    /// An import that finished, with bad lines left out.
    pub const BAD_LINES: u8 = 15;
}

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "Keeps business systems in sync through RabbitMQ with sandboxed WebAssembly transforms"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr.
    #[arg(long, global = true, value_enum, default_value_t, env = "PASSERELLE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run one message body (read from stdin) through a component and print
    /// the actions as JSON. Exit codes: 10 reject, 11 retry, 12 trap
    /// (crash, time or memory limit), 13 not a valid component, 14 a
    /// fixture failed (with --fixtures).
    Transform(transform::TransformArgs),
    /// Run a component's fixtures: a pass or FAIL line per case, with a
    /// diff of the expected and the actual outcome, and a summary. Exit
    /// 14 when a case fails, 13 for a component that is not valid.
    Test(test::TestArgs),
    /// Write a new transform project (source, fixtures, build, README) in
    /// Rust, JavaScript or Python, ready to build outside this repository.
    New(new::NewArgs),
    /// Check a component against the passerelle:transform world, or a whole
    /// configuration file and the components it names, without connecting.
    Check(check::CheckArgs),
    /// Consume every route's queue and deliver, until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Publish one message (body read from stdin) with publisher confirms.
    Publish(publish::PublishArgs),
    /// Publish every record of an NDJSON or CSV file (or stdin): the
    /// initial import. Exit 15 when it finished with bad lines left out.
    Import(import::ImportArgs),
    /// Inspect, replay or purge a route's dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Swap a route's transform on every running host, through the broker.
    /// The component is checked here first (world, fixtures beside it):
    /// a bad one is published nowhere. Exit 13: not a valid component;
    /// 14: a fixture failed.
    Deploy(deploy::DeployArgs),
    /// Return every host to the version deployed before the current one.
    Rollback(deploy::RollbackArgs),
    /// Make a key pair for signing fleet deploys: the signing key to a
    /// new file (mode 600), the public key (`fleet.verify_key`) printed.
    Keygen(keygen::KeygenArgs),
    /// Run a candidate beside a route's live transform on a running host
    /// (its admin API): its actions are compared, never delivered. Then
    /// --report, --promote or --stop. Exit 13: not a valid component; 14:
    /// a fixture failed.
    Shadow(shadow::ShadowArgs),
}

/// Where a command publishes.
#[derive(Args)]
pub struct Destination {
    #[arg(long)]
    pub exchange: String,
    #[arg(long, default_value = "")]
    pub routing_key: String,
}

/// The configuration file, for every command that reads one.
#[derive(Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long = "config", env = "PASSERELLE_CONFIG", default_value = "passerelle.yaml")]
    pub path: PathBuf,
}

pub fn run(cli: Cli) -> ExitCode {
    let format = cli.log_format;
    if !matches!(cli.command, Command::Run(_)) {
        // `run` sets up its logging once it has read its configuration.
        init_logging(format, None);
    }
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Transform(args) => transform::transform(args).await,
            Command::Test(args) => test::test(args).await,
            Command::New(args) => new::new(args).await,
            Command::Check(args) => check::check(args).await,
            Command::Run(config) => run::run(&config.path, format).await,
            Command::Publish(args) => publish::publish(args).await,
            Command::Import(args) => import::import(args).await,
            Command::Dlq(command) => dlq::dlq(command).await,
            Command::Deploy(args) => deploy::deploy(args).await,
            Command::Rollback(args) => deploy::rollback(args).await,
            Command::Keygen(args) => keygen::keygen(args).await,
            Command::Shadow(args) => shadow::shadow(args).await,
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

/// Logging to stderr in `format`, and to Graylog when configured. A
/// second call (there is none) would keep the first set-up.
pub fn init_logging(format: LogFormat, gelf: Option<&logging::GelfTarget>) {
    if let Err(error) = logging::init(format, gelf) {
        eprintln!("warning: logging: {error:#}");
    }
}
