//! SparseGPT (Frantar & Alistarh, 2023): prune a linear column block by column block, choosing
//! the weights to zero by the OBS saliency `w²/[U]_jj²` (`U` the upper Cholesky factor of the
//! inverse Hessian `H⁻¹ = UᵀU`, `H = 2/N·XᵀX` of its calibration inputs, dampened) and pushing
//! each pruned weight's error onto the columns not yet visited, as the reference `fasterprune`
//! does: within a block at once, onto later blocks in one lazy update. The Hessian preparation,
//! its factor and the lazy update are GPTQ's ([`crate::linalg`]).
//!
//! One deviation from the reference: an unstructured block prunes exactly
//! `⌊rows·block·sparsity⌋` weights (the reference's `scores <= sorted[k]` prunes one more, and
//! every tie at the threshold); ties go to the lower position, as a stable sort.

use serde::{Deserialize, Serialize};
use shrink_ir::SparsityMask;

use super::{smallest, Amount};
use crate::linalg::{damped_inverse_factor, hessian, trailing_update, Matmul};

/// Options of SparseGPT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparseGptOptions {
    /// Columns per block: the unstructured mask is chosen per block, and errors reach later
    /// blocks in one lazy update.
    pub block_size: usize,
    /// Dampening added to the Hessian diagonal, as a fraction of its mean.
    pub damp: f64,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        SparseGptOptions {
            block_size: 128,
            damp: 0.01,
        }
    }
}

/// A pruned matrix.
pub struct Pruned {
    /// `[rows, cols]`: exact zeros where `mask` is set, the reconstructed values elsewhere.
    pub weights: Vec<f32>,
    pub mask: SparsityMask,
    /// The dampening fraction that made `H` positive definite.
    pub damp: f64,
}

/// Prunes `w` (`[rows, cols]`) by `amount` (a fraction of each block, or N:M) given the Gram
/// matrix `Σxᵀx` of `tokens` calibration inputs.
#[allow(clippy::too_many_arguments)]
pub fn sparsegpt(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f32],
    tokens: usize,
    amount: Amount,
    opts: &SparseGptOptions,
    matmul: Matmul<'_>,
) -> Result<Pruned, String> {
    let n = cols;
    let bs = opts.block_size;
    match amount {
        Amount::Fraction(s) if !(0.0..1.0).contains(&s) => {
            return Err(format!("sparsity {s} is outside [0, 1)"))
        }
        Amount::Fraction(_) => {}
        Amount::NM(k, m) => {
            if k == 0 || k >= m || !n.is_multiple_of(m) || !bs.is_multiple_of(m) {
                return Err(format!(
                    "{k}:{m} needs 0 < N < M and M dividing the row length {n} and the block \
                     size {bs}"
                ));
            }
        }
        Amount::Count(_) => return Err("SparseGPT prunes a fraction per block, or N:M".into()),
    }
    if bs == 0 || gram.len() != n * n || w.len() != rows * cols {
        return Err("bad block size or shapes".into());
    }
    let (h, dead) = hessian(gram, tokens, n);
    let (u, damp) = damped_inverse_factor(&h, n, opts.damp)?;
    let u: Vec<f32> = u.iter().map(|&v| v as f32).collect();
    let diag: Vec<f32> = (0..n).map(|j| u[j * n + j]).collect();

    // Rows are independent given U (but for the unstructured mask, chosen over a whole block):
    // each thread takes a run of rows through a block.
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    let mut runs: Vec<RowRun> = (0..rows)
        .step_by(per)
        .map(|r0| {
            let r1 = (r0 + per).min(rows);
            let mut wr = w[r0 * cols..r1 * cols].to_vec();
            // Inputs that are always zero: their weights go (the reference's W[:, dead] = 0).
            for row in wr.chunks_exact_mut(n) {
                for &j in &dead {
                    row[j] = 0.0;
                }
            }
            RowRun {
                r0,
                pruned: vec![false; wr.len()],
                w: wr,
                err: Vec::new(),
            }
        })
        .collect();
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        if let Amount::Fraction(s) = amount {
            // The block's mask: the lowest saliencies over all its rows and columns.
            let mut scores = Vec::with_capacity(rows * count);
            for run in &runs {
                for row in run.w.chunks_exact(n) {
                    scores.extend((i1..i2).map(|j| saliency(row[j], diag[j])));
                }
            }
            for i in smallest(&scores, Amount::of(s, rows * count)) {
                let (r, j) = (i / count, i1 + i % count);
                let run = &mut runs[r / per];
                run.pruned[(r - run.r0) * n + j] = true;
            }
        }
        std::thread::scope(|sc| {
            for run in runs.iter_mut() {
                let (u, diag) = (&u, &diag);
                sc.spawn(move || run.block(amount, n, i1, i2, u, diag));
            }
        });
        if i2 < n {
            let err: Vec<f32> = runs.iter().flat_map(|r| r.err.iter().copied()).collect();
            let delta = trailing_update(&u, n, i1, i2, &err, rows, matmul);
            let rest = n - i2;
            for run in runs.iter_mut() {
                for (k, row) in run.w.chunks_exact_mut(n).enumerate() {
                    let r = run.r0 + k;
                    for (wv, dv) in row[i2..].iter_mut().zip(&delta[r * rest..(r + 1) * rest]) {
                        *wv -= dv;
                    }
                }
            }
        }
        i1 = i2;
    }
    let mut mask = SparsityMask::new(rows, cols);
    let mut weights = Vec::with_capacity(rows * cols);
    for run in &runs {
        for (i, p) in run.pruned.iter().enumerate() {
            if *p {
                mask.set(run.r0 + i / n, i % n, true);
            }
        }
        weights.extend_from_slice(&run.w);
    }
    Ok(Pruned {
        weights,
        mask,
        damp,
    })
}

/// OBS saliency of removing `w` given `d = [U]_jj`, in f32 as the reference's
/// `W1 ** 2 / diag(Hinv1) ** 2`.
fn saliency(w: f32, d: f32) -> f32 {
    (w * w) / (d * d)
}

/// One thread's run of rows: current weights, the pruning decisions, the scaled errors of the
/// current block.
struct RowRun {
    r0: usize,
    w: Vec<f32>,
    pruned: Vec<bool>,
    err: Vec<f32>,
}

impl RowRun {
    /// Visits columns `i1..i2` of these rows: N:M groups are chosen as they are reached (from
    /// the updated weights), pruned weights become 0 and their error moves onto the rest of
    /// the block.
    fn block(&mut self, amount: Amount, n: usize, i1: usize, i2: usize, u: &[f32], diag: &[f32]) {
        let count = i2 - i1;
        let nr = self.w.len() / n;
        self.err = vec![0.0f32; nr * count];
        for i in 0..count {
            let col = i1 + i;
            if let Amount::NM(k, m) = amount {
                if i.is_multiple_of(m) {
                    for r in 0..nr {
                        let s: Vec<f32> = (col..col + m)
                            .map(|j| saliency(self.w[r * n + j], diag[j]))
                            .collect();
                        for j in smallest(&s, k) {
                            self.pruned[r * n + col + j] = true;
                        }
                    }
                }
            }
            let d = diag[col];
            let urow = &u[col * n + col + 1..col * n + i2];
            for r in 0..nr {
                if !self.pruned[r * n + col] {
                    continue;
                }
                let x = self.w[r * n + col];
                let e = x / d;
                self.err[r * count + i] = e;
                self.w[r * n + col] = 0.0;
                for (wv, uv) in self.w[r * n + col + 1..r * n + i2].iter_mut().zip(urow) {
                    *wv -= e * uv;
                }
            }
        }
    }
}
