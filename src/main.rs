//! The `sumflow` binary: parse the command line, run it, print any error, exit non-zero.

use std::process::ExitCode;

use clap::Parser;
use sumflow::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::main(Cli::parse()) {
        Ok(code) => code,
        // Pipeline diagnostics carry their own `error:` headers.
        Err(e @ sumflow::Error::Pipeline(_)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
