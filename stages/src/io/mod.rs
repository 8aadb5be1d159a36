//! Plumbing every stage family uses: atomic writes, text tables and their Parquet files,
//! fetching from the Hugging Face hub, how a stage names its model, and how far apart two
//! weight files are.

pub mod atomic;
pub mod digest;
pub mod hub;
pub mod model_ref;
pub mod table;
pub mod weights_diff;
