//! ROUGE-N, ROUGE-L and ROUGE-Lsum for one (reference, prediction) pair, computed the way
//! `rouge_score.rouge_scorer.RougeScorer.score` does, in the same float order, so F-measures
//! are bit-identical to Python's.

use std::collections::{BTreeSet, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lcs::{lcs_indices, lcs_length};
use super::tokenize::Tokenizer;

/// A ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, JsonSchema)]
pub enum RougeType {
    /// Unigram overlap.
    #[serde(rename = "rouge1")]
    Rouge1,
    /// Bigram overlap.
    #[serde(rename = "rouge2")]
    Rouge2,
    /// Longest common subsequence over the whole text.
    #[serde(rename = "rougeL")]
    RougeL,
    /// Summary-level LCS over newline-separated sentences.
    #[serde(rename = "rougeLsum")]
    RougeLsum,
}

impl RougeType {
    /// The four types the lab reports, in its order.
    pub const ALL: [RougeType; 4] = [RougeType::Rouge1, RougeType::Rouge2, RougeType::RougeL, RougeType::RougeLsum];

    /// The name rouge_score uses.
    pub fn name(self) -> &'static str {
        match self {
            RougeType::Rouge1 => "rouge1",
            RougeType::Rouge2 => "rouge2",
            RougeType::RougeL => "rougeL",
            RougeType::RougeLsum => "rougeLsum",
        }
    }
}

/// Precision, recall and F-measure of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Score {
    /// Matches over prediction length.
    pub precision: f64,
    /// Matches over reference length.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Score {
        // scoring.fmeasure
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Score { precision, recall, fmeasure }
    }
}

/// Scores pairs with a fixed tokenizer, like `RougeScorer(types, use_stemmer)`.
#[derive(Clone)]
pub struct RougeScorer {
    types: Vec<RougeType>,
    tokenizer: Tokenizer,
}

impl RougeScorer {
    /// A scorer for `types`, stemming or not.
    pub fn new(types: &[RougeType], use_stemmer: bool) -> Self {
        RougeScorer { types: types.to_vec(), tokenizer: Tokenizer::new(use_stemmer) }
    }

    /// Scores `prediction` against `target`, one `Score` per configured type, in order.
    pub fn score(&self, target: &str, prediction: &str) -> Vec<Score> {
        let needs_tokens = self.types.iter().any(|t| *t != RougeType::RougeLsum);
        let (target_tokens, prediction_tokens) = if needs_tokens {
            (self.tokenizer.tokenize(target), self.tokenizer.tokenize(prediction))
        } else {
            (Vec::new(), Vec::new())
        };
        self.types
            .iter()
            .map(|t| match t {
                RougeType::Rouge1 => score_ngrams(&target_tokens, &prediction_tokens, 1),
                RougeType::Rouge2 => score_ngrams(&target_tokens, &prediction_tokens, 2),
                RougeType::RougeL => score_lcs(&target_tokens, &prediction_tokens),
                RougeType::RougeLsum => {
                    let sents = |text: &str| -> Vec<Vec<String>> {
                        text.split('\n').filter(|s| !s.is_empty()).map(|s| self.tokenizer.tokenize(s)).collect()
                    };
                    summary_level_lcs(&sents(target), &sents(prediction))
                }
            })
            .collect()
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> Score {
    let t = ngrams(target, n);
    let p = ngrams(prediction, n);
    let intersection: u64 = t.iter().map(|(g, c)| (*c).min(p.get(g).copied().unwrap_or(0))).sum();
    let t_count: u64 = t.values().sum();
    let p_count: u64 = p.values().sum();
    Score::new(intersection as f64 / p_count.max(1) as f64, intersection as f64 / t_count.max(1) as f64)
}

fn score_lcs(target: &[String], prediction: &[String]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_length(target, prediction) as f64;
    Score::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

fn summary_level_lcs(reference: &[Vec<String>], candidate: &[Vec<String>]) -> Score {
    if reference.is_empty() || candidate.is_empty() {
        return Score::default();
    }
    let m: usize = reference.iter().map(Vec::len).sum();
    let n: usize = candidate.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Score::default();
    }
    // Token counts stop a token from being counted more often than it occurs.
    let mut counts_r: HashMap<&str, i64> = HashMap::new();
    let mut counts_c: HashMap<&str, i64> = HashMap::new();
    for t in reference.iter().flatten() {
        *counts_r.entry(t).or_default() += 1;
    }
    for t in candidate.iter().flatten() {
        *counts_c.entry(t).or_default() += 1;
    }
    let mut hits = 0u64;
    for r in reference {
        let union: BTreeSet<usize> = candidate.iter().flat_map(|c| lcs_indices(r, c)).collect();
        for i in union {
            let t = r[i].as_str();
            let (cc, cr) = (counts_c.get(t).copied().unwrap_or(0), counts_r.get(t).copied().unwrap_or(0));
            if cc > 0 && cr > 0 {
                hits += 1;
                *counts_c.entry(t).or_default() -= 1;
                *counts_r.entry(t).or_default() -= 1;
            }
        }
    }
    Score::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(types: &[RougeType], target: &str, prediction: &str) -> Vec<f64> {
        RougeScorer::new(types, false).score(target, prediction).iter().map(|s| s.fmeasure).collect()
    }

    #[test]
    fn rouge_score_readme_example() {
        // Values printed by rouge_score 0.1.2 for its README example.
        let s = RougeScorer::new(&[RougeType::Rouge1, RougeType::RougeL], false)
            .score("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.");
        assert_eq!((s[0].precision, s[0].recall), (0.75, 0.6666666666666666));
        assert_eq!(s[1].fmeasure, 0.5882352941176471);
    }

    #[test]
    fn identical_and_disjoint_texts() {
        assert_eq!(f(&RougeType::ALL, "a b c\nd e", "a b c\nd e"), [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(f(&RougeType::ALL, "a b c", "x y z"), [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(f(&RougeType::ALL, "", "x"), [0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn lsum_unions_lcs_across_sentences() {
        // The ROUGE paper's example (section 3.2): r = w1..w5, c1 = w1 w2 w6 w7 w8,
        // c2 = w1 w3 w8 w9 w5; the union LCS is w1 w2 w3 w5: 4 hits of 5 reference tokens.
        let s =
            RougeScorer::new(&[RougeType::RougeLsum], false).score("w1 w2 w3 w4 w5", "w1 w2 w6 w7 w8\nw1 w3 w8 w9 w5");
        assert_eq!(s[0].recall, 0.8);
        assert_eq!(s[0].precision, 0.4);
    }
}
