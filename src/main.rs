//! The `sumflow` binary: parse the command line, run it, print any error with its causes, exit
//! non-zero. The only place errors are printed.

use std::process::ExitCode;

use clap::Parser;
use sumflow::cli::{self, Cli};
use sumflow::error::chain;

fn main() -> ExitCode {
    match cli::main(Cli::parse()) {
        Ok(code) => code,
        // `sumflow cache ls | head -1`: the reader has what it wanted.
        Err(sumflow::Error::ReaderGone) => ExitCode::SUCCESS,
        // Pipeline diagnostics carry their own `error:` headers.
        Err(e @ sumflow::Error::Pipeline(_)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            for (k, message) in chain(&e).iter().enumerate() {
                eprintln!("{}: {message}", if k == 0 { "error" } else { "caused by" });
            }
            ExitCode::FAILURE
        }
    }
}
