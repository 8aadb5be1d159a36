//! sumflow: a declarative pipeline runner for fine-tuning experiments.
//!
//! A [`pipeline`] file names stages and the outputs flowing between them; the [`graph`] orders
//! them; [`run`] plans what the content-hashed [`cache`] lacks, executes it, writes a manifest
//! per run and audits it; a [`remote`] shares the cache between machines; model stages run in [`worker`] processes; [`cli`] is the command line, whose commands live in `commands`.
//! Stages themselves live in `sumflow-stages`, which this crate sees only through its stage API
//! (the `Stage` trait and the registry) and its `tools`.

pub mod cache;
pub mod cli;
mod commands;
pub mod diagnostic;
pub mod error;
pub mod graph;
pub mod pipeline;
pub mod remote;
pub mod run;
pub mod worker;

pub use error::Error;
