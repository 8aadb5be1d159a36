//! ROUGE, bit-exact with Python `rouge_score` 0.1.2 (its tokenizer, NLTK's Porter stemmer,
//! rouge1/rouge2/rougeL/rougeLsum), plus aggregation over many pairs.

pub mod aggregate;
pub mod lcs;
pub mod porter;
pub mod scorer;
pub mod tokenize;

#[cfg(test)]
mod parity_tests;

pub use scorer::{RougeScorer, RougeType};
