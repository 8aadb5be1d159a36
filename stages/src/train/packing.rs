//! Packing: several training examples per row, so that rows are full instead of padded, and
//! an epoch's batches come in one shape (two where a few summaries are long).
//!
//! Padding to a few shapes costs work: on DialogSum's train split a CUDA-graph epoch computes
//! 1.36–1.41 tokens per real one ([`crate::shapes`]). Packed, dialogues fill rows of the
//! longest source's width one after another (first-fit, longest first), their summaries the
//! label rows beside them, and each position attends only within its own example
//! ([`crate::t5::model::T5::packed_loss`]), so the loss is the one the examples give in rows of their
//! own. What packing costs instead: attention runs over the whole row (its masked scores are
//! computed too), which for T5-base's 768-wide layers and 512-token rows is about a tenth of
//! a layer's products — and more on the CPU, which writes attention out (measured there:
//! slower than unpacked batches, so packing is opt-in; `benchmarks/README.md`).
//!
//! Label rows are sized for the summaries a row of dialogues usually brings, not for the
//! longest summary of all (DialogSum's train split: 84 label tokens per 512 source tokens on
//! average, 112-token label rows; 19 of 12,460 summaries are longer, the longest 255 tokens).
//! The few examples with longer summaries are packed among themselves into wider label rows:
//! their own batches, a second shape.
//!
//! An epoch is a list of batches, each the examples it holds in row order
//! ([`Packing::batches`]); [`Packing::rows`] cuts such a list into rows again (first fit in
//! order, which needs no more rows than the packing made).

use std::cmp::Reverse;

use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::train::shapes::Shape;
use crate::data::tokenize::TokenTable;

/// The shapes of a packed run's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Rows per batch.
    pub rows: usize,
    /// Source tokens per row.
    pub sources: usize,
    /// Label tokens per row.
    pub labels: usize,
    /// Label tokens per row, and rows per batch, in the batches of the examples whose labels
    /// are longer than `labels`.
    pub long: (usize, usize),
}

/// A packed batch on the host, row-major `(rows, width)`: token ids, and for each position the
/// number of the example it belongs to within its row (1, 2, …; 0 for padding).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBatch {
    /// Its shape: (rows, source width, label width).
    pub shape: Shape,
    /// Source ids (padding 0).
    pub sources: Vec<i64>,
    /// Sources' segment numbers.
    pub source_segments: Vec<i64>,
    /// Label ids (padding -100, which the loss ignores).
    pub labels: Vec<i64>,
    /// Labels' segment numbers.
    pub label_segments: Vec<i64>,
}

impl Packing {
    /// The packing for `tokens` under a budget of `budget` padded tokens per batch (sources and
    /// labels, as unpacked batches count them) and at most `max_rows` rows: rows as wide as the
    /// longest source (to a multiple of 64); labels in proportion with a quarter to spare, and
    /// at least the 95th percentile's length (a multiple of 16), so that rows fill by their
    /// sources; longer labels in rows as wide as the longest.
    pub fn for_table(tokens: &TokenTable, budget: usize, max_rows: usize) -> Packing {
        let total = |t: &[Vec<i32>]| t.iter().map(Vec::len).sum::<usize>().max(1);
        let mut label_lengths: Vec<usize> = tokens.labels.iter().map(Vec::len).collect();
        label_lengths.sort_unstable();
        let percentile = |q: usize| label_lengths.get(label_lengths.len() * q / 100).copied().unwrap_or(1);
        let sources = tokens.input_ids.iter().map(Vec::len).max().unwrap_or(1).max(1).next_multiple_of(64);
        let share = (sources * total(&tokens.labels)).div_ceil(total(&tokens.input_ids));
        let labels = percentile(95).max(share + share / 4).max(1).next_multiple_of(16);
        let longest = label_lengths.last().copied().unwrap_or(1).max(1).next_multiple_of(16);
        let rows = |labels: usize| (budget / (sources + labels)).clamp(1, max_rows.max(1));
        Packing { rows: rows(labels), sources, labels, long: (longest.max(labels), rows(longest.max(labels))) }
    }

    /// The shape the batch `examples` runs in: the usual one, or, holding labels longer than
    /// its rows take, the long labels' one.
    pub fn shape(&self, tokens: &TokenTable, examples: &[usize]) -> Shape {
        match examples.iter().any(|&r| self.long_labels(tokens, r)) {
            false => [self.rows, self.sources, self.labels],
            true => [self.long.1, self.sources, self.long.0],
        }
    }

    /// The shapes an epoch of `tokens` runs in.
    #[cfg(test)]
    pub fn shapes(&self, tokens: &TokenTable) -> Vec<Shape> {
        let mut shapes = vec![[self.rows, self.sources, self.labels]];
        if (0..tokens.labels.len()).any(|r| self.long_labels(tokens, r)) {
            shapes.push([self.long.1, self.sources, self.long.0]);
        }
        shapes
    }

    fn long_labels(&self, tokens: &TokenTable, r: usize) -> bool {
        tokens.labels[r].len() > self.labels
    }

    /// Whether example `r` fits a row of `label_width` label tokens beside `used` = (source,
    /// label) tokens.
    fn fits(&self, tokens: &TokenTable, r: usize, label_width: usize, used: (usize, usize)) -> bool {
        used.0 + tokens.input_ids[r].len() <= self.sources && used.1 + tokens.labels[r].len() <= label_width
    }

    /// `examples` packed into rows of `label_width` label tokens: first fit, longest source first.
    fn pack(&self, tokens: &TokenTable, examples: &[usize], label_width: usize) -> Vec<Vec<usize>> {
        let mut used: Vec<(usize, usize)> = Vec::new();
        let mut rows: Vec<Vec<usize>> = Vec::new();
        for &r in examples {
            let row = match used.iter().position(|&u| self.fits(tokens, r, label_width, u)) {
                Some(i) => i,
                None => {
                    used.push((0, 0));
                    rows.push(Vec::new());
                    used.len() - 1
                }
            };
            used[row].0 += tokens.input_ids[r].len();
            used[row].1 += tokens.labels[r].len();
            rows[row].push(r);
        }
        rows
    }

    /// Epoch `epoch`'s batches: the examples shuffled with the seed, packed into rows first fit,
    /// longest source first (those with long labels apart, in their wider rows); the rows
    /// shuffled and taken as many at a time as a batch holds; the batches shuffled. Each batch
    /// lists its examples row after row.
    pub fn batches(&self, tokens: &TokenTable, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch));
        let mut order: Vec<usize> = (0..tokens.input_ids.len()).collect();
        order.shuffle(&mut rng);
        order.sort_by_key(|&r| Reverse(tokens.input_ids[r].len()));
        let (long, usual): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&r| self.long_labels(tokens, r));
        let mut out = Vec::new();
        for (examples, (label_width, rows)) in [(usual, (self.labels, self.rows)), (long, self.long)] {
            let mut packed = self.pack(tokens, &examples, label_width);
            packed.shuffle(&mut rng);
            out.extend(packed.chunks(rows).map(|batch| batch.concat()));
        }
        out.shuffle(&mut rng);
        out
    }

    /// `examples` (a batch, in row order) cut into rows: each row takes the next examples while
    /// they fit. A list made by [`Packing::batches`] needs no more rows than it was packed in
    /// (taking as much as fits, in order, never needs more rows than any cut in order).
    pub fn rows(&self, tokens: &TokenTable, examples: &[usize]) -> Vec<Vec<usize>> {
        let [_, _, label_width] = self.shape(tokens, examples);
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut used = (0, 0);
        for &r in examples {
            assert!(self.fits(tokens, r, label_width, (0, 0)), "packing: example {r} is wider than a row");
            if rows.is_empty() || !self.fits(tokens, r, label_width, used) {
                rows.push(Vec::new());
                used = (0, 0);
            }
            used.0 += tokens.input_ids[r].len();
            used.1 += tokens.labels[r].len();
            rows.last_mut().expect("just pushed").push(r);
        }
        rows
    }

    /// The batch `examples` laid out in this packing's shape.
    pub fn collate(&self, tokens: &TokenTable, examples: &[usize]) -> PackedBatch {
        let shape @ [n, s, l] = self.shape(tokens, examples);
        let rows = self.rows(tokens, examples);
        assert!(rows.len() <= n, "packing: {} rows for a batch of {n}", rows.len());
        let mut b = PackedBatch {
            shape,
            sources: vec![0; n * s],
            source_segments: vec![0; n * s],
            labels: vec![-100; n * l],
            label_segments: vec![0; n * l],
        };
        for (i, row) in rows.iter().enumerate() {
            let (mut at_s, mut at_l) = (i * s, i * l);
            for (k, &r) in row.iter().enumerate() {
                let segment = k as i64 + 1;
                for &t in &tokens.input_ids[r] {
                    (b.sources[at_s], b.source_segments[at_s]) = (t as i64, segment);
                    at_s += 1;
                }
                for &t in &tokens.labels[r] {
                    (b.labels[at_l], b.label_segments[at_l]) = (t as i64, segment);
                    at_l += 1;
                }
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` examples of pseudo-random lengths: sources 5–300 tokens, labels 2–40; every
    /// `long`-th label 150 tokens instead (0: none).
    fn table(n: usize, long: usize) -> TokenTable {
        let len = |i: usize, m: usize, lo: usize| lo + (i * 7919 + i * i * 31) % m;
        let label = |i: usize| if long > 0 && i.is_multiple_of(long) { 150 } else { len(i + 3, 39, 2) };
        TokenTable {
            ids: (0..n).map(|i| i.to_string()).collect(),
            input_ids: (0..n).map(|i| (0..len(i, 296, 5)).map(|t| 2 + (t % 50) as i32).collect()).collect(),
            labels: (0..n).map(|i| (0..label(i)).map(|t| 2 + (t % 50) as i32).collect()).collect(),
        }
    }

    /// Every example once per epoch, in rows that fit their batch's shape, the rows nearly full;
    /// the order changes with the epoch and repeats with the seed.
    fn check_epoch(tokens: &TokenTable, p: &Packing) -> Vec<Vec<usize>> {
        let epoch = p.batches(tokens, 7, 0);
        let mut seen: Vec<usize> = epoch.concat();
        seen.sort();
        assert_eq!(seen, (0..tokens.ids.len()).collect::<Vec<_>>(), "each example once");
        let real: usize = tokens.input_ids.iter().map(Vec::len).sum();
        let (mut row_tokens, mut computed) = (0, 0);
        for batch in &epoch {
            let [n, sources, labels] = p.shape(tokens, batch);
            let rows = p.rows(tokens, batch);
            assert!(rows.len() <= n, "{} rows for {n}", rows.len());
            for row in &rows {
                assert!(row.iter().map(|&e| tokens.input_ids[e].len()).sum::<usize>() <= sources);
                assert!(row.iter().map(|&e| tokens.labels[e].len()).sum::<usize>() <= labels);
            }
            row_tokens += rows.len() * sources;
            computed += n * sources;
        }
        // Rows full to within a few percent; batches too, but for the last ones.
        assert!(real as f64 / row_tokens as f64 > 0.93, "{real} of {row_tokens}");
        assert!(real as f64 / computed as f64 > 0.85, "{real} of {computed}");
        assert_ne!(p.batches(tokens, 7, 1), epoch);
        assert_eq!(p.batches(tokens, 7, 0), epoch);
        epoch
    }

    #[test]
    fn every_example_lands_once_in_rows_that_fit_and_fill() {
        let tokens = table(500, 0);
        let p = Packing::for_table(&tokens, 4096, 64);
        assert_eq!((p.sources, p.labels), (320, 64), "labels: 44 per 320 source tokens, a quarter more");
        assert_eq!(p.rows, 4096 / (320 + 64));
        assert_eq!(p.shapes(&tokens), vec![[10, 320, 64]], "one shape");
        check_epoch(&tokens, &p);
    }

    #[test]
    fn long_labels_run_in_their_own_wider_batches() {
        let tokens = table(500, 50);
        let p = Packing::for_table(&tokens, 4096, 64);
        assert_eq!((p.labels, p.long), (64, (160, 8)));
        assert_eq!(p.shapes(&tokens), vec![[10, 320, 64], [8, 320, 160]]);
        let epoch = check_epoch(&tokens, &p);
        let long: Vec<&Vec<usize>> = epoch.iter().filter(|b| p.shape(&tokens, b)[2] == 160).collect();
        assert_eq!(long.len(), 2, "10 long labels, one per row, 8 rows a batch");
        assert!(long.iter().all(|b| b.iter().all(|&r| r.is_multiple_of(50))), "only long labels there");
    }

    #[test]
    fn a_batch_is_laid_out_row_by_row_with_segments() {
        let tokens = TokenTable {
            ids: vec!["a".into(), "b".into(), "c".into()],
            input_ids: vec![vec![5, 6, 1], vec![7, 1], vec![8; 60]],
            labels: vec![vec![9, 1], vec![10, 11, 1], vec![12; 20]],
        };
        let p = Packing::for_table(&tokens, 1000, 2);
        assert_eq!(p, Packing { rows: 2, sources: 64, labels: 32, long: (32, 2) });
        let b = p.collate(&tokens, &[0, 1, 2]);
        assert_eq!(b.shape, [2, 64, 32]);
        assert_eq!(&b.sources[..6], &[5, 6, 1, 7, 1, 0]);
        assert_eq!(&b.source_segments[..6], &[1, 1, 1, 2, 2, 0]);
        assert_eq!(&b.labels[..6], &[9, 1, 10, 11, 1, -100]);
        assert_eq!(&b.label_segments[..6], &[1, 1, 2, 2, 2, 0]);
        // The third does not fit beside them: the second row.
        assert_eq!((b.sources[64], b.source_segments[64 + 59], b.source_segments[64 + 60]), (8, 1, 0));
        assert_eq!((b.labels[32 + 19], b.labels[32 + 20]), (12, -100));
    }
}
