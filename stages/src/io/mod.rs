//! Plumbing every stage family uses: atomic writes, text tables and their Parquet files,
//! fetching from the Hugging Face hub, and how a stage names its model.

pub mod atomic;
pub mod digest;
pub mod hub;
pub mod model_ref;
pub mod table;
