//! The bodies of the commands `cli` dispatches to, one module per family. They call the
//! runner's pieces (pipeline, cache, run) and the stages crate's `tools`, and print results;
//! errors go back to `main`. Their output goes through [`out!`] and [`outln!`]: a reader that
//! went away (`sumflow cache ls | head -1`) ends the command quietly.

/// `print!` to standard output, ending the command quietly when its reader is gone.
macro_rules! out {
    ($($arg:tt)*) => { $crate::commands::write_out(format_args!($($arg)*))? };
}

/// `println!` to standard output, ending the command quietly when its reader is gone.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::commands::write_out(format_args!("{}\n", format_args!($($arg)*)))? };
}

pub mod audit;
pub mod bench;
pub mod cache;
pub mod exp;
pub mod inspect;
pub mod models;
pub mod remote;
pub mod run;
pub mod score;

/// Output format of `plan` and `params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Writes to standard output; a closed pipe becomes [`Error::ReaderGone`].
pub fn write_out(args: std::fmt::Arguments) -> Result<(), crate::error::Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush()).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => crate::error::Error::ReaderGone,
        _ => crate::error::Error::io("<standard output>", e),
    })
}
