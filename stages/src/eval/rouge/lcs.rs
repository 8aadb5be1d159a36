//! Longest common subsequences as rouge_score computes them — the length for ROUGE-L, and for
//! ROUGE-Lsum the very LCS its `_backtrack_norec` reads back from the full table — in memory
//! linear in the texts' lengths.
//!
//! rouge_score fills the whole (n+1) × (m+1) table `t[i][j] = LCS(a[..i], b[..j])`: 1.9 GB for
//! a pair of 20,000 words, which is how a long text could bring a run down. Here a row of the
//! table is a bit vector (Hyyrö's bit-parallel LCS: bit `j` of row `i` is clear where
//! `t[i][j+1] = t[i][j] + 1`), a row from the previous one costs ⌈m/64⌉ word operations, and
//! the backtrack's path is found by halving the rows (as Hirschberg's algorithm does), keeping
//! a few rows at a time: the same integers, so the same decisions, so the same path.

use std::collections::HashMap;

/// Rows the backtrack keeps at once, at the bottom of the halving.
const LEAF: usize = 64;

/// Where each token of `b` occurs, by token, and `a`'s tokens as those lists.
struct Occurrences {
    /// For each token of `a` (by position), the positions of the same token in `b`.
    of_a: Vec<Vec<u32>>,
}

impl Occurrences {
    fn new(a: &[String], b: &[String]) -> Self {
        let mut at: HashMap<&str, Vec<u32>> = HashMap::new();
        for (j, t) in b.iter().enumerate() {
            at.entry(t.as_str()).or_default().push(j as u32);
        }
        Occurrences { of_a: a.iter().map(|t| at.get(t.as_str()).cloned().unwrap_or_default()).collect() }
    }
}

/// Row `i` of the table, from row `i - 1` (`v`, over `cols` columns) and where `a[i - 1]`
/// occurs in `b`: `U = V & PM`, `V' = (V + U) | (V & !U)`, the addition carried across words.
fn step(v: &mut [u64], positions: &[u32], cols: usize, mask: &mut [u64]) {
    mask.iter_mut().for_each(|w| *w = 0);
    for &p in positions.iter().take_while(|&&p| (p as usize) < cols) {
        mask[p as usize / 64] |= 1 << (p % 64);
    }
    let mut carry = false;
    for (w, m) in v.iter_mut().zip(mask.iter()) {
        let u = *w & m;
        let (sum, c1) = w.overflowing_add(u);
        let (sum, c2) = sum.overflowing_add(u64::from(carry));
        carry = c1 || c2;
        *w = sum | (*w & !u);
    }
}

/// `t[i][j]` from row `i`'s bits: the clear bits among the first `j`.
fn value(row: &[u64], j: usize) -> usize {
    let full = j / 64;
    let mut ones: usize = row[..full].iter().map(|w| w.count_ones() as usize).sum();
    if !j.is_multiple_of(64) {
        ones += (row[full] & ((1u64 << (j % 64)) - 1)).count_ones() as usize;
    }
    j - ones
}

/// Whether `t[i][j] = t[i][j - 1] + 1`, from row `i`'s bits (`j` ≥ 1).
fn increments(row: &[u64], j: usize) -> usize {
    usize::from(row[(j - 1) / 64] & (1 << ((j - 1) % 64)) == 0)
}

fn words(cols: usize) -> usize {
    cols.div_ceil(64).max(1)
}

/// The length of the longest common subsequence of `a` and `b`.
pub fn lcs_length(a: &[String], b: &[String]) -> usize {
    let occ = Occurrences::new(a, b);
    let mut v = vec![u64::MAX; words(b.len())];
    let mut mask = vec![0; v.len()];
    for positions in &occ.of_a {
        step(&mut v, positions, b.len(), &mut mask);
    }
    value(&v, b.len())
}

/// Indices into `a` of one LCS of `a` and `b`: the one rouge_score's `_backtrack_norec` reads
/// back from the full table (a match is taken; else left while `t[i][j-1] > t[i-1][j]`, else
/// up), ascending.
pub fn lcs_indices(a: &[String], b: &[String]) -> Vec<usize> {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let occ = Occurrences::new(a, b);
    let top = vec![u64::MAX; words(b.len())];
    let mut out = Vec::new();
    walk(a, b, &occ, (0, a.len()), b.len(), &top, &mut out);
    out.reverse();
    out
}

/// The backtrack's path through rows `rows.0 ..= rows.1` of the table, entering at
/// `(rows.1, j_end)`, given row `rows.0`'s bits (`top`, over at least `j_end` columns): the
/// matches it takes go to `out` (descending), and it returns the column where it leaves
/// (at row `rows.0`, or 0).
fn walk(
    a: &[String],
    b: &[String],
    occ: &Occurrences,
    rows: (usize, usize),
    j_end: usize,
    top: &[u64],
    out: &mut Vec<usize>,
) -> usize {
    let (lo, hi) = rows;
    let cols = j_end;
    let w = words(cols);
    let mut mask = vec![0; w];
    if hi - lo <= LEAF {
        // Keep every row of the block, then read the path back through it.
        let mut block: Vec<Vec<u64>> = vec![top[..w].to_vec()];
        for positions in &occ.of_a[lo..hi] {
            let mut next = block.last().expect("the top row").clone();
            step(&mut next, positions, cols, &mut mask);
            block.push(next);
        }
        let row = |i: usize| block[i - lo].as_slice();
        let (mut i, mut j) = (hi, j_end);
        while i > lo && j > 0 {
            if a[i - 1] == b[j - 1] {
                out.push(i - 1);
                i -= 1;
                j -= 1;
            } else if value(row(i), j) - increments(row(i), j) > value(row(i - 1), j) {
                j -= 1;
            } else {
                i -= 1;
            }
        }
        return j;
    }
    // The row halfway, from the top one; the path's lower half first (it is read backwards).
    let mid = (lo + hi) / 2;
    let mut middle = top[..w].to_vec();
    for positions in &occ.of_a[lo..mid] {
        step(&mut middle, positions, cols, &mut mask);
    }
    let j = walk(a, b, occ, (mid, hi), j_end, &middle, out);
    drop(middle);
    if j == 0 {
        return 0;
    }
    walk(a, b, occ, (lo, mid), j, top, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rouge_score's own way: the whole table, then `_backtrack_norec`.
    fn table_way(r: &[String], c: &[String]) -> (usize, Vec<usize>) {
        let mut t = vec![vec![0usize; c.len() + 1]; r.len() + 1];
        for i in 1..=r.len() {
            for j in 1..=c.len() {
                t[i][j] = if r[i - 1] == c[j - 1] { t[i - 1][j - 1] + 1 } else { t[i - 1][j].max(t[i][j - 1]) };
            }
        }
        let (mut i, mut j, mut out) = (r.len(), c.len(), Vec::new());
        while i > 0 && j > 0 {
            if r[i - 1] == c[j - 1] {
                out.push(i - 1);
                i -= 1;
                j -= 1;
            } else if t[i][j - 1] > t[i - 1][j] {
                j -= 1;
            } else {
                i -= 1;
            }
        }
        out.reverse();
        (t[r.len()][c.len()], out)
    }

    /// Pseudo-random texts over a small vocabulary (many ties for the backtrack to break).
    fn text(n: usize, seed: u64, vocab: u64) -> Vec<String> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                format!("w{}", (x >> 33) % vocab)
            })
            .collect()
    }

    #[test]
    fn the_same_length_and_path_as_the_full_table() {
        for (n, m, vocab) in [(0, 5, 3), (1, 1, 2), (7, 130, 3), (200, 90, 5), (300, 300, 4), (129, 700, 20)] {
            for seed in 0..4 {
                let (a, b) = (text(n, seed, vocab), text(m, seed + 100, vocab));
                let (length, path) = table_way(&a, &b);
                assert_eq!(lcs_length(&a, &b), length, "{n}×{m} seed {seed}");
                assert_eq!(lcs_indices(&a, &b), path, "{n}×{m} seed {seed}");
            }
        }
    }
}
