//! `passerelle new`: a transform project in a folder of its own, ready to
//! build outside this repository (`scaffold` says what it holds).

use std::path::PathBuf;

use clap::Args;
use passerelle::scaffold::{self, Language};

#[derive(Args)]
pub struct NewArgs {
    /// The project's name: lowercase words of letters and digits, joined by
    /// dashes (e.g. crm-to-shop). Also its folder, crate or package, and
    /// component file.
    name: String,
    /// The language the transform is written in.
    #[arg(long, value_enum, default_value_t = Language::Rust)]
    lang: Language,
    /// The folder the project's folder is made in.
    #[arg(long, value_name = "PARENT", default_value = ".")]
    dir: PathBuf,
}

pub async fn new(args: NewArgs) -> anyhow::Result<u8> {
    let created = scaffold::create(&args.dir, &args.name, args.lang)?;
    let dir = created.dir.display();
    println!("created {dir}/, a {} transform:", args.lang);
    for file in &created.files {
        println!("  {dir}/{file}");
    }
    let component = scaffold::component_path(&args.name, args.lang);
    println!();
    println!("next:");
    println!("  cd {dir}");
    match args.lang {
        Language::Rust => {
            println!("  rustup target add wasm32-wasip2                  # once");
            println!("  cargo build --release --target wasm32-wasip2");
            println!("      # or: cargo component build --release (target/wasm32-wasip1/release/)");
        }
        Language::Js => {
            println!("  npm install                                       # once");
            println!("  npm run build");
        }
        Language::Python => {
            println!("  ./build.sh                                        # installs componentize-py into .venv once")
        }
    }
    println!("  passerelle transform --component {component} --fixtures fixtures.json");
    println!("then point a route's `transform:` at the component (README.md shows the YAML, with the");
    println!(
        "fixtures beside it as {}.fixtures.json): a running host swaps in each new build",
        args.name
    );
    println!("copied over it, once it fits the world and passes the fixtures.");
    Ok(0)
}
