//! `passerelle deploy` and `passerelle rollback`: a route's transform on
//! every running host, through the broker.

use std::path::PathBuf;

use clap::Args;
use passerelle::config::Config;
use passerelle::ops::deploy;
use passerelle::reload::{self, Refusal};
use passerelle::runtime::Runtime;

use super::{ConfigArg, exit};

#[derive(Args)]
pub struct DeployArgs {
    route: String,
    /// The component; `<name>.fixtures.json` beside it travels with it.
    component: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
pub struct RollbackArgs {
    route: String,
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<u8> {
    let config = Config::load_for_deploy(&args.config.path)?;
    let runtime = Runtime::new()?;
    let component = &args.component;
    let bytes = std::fs::read(component).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", component.display()))?;
    let fixtures = reload::fixtures_beside(component).map_err(anyhow::Error::msg)?;
    match deploy::deploy(&config, &runtime, &args.route, bytes, fixtures).await? {
        Ok(version) => {
            println!("deployed {version} to route {} on every host", args.route);
            Ok(0)
        }
        Err(refusal) => {
            eprintln!("refused, nothing deployed: {refusal}");
            Ok(match refusal {
                Refusal::Component(_) => exit::BAD_COMPONENT,
                Refusal::Fixtures(_) => exit::FIXTURES_FAILED,
            })
        }
    }
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<u8> {
    let config = Config::load_for_deploy(&args.config.path)?;
    let runtime = Runtime::new()?;
    let (from, to) = deploy::rollback(&config, &runtime, &args.route).await?;
    println!("rolled route {} back from {from} to {to} on every host", args.route);
    Ok(0)
}
