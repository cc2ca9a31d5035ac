//! The `passerelle` command line: parses the arguments and hands the
//! command to `cli`, which maps its outcome to an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// glibc's allocator serialises the worker threads on its arena locks under
/// load (see docs/benchmarks.md); mimalloc keeps a heap per thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
