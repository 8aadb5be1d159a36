//! The `subsample` stage: every k-th row (the lab's `index % 100 == 0`), or a seeded random
//! `n` rows or `fraction` of rows; kept rows stay in their original order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::seq::index::sample;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::io::table::Table;
use crate::stage::{ArtifactKind, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext};

/// Params of `subsample`; give exactly one of `every`, `n` and `fraction`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubsampleParams {
    /// The table to subsample.
    pub input: InputRef,
    /// Keep rows whose index is a multiple of `every`, counting from `offset` (1 keeps all).
    #[serde(default)]
    pub every: Option<u64>,
    /// First row kept by `every`.
    #[serde(default)]
    pub offset: u64,
    /// Keep this many rows, drawn at random with `seed` (all rows if the table is smaller).
    #[serde(default)]
    pub n: Option<u64>,
    /// Keep this fraction of rows (0 < f <= 1), drawn at random with `seed`.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Seed for `n` and `fraction`.
    #[serde(default)]
    pub seed: u64,
}

/// The `subsample` stage.
pub struct Subsample;

/// Indices of the rows kept out of `rows`, ascending.
pub fn select(p: &SubsampleParams, rows: usize) -> Vec<usize> {
    if let Some(every) = p.every {
        let every = every.max(1) as usize;
        return (p.offset as usize..rows).step_by(every).collect();
    }
    let n = match (p.n, p.fraction) {
        (Some(n), _) => (n as usize).min(rows),
        (None, Some(f)) => ((rows as f64) * f).round() as usize,
        (None, None) => rows,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut kept = sample(&mut rng, rows, n).into_vec();
    kept.sort_unstable();
    kept
}

impl Stage for Subsample {
    type Params = SubsampleParams;
    const KIND: &'static str = "subsample";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "keep every k-th row, or a seeded random n rows or fraction";

    fn inputs(&self, p: &SubsampleParams) -> Vec<InputSlot> {
        vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }]
    }

    fn outputs(&self, _: &SubsampleParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "all".into(), kind: ArtifactKind::Table }]
    }

    fn check(&self, p: &SubsampleParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        let given = [p.every.is_some(), p.n.is_some(), p.fraction.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            errors.push(ParamError::new("", "give exactly one of `every`, `n` and `fraction`"));
        }
        if p.every == Some(0) {
            errors.push(ParamError::new("every", "must be at least 1"));
        }
        if p.n == Some(0) {
            errors.push(ParamError::new("n", "must be at least 1"));
        }
        if let Some(f) = p.fraction {
            if !(f > 0.0 && f <= 1.0) {
                errors.push(ParamError::new("fraction", format!("must be in (0, 1], got {f}")));
            }
        }
        errors
    }

    fn run(&self, p: &SubsampleParams, ctx: &StageContext) -> Result<(), StageError> {
        let input = ctx.input("input")?;
        let table = Table::read_artifact(input)?;
        let kept = select(p, table.num_rows());
        let source = format!("subsample of {}", p.input);
        table.take(&kept).write_artifact(&ctx.output_dir("all")?, &source, 0)
    }

    fn summary(&self, _: &SubsampleParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let meta = Table::read_meta(outputs.get("all")?).ok()?;
        Some(format!("{} rows kept", meta.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(every: Option<u64>, n: Option<u64>, fraction: Option<f64>, seed: u64) -> SubsampleParams {
        SubsampleParams { input: InputRef::parse("data").unwrap(), every, offset: 0, n, fraction, seed }
    }

    #[test]
    fn every_matches_the_labs_index_modulo() {
        let kept = select(&params(Some(100), None, None, 0), 1500);
        let lab: Vec<usize> = (0..1500).filter(|i| i % 100 == 0).collect();
        assert_eq!(kept, lab);
    }

    #[test]
    fn random_n_is_seeded_sorted_and_distinct() {
        let a = select(&params(None, Some(50), None, 7), 1000);
        assert_eq!(a, select(&params(None, Some(50), None, 7), 1000));
        assert_ne!(a, select(&params(None, Some(50), None, 8), 1000));
        assert_eq!(a.len(), 50);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(select(&params(None, None, Some(0.1), 1), 1000).len(), 100);
    }
}
