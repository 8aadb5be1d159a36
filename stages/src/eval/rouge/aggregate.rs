//! Aggregating per-example scores: the mean (deterministic), and a seeded bootstrap confidence
//! interval. Series are resampled together (paired), so a difference between two models gets
//! an interval that accounts for their scores moving together.

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A mean and its bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean over all examples.
    pub mean: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples (0: the interval collapses to the mean).
    pub resamples: u32,
    /// RNG seed.
    pub seed: u64,
    /// Coverage of the interval, e.g. 0.95.
    pub confidence: f64,
}

/// The mean of `xs`, summed in order (0 for none).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Percentile `q` in [0, 1] of sorted `xs`, interpolated linearly (numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Mean and paired-bootstrap interval of each series; all series have the same length.
pub fn intervals(series: &[Vec<f64>], b: Bootstrap) -> Vec<Interval> {
    let n = series.first().map_or(0, Vec::len);
    let means: Vec<f64> = series.iter().map(|s| mean(s)).collect();
    if n == 0 || b.resamples == 0 {
        return means.iter().map(|&m| Interval { mean: m, low: m, high: m }).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(b.seed);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(b.resamples as usize); series.len()];
    let mut idx = vec![0usize; n];
    for _ in 0..b.resamples {
        idx.iter_mut().for_each(|i| *i = rng.random_range(0..n));
        for (s, d) in series.iter().zip(draws.iter_mut()) {
            d.push(idx.iter().map(|&i| s[i]).sum::<f64>() / n as f64);
        }
    }
    let tail = (1.0 - b.confidence) / 2.0;
    draws
        .iter_mut()
        .zip(means)
        .map(|(d, mean)| {
            d.sort_by(f64::total_cmp);
            Interval { mean, low: percentile(d, tail), high: percentile(d, 1.0 - tail) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_contains_the_mean_and_is_seeded() {
        let xs: Vec<f64> = (0..200).map(|i| (i % 17) as f64 / 17.0).collect();
        let b = Bootstrap { resamples: 500, seed: 3, confidence: 0.95 };
        let a = intervals(std::slice::from_ref(&xs), b)[0];
        assert!(a.low < a.mean && a.mean < a.high, "{a:?}");
        assert_eq!(a, intervals(std::slice::from_ref(&xs), b)[0]);
        let wider = intervals(&[xs], Bootstrap { confidence: 0.99, ..b })[0];
        assert!(wider.high - wider.low > a.high - a.low);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], 25) == 1.75
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    }
}
