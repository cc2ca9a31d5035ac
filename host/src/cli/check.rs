//! `passerelle check`: a component against the world, or a whole
//! configuration file and every component it names, without connecting.

use std::path::PathBuf;

use clap::Args;
use passerelle::config::Config;
use passerelle::routes;
use passerelle::runtime::Runtime;

use super::transform::load_component;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["component", "config"])))]
pub struct CheckArgs {
    /// The component to check.
    #[arg(long)]
    component: Option<PathBuf>,
    /// The configuration file to check, with every route's component.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let runtime = Runtime::new()?;
    if let Some(path) = args.config {
        let config = Config::load(&path)?;
        for route in routes::load(&config, &runtime).await? {
            println!(
                "ok: route {} ({} -> version {})",
                route.name,
                route.route.queue,
                route.slot.current().version
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
