//! `sumflow-worker`, the build with libtorch: `sumflow-worker stage ID` runs one model stage for
//! the runner (the job on stdin, progress as JSON lines on stdout: see `sumflow::worker`); any
//! other command line is sumflow's own, which the runner hands over for the model commands.

use std::process::ExitCode;

use clap::Parser;
use sumflow::cli::{self, Cli, Host};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "stage") {
        return sumflow::worker::serve::serve();
    }
    cli::exit(cli::main(Cli::parse(), Host::Worker(cli::model_commands)))
}
