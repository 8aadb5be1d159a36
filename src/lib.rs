//! sumflow: a declarative pipeline runner for fine-tuning experiments.
//!
//! A pipeline file ([`pipeline`]) names stages and the outputs flowing between them; the
//! [`graph`] orders them; the [`executor`] runs what the content-hashed [`cache`] does not
//! already hold and writes a [`manifest`] per run; [`plan`] explains hits and misses before
//! running; [`report`] shows progress and results. Stages themselves live in `sumflow-stages`.

pub mod bench;
pub mod cache;
pub mod cli;
pub mod diagnostic;
pub mod error;
pub mod executor;
pub mod graph;
pub mod manifest;
pub mod memory;
pub mod models;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod reproduce;

pub use error::Error;
