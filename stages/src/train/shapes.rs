//! The shapes training batches run in: each batch's rows and widths padded up to multiples
//! ([`Padding`]), and, with CUDA graphs, rare shapes run in larger ones ([`ShapePlan`]).
//!
//! With CUDA graphs every new shape costs a capture: the whole step issued from the host, then
//! replayed once. On an H200 (run 4) a capture took ≈ 4 replays' time (full fine-tuning of the
//! flan-t5-base shape: 0.35 s against 84 ms; LoRA: 0.23 s against 73 ms). A DialogSum epoch
//! padded to multiples of 64 / 16 / 8 has 21 shapes in 207 batches, and 9 of them come up once
//! or twice: such a batch is cheaper padded up to a larger shape that is captured anyway. Merged
//! so, the epoch runs in 9 shapes for 4 % more tokens computed: 12 captures fewer, at the cost
//! of about 8 average steps.
//! Padding changes no loss and no gradient (`train::tests::padding_changes_shapes_not_the_loss_or_gradients`).

use std::collections::{BTreeMap, HashMap};

use crate::data::tokenize::TokenTable;

/// A padded batch shape: (rows, source width, label width).
pub type Shape = [usize; 3];

/// How a batch is padded: each width to its longest row rounded up to a multiple (1: no
/// rounding), and the rows to a multiple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Sources' width multiple.
    pub sources: usize,
    /// Labels' width multiple.
    pub labels: usize,
    /// Rows multiple.
    pub rows: usize,
}

impl Padding {
    /// To the longest row only.
    #[cfg(test)]
    pub const NONE: Padding = Padding { sources: 1, labels: 1, rows: 1 };

    /// The padded shape of the batch `rows`.
    pub fn shape(&self, tokens: &TokenTable, rows: &[usize]) -> Shape {
        let width = |table: &[Vec<i32>], multiple: usize| {
            rows.iter().map(|&r| table[r].len()).max().unwrap_or(1).max(1).next_multiple_of(multiple.max(1))
        };
        [
            rows.len().next_multiple_of(self.rows.max(1)),
            width(&tokens.input_ids, self.sources),
            width(&tokens.labels, self.labels),
        ]
    }
}

/// What a capture costs, in steps of the shape captured. Measured 3.2 (LoRA) to 4.2 (full); the
/// lower figure, so that a merge is made only where it surely pays.
pub const CAPTURE_STEPS: f64 = 3.0;

/// The shapes an epoch's batches run in.
#[derive(Debug, Clone)]
pub struct ShapePlan {
    padding: Padding,
    /// Shapes run in a larger one, and that one.
    into: HashMap<Shape, Shape>,
}

impl ShapePlan {
    /// Batches padded as `padding` says; with `merge` (CUDA graphs), the rare shapes of `epoch`
    /// (its batches, as rows of `tokens`) run in larger ones where that costs less than their
    /// captures ([`merge`]).
    pub fn new(padding: Padding, tokens: &TokenTable, epoch: &[Vec<usize>], merge_rare: bool) -> Self {
        let into = if merge_rare {
            let mut counts = BTreeMap::new();
            for rows in epoch {
                *counts.entry(padding.shape(tokens, rows)).or_insert(0) += 1;
            }
            merge(&counts).into_iter().filter(|(s, t)| s != t).collect()
        } else {
            HashMap::new()
        };
        ShapePlan { padding, into }
    }

    /// The shape the batch `rows` runs in.
    pub fn shape(&self, tokens: &TokenTable, rows: &[usize]) -> Shape {
        let padded = self.padding.shape(tokens, rows);
        self.into.get(&padded).copied().unwrap_or(padded)
    }
}

/// Tokens a step of `shape` computes (its cost, leaving out attention's quadratic part).
fn computed(shape: &Shape) -> f64 {
    (shape[0] * (shape[1] + shape[2])) as f64
}

/// Whether a batch of shape `small` fits in `big` (every dimension at least as large).
fn covers(big: &Shape, small: &Shape) -> bool {
    big.iter().zip(small).all(|(b, s)| b >= s)
}

/// At most this many shapes are merged: each round of [`merge`] weighs every pair, so its cost
/// grows with the cube of the count. An epoch padded as graphs pad it has a few dozen.
pub const MAX_MERGED: usize = 256;

/// For each shape of `counts` (shape → batches of it in an epoch), the shape its batches run
/// in: itself, or a larger shape of `counts` when padding its batches up to it costs less than
/// the capture it saves (`batches × extra tokens < CAPTURE_STEPS × its tokens`). Greedy: the
/// merge that saves most first, until none pays; a shape merged into is then counted with the
/// batches it took in. Beyond [`MAX_MERGED`] shapes every shape stays as it is.
pub fn merge(counts: &BTreeMap<Shape, usize>) -> BTreeMap<Shape, Shape> {
    if counts.len() > MAX_MERGED {
        return counts.keys().map(|&s| (s, s)).collect();
    }
    let mut live = counts.clone();
    let mut into: HashMap<Shape, Shape> = HashMap::new();
    loop {
        let mut best: Option<(f64, Shape, Shape)> = None;
        for (small, &n) in &live {
            for big in live.keys().filter(|big| *big != small && covers(big, small)) {
                let saving = CAPTURE_STEPS * computed(small) - n as f64 * (computed(big) - computed(small));
                if saving > 0.0 && best.is_none_or(|(b, ..)| saving > b) {
                    best = Some((saving, *small, *big));
                }
            }
        }
        let Some((_, small, big)) = best else { break };
        let n = live.remove(&small).expect("a live shape");
        *live.get_mut(&big).expect("a live shape") += n;
        into.insert(small, big);
    }
    counts
        .keys()
        .map(|&s| {
            let mut t = s;
            while let Some(&next) = into.get(&t) {
                t = next;
            }
            (s, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DialogSum epoch's shapes (the train split, batches of ≤ 16,384 tokens and ≤ 64 rows,
    /// padded to 64 / 16 / 8, seed 0) with their batch counts.
    fn dialogsum_epoch() -> BTreeMap<Shape, usize> {
        [
            ([24, 512, 176], 1),
            ([32, 512, 80], 1),
            ([32, 512, 96], 3),
            ([40, 384, 64], 1),
            ([40, 384, 80], 1),
            ([40, 448, 80], 3),
            ([40, 512, 80], 1),
            ([48, 128, 16], 1),
            ([48, 320, 64], 4),
            ([48, 384, 64], 7),
            ([56, 320, 64], 14),
            ([64, 128, 16], 2),
            ([64, 128, 32], 51),
            ([64, 128, 48], 2),
            ([64, 192, 32], 21),
            ([64, 192, 48], 51),
            ([64, 192, 80], 1),
            ([64, 256, 48], 33),
            ([64, 256, 64], 5),
            ([64, 320, 48], 2),
            ([64, 320, 64], 2),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn rare_shapes_run_in_larger_ones_when_that_is_cheaper_than_capturing_them() {
        let counts = dialogsum_epoch();
        let plan = merge(&counts);
        // Every shape runs in one that holds it, and that one is not merged further.
        for (s, t) in &plan {
            assert!(covers(t, s), "{s:?} in {t:?}");
            assert_eq!(plan[t], *t, "{t:?} is final");
        }
        let shapes: std::collections::BTreeSet<&Shape> = plan.values().collect();
        let before: f64 = counts.iter().map(|(s, &n)| n as f64 * computed(s)).sum();
        let after: f64 = counts.iter().map(|(s, &n)| n as f64 * computed(&plan[s])).sum();
        let capture =
            |shapes: &mut dyn Iterator<Item = &Shape>| shapes.map(|s| CAPTURE_STEPS * computed(s)).sum::<f64>();
        // Fewer captures, and the padding added costs less than they did.
        assert_eq!(shapes.len(), 9, "{shapes:?}");
        assert!(after - before < capture(&mut counts.keys()) - capture(&mut shapes.iter().copied()));
        assert!(after / before < 1.05, "{:.3} times the tokens", after / before);
        // The common shapes stay as they are; the rare ones move.
        assert_eq!(plan[&[64, 128, 32]], [64, 128, 32]);
        assert_eq!(plan[&[64, 192, 48]], [64, 192, 48]);
        assert_eq!(plan[&[32, 512, 80]], [32, 512, 96]);
        assert_eq!(plan[&[64, 128, 16]], [64, 128, 32]);
    }

    #[test]
    fn common_shapes_and_shapes_nothing_holds_stay() {
        // Two shapes of 50 batches: padding one to the other would cost 50 small steps' worth.
        let counts: BTreeMap<Shape, usize> = [([8, 64, 16], 50), ([16, 64, 16], 50)].into_iter().collect();
        assert!(merge(&counts).iter().all(|(s, t)| s == t));
        // Neither holds the other.
        let counts: BTreeMap<Shape, usize> = [([8, 128, 16], 1), ([16, 64, 16], 1)].into_iter().collect();
        assert!(merge(&counts).iter().all(|(s, t)| s == t));
        // One batch of a shape just below a common one moves.
        let counts: BTreeMap<Shape, usize> = [([8, 64, 16], 1), ([8, 128, 16], 40)].into_iter().collect();
        assert_eq!(merge(&counts)[&[8, 64, 16]], [8, 128, 16]);
        // Too many shapes to weigh: all stay (and quickly).
        let many: BTreeMap<Shape, usize> = (1..=MAX_MERGED + 1).map(|i| ([8, 64 * i, 16], 1)).collect();
        assert!(merge(&many).iter().all(|(s, t)| s == t));
    }
}
