//! The evaluation stages: `score` (ROUGE, bit-exact with rouge_score, with bootstrap intervals)
//! and `report` (the comparison for people: tables, plots, examples).

pub mod report;
pub mod rouge;
pub mod score;
