//! The `sumflow` binary, the runner: parse the command line, run it, print any error with its
//! causes, exit non-zero. It does not load libtorch: model stages and commands run in
//! `sumflow-worker`.

use std::process::ExitCode;

use clap::Parser;
use sumflow::cli::{self, Cli, Host};

fn main() -> ExitCode {
    cli::exit(cli::main(Cli::parse(), Host::Runner))
}
