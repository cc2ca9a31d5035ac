//! The `passerelle` command line: parses the arguments and hands the
//! command to `cli`, which maps its outcome to an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
