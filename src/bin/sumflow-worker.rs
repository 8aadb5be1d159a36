//! `sumflow-worker`, the build with libtorch: `sumflow-worker stage ID` runs one model stage for
//! the runner (the job on stdin, progress as JSON lines on stdout: see `sumflow::worker`);
//! `lead` and `follow` carry a torchrun world's distributed stages (`sumflow::worker::torchrun`);
//! any other command line is sumflow's own, which the runner hands over for the model commands.

use std::process::ExitCode;

use clap::Parser;
use sumflow::cli::{self, Cli, Host};

fn main() -> ExitCode {
    match std::env::args_os().nth(1).as_deref().and_then(|a| a.to_str()) {
        Some("stage") => return sumflow::worker::serve::serve(),
        Some("lead") => return sumflow::worker::torchrun::serve::lead(),
        Some("follow") => return sumflow::worker::torchrun::serve::follow(),
        _ => {}
    }
    cli::exit(cli::main(Cli::parse(), Host::Worker(cli::model_commands)))
}
