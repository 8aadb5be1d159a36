//! The data stages: `load` (files, folders of splits, hub datasets), `subsample`, `join`, and
//! `tokenize` with the T5-style tokenizer it uses.

pub mod join;
pub mod load;
pub mod subsample;
pub mod tokenize;
pub mod tokenizer;
