//! sumflow's integration tests: one test binary. The runner is exercised with fake stages
//! (`executor`) and through the `sumflow` binary on real data (`validate`, `load`, `cache`,
//! `lab`).

mod common;

mod architecture;
mod cache;
#[cfg(feature = "torch")]
mod distributed;
mod executor;
mod hostile;
mod lab;
mod load;
#[cfg(feature = "torch")]
mod models;
mod remote;
mod sweeps;
#[cfg(feature = "torch")]
mod torchrun;
#[cfg(feature = "torch")]
mod training;
mod validate;
mod workers;
