//! Running a pipeline: the [`plan`] (hit or miss per stage, and why), the [`executor`] that runs
//! the misses on the [`gpus`] there are, the [`lockfile`] a successful run writes, the [`manifest`] each run writes and the audits that
//! check it ([`reproduce`]), peak [`memory`] per stage, and the [`console`] that shows a run as
//! it goes.

pub mod console;
pub mod executor;
pub mod gpus;
pub mod lockfile;
pub mod manifest;
pub mod memory;
pub mod plan;
pub mod reproduce;
