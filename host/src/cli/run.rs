//! `passerelle run`: start the host, serve until SIGTERM or SIGINT, then
//! let the messages in flight finish.

use std::path::Path;

use passerelle::config::Config;
use passerelle::host::Host;
use passerelle::logging::LogFormat;
use passerelle::routes;
use passerelle::runtime::{ComponentCache, Runtime};
use tokio_util::sync::CancellationToken;

pub async fn run(config: &Path, format: LogFormat) -> anyhow::Result<u8> {
    let config = Config::load(config);
    let gelf = config.as_ref().ok().and_then(|config| config.logging.gelf.as_ref());
    super::init_logging(format, gelf);
    let config = config?;
    let runtime = Runtime::pooled(routes::pool_size(&config))?.with_cache(&ComponentCache::default_dir())?;
    let host = Host::start(config, runtime).await?;
    tokio::spawn(cancel_on_signal(host.shutdown_token()));
    host.wait().await?;
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
