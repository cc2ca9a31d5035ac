//! `passerelle transform`: one message from stdin through a component,
//! without a broker; or, with `--fixtures`, a fixtures file checked.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use passerelle::reload::{self, Fixture};
use passerelle::runtime::{GuestLimits, LoadError, Message, RouteContext, Runtime, Transform, TransformFailure};

use super::exit;

#[derive(Args)]
pub struct TransformArgs {
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
pub struct LimitArgs {
    /// Time the transform gets per message.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    time_limit: std::time::Duration,
    /// Linear memory the transform gets per message.
    #[arg(long, default_value = "32MiB")]
    memory_limit: bytesize::ByteSize,
}

impl LimitArgs {
    pub fn guest(&self) -> GuestLimits {
        GuestLimits {
            time: self.time_limit,
            memory: self.memory_limit.as_u64() as usize,
            ..GuestLimits::default()
        }
    }
}

pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub async fn transform(args: TransformArgs) -> anyhow::Result<u8> {
    let runtime = Runtime::new()?;
    let transform = match load_component(&runtime, &args.component)? {
        Ok(transform) => transform,
        Err(code) => return Ok(code),
    };
    let route = route_context("cli", args.config, &args.limits);
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
    let fixtures = read_fixtures(path)?;
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

/// A fixtures file, or an error naming it and what is wrong where.
pub fn read_fixtures(path: &Path) -> anyhow::Result<Vec<Fixture>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    reload::parse_fixtures(&text, &path.display().to_string()).map_err(anyhow::Error::msg)
}

/// What a one-off command runs a transform with: `config` values and limits.
pub fn route_context(name: &str, config: Vec<(String, String)>, limits: &LimitArgs) -> RouteContext {
    RouteContext {
        route: name.into(),
        config: Arc::new(config.into_iter().collect()),
        limits: limits.guest(),
    }
}

/// Loads a component, or reports why it was refused and the exit code to use.
pub fn load_component(runtime: &Runtime, path: &Path) -> anyhow::Result<Result<Transform, u8>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read component {}: {e}", path.display()))?;
    Ok(runtime.load(&bytes).map_err(|error: LoadError| {
        eprintln!("refused: {}: {error}", path.display());
        exit::BAD_COMPONENT
    }))
}
