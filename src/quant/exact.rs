//! The exact b-bit solver (SPEC §1.4): the global minimizer of `||W - alpha q||^2` over
//! `alpha > 0` and `q` in the power-of-two level set.
//!
//! With the magnitudes `a` sorted, weight i drops below cut `m_k` (the midpoint between
//! levels k and k+1) when alpha passes its breakpoint `a_i / m_k`. Between breakpoints
//! the assignment is fixed and the best error is `||W||^2 - A^2/B`
//! (`A = Σ a_i q_i`, `B = Σ q_i^2`), so the optimum is the largest `A^2/B` over the
//! assignments met along the sweep. Instead of merging all `N n` breakpoints, the alpha
//! axis is searched best-first: a cell `[l, r]` of alpha gets a lower bound on the error
//! from prefix sums (every |W_i| at its distance to the nearest interval `[l L_k, r L_k]`),
//! cells that cannot beat the best assignment found so far are dropped, wide ones are
//! split, and the breakpoints of narrow ones are sorted and swept exactly. Only
//! `alpha <= 4/3 max|W|` needs searching (see `solve`). Cost: an O(N) radix sort and
//! prefix sums, then O(n log N) per cell plus the sorting of the swept breakpoints
//! (in the worst case all `N n` of them: O(N n log(N n))), in O(N) memory.
use super::{cpu, levels, LevelSet};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use tch::{Device, Tensor};

/// Sorted magnitudes per entry of the in-cache search index.
const SEARCH_BLOCK: usize = 64;

/// Cells holding at most this many breakpoints are swept rather than split.
const SWEEP_BREAKPOINTS: usize = 2048;

/// The optimal scale for `w` (float32, any device) as a 0-d float32 tensor on `w`'s
/// device; the solver runs on a CPU copy.
pub(crate) fn scale(w: &Tensor, n: u32) -> Tensor {
    let host = w.to_device(Device::Cpu).contiguous();
    let alpha = optimal_scale(cpu::slice::<f32>(&host), n) as f32;
    Tensor::from(alpha).to_device(w.device())
}

/// The scale of the global minimizer of `||w - alpha q||^2` over `alpha > 0` and `q` in
/// `{0, ±2^(1-n), …, ±1}^N`, as float32 (the nearest-level assignment at this alpha is
/// optimal), normalized so the largest |w| sits on level 1. 0 when `w` has no finite
/// nonzero entry; NaN and infinite entries are left out.
pub fn optimal_scale(w: &[f32], n: u32) -> f64 {
    let magnitudes = cpu::sorted_magnitudes(w);
    let Some(&largest) = magnitudes.last() else {
        return 0.0;
    };
    let alpha = Solver::new(&magnitudes, n).solve() as f32;
    // Another optimum with the same output: if the top level is unused, halve alpha until
    // the largest weight reaches it (the nearest levels at the halved scale are no worse).
    let top = levels::pow2_index(largest / alpha, n as i32, 2f32.powi(-(n as i32)));
    f64::from(alpha) * 2f64.powi(top - n as i32)
}

/// A range of alpha with a lower bound on the error of every assignment inside it.
struct Cell {
    lower_bound: f64,
    lo: f64,
    hi: f64,
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cell {}
impl PartialOrd for Cell {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cell {
    /// Reversed, so the max-heap pops the smallest lower bound first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.lower_bound.total_cmp(&self.lower_bound)
    }
}

/// One breakpoint: at alpha = `key`, a weight of magnitude `magnitude` drops from level
/// `cut + 1` to level `cut`.
struct Breakpoint {
    key: f64,
    magnitude: f32,
    cut: u32,
}

struct Solver<'a> {
    /// Sorted ascending, finite and positive.
    a: &'a [f32],
    /// The last value of every [`SEARCH_BLOCK`] of `a`.
    block_last: Vec<f32>,
    /// Prefix sums of a and a^2: `sum[i]` covers `a[..i]`.
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// `level[k]`, k = 0..=n: 0, 2^(1-n), …, 1.
    level: Vec<f64>,
    /// `1 / m_k` for the cuts m_0 = 2^-n < m_1 = 3 * 2^-n < … < m_(n-1) = 3/4.
    inv_cut: Vec<f64>,
    /// Best assignment so far: its `A^2/B` and `A/B`.
    best_gain: f64,
    best_alpha: f64,
}

impl<'a> Solver<'a> {
    fn new(a: &'a [f32], n: u32) -> Self {
        let mut sum = Vec::with_capacity(a.len() + 1);
        let mut sum_sq = Vec::with_capacity(a.len() + 1);
        let (mut s, mut s2) = (0.0, 0.0);
        sum.push(s);
        sum_sq.push(s2);
        for &x in a {
            let x = f64::from(x);
            s += x;
            s2 += x * x;
            sum.push(s);
            sum_sq.push(s2);
        }
        let level = LevelSet::PowersOfTwo { n }.magnitudes();
        let inv_cut = (0..n as usize)
            .map(|k| 2.0 / (level[k] + level[k + 1]))
            .collect();
        // Alpha below every breakpoint: all weights on level 1.
        let count = a.len() as f64;
        Solver {
            a,
            block_last: a
                .chunks(SEARCH_BLOCK)
                .map(|block| block[block.len() - 1])
                .collect(),
            best_gain: s * s / count,
            best_alpha: s / count,
            sum,
            sum_sq,
            level,
            inv_cut,
        }
    }

    fn n(&self) -> usize {
        self.inv_cut.len()
    }

    fn solve(mut self) -> f64 {
        let n = self.n();
        // Below `lowest` every weight is on level 1 (the initial best). Above `highest`
        // = 4/3 max|W| nothing is gained: at alpha >= 4/3 max|W|, alpha/2 is at least as
        // good, as its level set contains every level any weight can be nearest to.
        let lowest = f64::from(self.a[0]) * self.inv_cut[n - 1];
        let highest = f64::from(self.a[self.a.len() - 1]) * self.inv_cut[n - 1];
        // Errors are compared with a margin far above float64 rounding, so a cell is only
        // dropped when it is clearly worse.
        let margin = 1e-10 * self.sum_sq[self.a.len()];
        let mut heap = BinaryHeap::new();
        let mut lo = lowest;
        while lo < highest {
            // Cells at most an octave wide keep the level intervals of the bound disjoint.
            let hi = (2.0 * lo).min(highest);
            self.probe(lo);
            heap.push(Cell {
                lower_bound: self.lower_bound(lo, hi),
                lo,
                hi,
            });
            lo = hi;
        }
        while let Some(cell) = heap.pop() {
            if cell.lower_bound > self.best_error() + margin {
                break;
            }
            let breakpoints: usize = (0..n)
                .map(|k| self.position(k, cell.hi) - self.position(k, cell.lo))
                .sum();
            let mid = (cell.lo * cell.hi).sqrt();
            if breakpoints <= SWEEP_BREAKPOINTS || !(cell.lo < mid && mid < cell.hi) {
                self.sweep(cell.lo, cell.hi);
                continue;
            }
            self.probe(mid);
            for (lo, hi) in [(cell.lo, mid), (mid, cell.hi)] {
                let lower_bound = self.lower_bound(lo, hi);
                if lower_bound <= self.best_error() + margin {
                    heap.push(Cell {
                        lower_bound,
                        lo,
                        hi,
                    });
                }
            }
        }
        self.best_alpha
    }

    fn best_error(&self) -> f64 {
        self.sum_sq[self.a.len()] - self.best_gain
    }

    fn consider(&mut self, a_dot_q: f64, q_sq: f64) {
        if q_sq > 0.0 {
            let gain = a_dot_q * a_dot_q / q_sq;
            if gain > self.best_gain {
                self.best_gain = gain;
                self.best_alpha = a_dot_q / q_sq;
            }
        }
    }

    /// The first index of `a` where `below` fails (`below` holds on a prefix). Searches
    /// the block maxima first, which stay in cache, then one block.
    fn partition(&self, below: impl Fn(f32) -> bool) -> usize {
        let block = self.block_last.partition_point(|&x| below(x));
        let start = (block * SEARCH_BLOCK).min(self.a.len());
        let end = (start + SEARCH_BLOCK).min(self.a.len());
        start + self.a[start..end].partition_point(|&x| below(x))
    }

    /// Number of weights below cut k at `alpha`: those with breakpoint `a_i / m_k <= alpha`.
    fn position(&self, cut: usize, alpha: f64) -> usize {
        let inv = self.inv_cut[cut];
        self.partition(|x| f64::from(x) * inv <= alpha)
    }

    /// `(A, B)` of the assignment just above `alpha` (breakpoints at `alpha` passed).
    fn assignment(&self, alpha: f64) -> (f64, f64) {
        let n = self.n();
        let (mut a_dot_q, mut q_sq) = (0.0, 0.0);
        let mut start = self.position(0, alpha);
        for k in 1..=n {
            // Weights in [position(k-1), position(k)) sit on level k.
            let end = if k == n {
                self.a.len()
            } else {
                self.position(k, alpha)
            };
            a_dot_q += self.level[k] * (self.sum[end] - self.sum[start]);
            q_sq += self.level[k] * self.level[k] * (end - start) as f64;
            start = end;
        }
        (a_dot_q, q_sq)
    }

    fn probe(&mut self, alpha: f64) {
        let (a_dot_q, q_sq) = self.assignment(alpha);
        self.consider(a_dot_q, q_sq);
    }

    /// Σ (a_i - c)^2 over `a[lo..hi]`.
    fn squared_distance(&self, lo: usize, hi: usize, c: f64) -> f64 {
        let s2 = self.sum_sq[hi] - self.sum_sq[lo];
        let s1 = self.sum[hi] - self.sum[lo];
        (s2 - 2.0 * c * s1 + c * c * (hi - lo) as f64).max(0.0)
    }

    fn count_below(&self, x: f64) -> usize {
        self.partition(|v| f64::from(v) < x)
    }

    /// A lower bound on the error for every alpha in `[lo, hi]` (hi <= 2 lo): each weight
    /// at its distance to the nearest of 0 and the intervals `[lo L_k, hi L_k]`.
    fn lower_bound(&self, lo: f64, hi: f64) -> f64 {
        let mut total = 0.0;
        // The covered interval below the current gap, and the first weight past it.
        let (mut below, mut past_below) = (0.0, 0);
        for &level in &self.level[1..] {
            let (start, end) = (lo * level, hi * level);
            let split = self.count_below(0.5 * (below + start));
            let inside = self.count_below(start);
            total += self.squared_distance(past_below, split, below)
                + self.squared_distance(split, inside, start);
            below = end;
            past_below = self.count_below(end);
        }
        total + self.squared_distance(past_below, self.a.len(), below)
    }

    /// Every assignment between `lo` and `hi`: start from the one just above `lo`, then
    /// pass the breakpoints in `(lo, hi]` in order.
    fn sweep(&mut self, lo: f64, hi: f64) {
        let mut breakpoints = Vec::new();
        for cut in 0..self.n() {
            let inv = self.inv_cut[cut];
            let range = self.position(cut, lo)..self.position(cut, hi);
            breakpoints.extend(self.a[range].iter().map(|&magnitude| Breakpoint {
                key: f64::from(magnitude) * inv,
                magnitude,
                cut: cut as u32,
            }));
        }
        breakpoints.sort_unstable_by(|x, y| x.key.total_cmp(&y.key));
        let (mut a_dot_q, mut q_sq) = self.assignment(lo);
        for point in &breakpoints {
            let (upper, lower) = (
                self.level[point.cut as usize + 1],
                self.level[point.cut as usize],
            );
            a_dot_q -= f64::from(point.magnitude) * (upper - lower);
            q_sq -= upper * upper - lower * lower;
            self.consider(a_dot_q, q_sq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bound_never_exceeds_the_error_inside_the_cell() {
        let a = cpu::sorted_magnitudes(
            &(1..=400)
                .map(|i| ((i as f32) * 0.37).sin() * (i as f32).sqrt())
                .collect::<Vec<_>>(),
        );
        for n in [1, 2, 4, 16] {
            let solver = Solver::new(&a, n);
            let error_at = |alpha: f64| -> f64 {
                a.iter()
                    .map(|&x| {
                        let x = f64::from(x);
                        solver
                            .level
                            .iter()
                            .map(|l| (x - alpha * l).powi(2))
                            .fold(f64::INFINITY, f64::min)
                    })
                    .sum()
            };
            for (lo, hi) in [
                (0.5, 1.0),
                (1.0, 1.3),
                (3.0, 6.0),
                (10.0, 10.5),
                (0.01, 0.02),
            ] {
                let bound = solver.lower_bound(lo, hi);
                for step in 0..=20 {
                    let alpha = lo + (hi - lo) * f64::from(step) / 20.0;
                    assert!(
                        bound <= error_at(alpha) + 1e-9,
                        "n {n}, cell [{lo}, {hi}], alpha {alpha}"
                    );
                }
            }
        }
    }
}
