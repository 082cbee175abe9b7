//! GPTQ (Frantar et al., 2022): quantize a linear column by column, pushing each column's
//! rounding error onto the columns not yet quantized through the Cholesky factor of the inverse
//! Hessian `H = 2/N·XᵀX` of its calibration inputs, in lazy batches of columns.

use serde::{Deserialize, Serialize};
use shrink_ir::quant::{GroupParams, Packer, QuantScheme};

use crate::linalg::{damped_inverse_factor, hessian, trailing_update};
pub use crate::linalg::{host_matmul, Matmul};

/// Options of GPTQ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptqOptions {
    /// Quantize columns by decreasing Hessian diagonal ("act order"). Group parameters are
    /// then fixed up front from the original weights ("static groups"), so groups stay
    /// contiguous runs of input columns, as packed layouts need.
    pub act_order: bool,
    /// Fit the quantized layer on the compressed model's inputs `X` to the float layer's
    /// output on the float model's inputs `X̃`: minimise `‖WX̃ − ŴX‖²` (the asymmetric
    /// calibration of GPTAQ, Li et al. 2025) instead of `‖WX − ŴX‖²`. It runs the float model
    /// beside the one being quantized, so calibration's forward work doubles.
    pub asymmetric: bool,
    /// Columns per lazy batch.
    pub block_size: usize,
    /// Dampening added to the Hessian diagonal, as a fraction of its mean.
    pub damp: f64,
    /// Choose each group's scale by a search minimising its rounding error weighted by the
    /// Hessian diagonal (GPTQ's `mse` quantizer option, importance-weighted), instead of the
    /// scheme's round-to-nearest rule.
    pub mse_scales: bool,
    /// After the codes are chosen, refit each row's group scales jointly by least squares on
    /// the layer's output error `‖(W − Ŵ)X‖²` (schemes whose values are `code level × scale`),
    /// keeping a row's old scales where the refit, rounded as stored, is no better.
    pub refit_scales: bool,
    /// GPTQ passes over each matrix with `refit_scales`: each pass after the first chooses the
    /// codes again, from the original weights, under the scales the previous pass refit, then
    /// refits them. A row keeps the pass whose codes and scales give it the least output error.
    pub rounds: usize,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            act_order: true,
            asymmetric: false,
            block_size: 128,
            damp: 0.01,
            mse_scales: true,
            refit_scales: true,
            rounds: 1,
        }
    }
}

impl GptqOptions {
    /// Range checks, before anything runs (`field` names the options in the pipeline).
    pub fn check(&self, field: &str) -> Result<(), String> {
        if !(self.damp.is_finite() && self.damp > 0.0 && self.damp <= 1.0) {
            return Err(format!("{field}.damp {} is not in (0, 1]", self.damp));
        }
        if self.block_size == 0 {
            return Err(format!("{field}.block_size must be at least 1"));
        }
        if self.rounds == 0 {
            return Err(format!("{field}.rounds must be at least 1"));
        }
        Ok(())
    }
}

/// `K` such that `W + W·K` is the least-squares target of asymmetric calibration: with
/// `G = ΣxᵀX` of the compressed inputs and `C = Σx̃ᵀx` against the float ones,
/// `W·C·G⁻¹ = W + W·(C − G)·G⁻¹`, and `‖WX̃ − ŴX‖² = ‖(W + WK − Ŵ)X‖² + const`, so GPTQ of that
/// target under `G` minimises the asymmetric error. `G` is dampened as GPTQ's Hessian is, and
/// with equal inputs (`C = G`) `K` is zero whatever the dampening. `n×n` row-major.
pub fn asymmetric_correction(
    gram: &[f32],
    cross: &[f32],
    tokens: usize,
    n: usize,
    damp: f64,
    matmul: Matmul<'_>,
) -> Result<Vec<f32>, String> {
    let (h, _) = hessian(gram, tokens, n);
    let scale = 2.0 / tokens.max(1) as f64;
    let (u, _) = damped_inverse_factor(&h, n, damp)?;
    // (C − G)·2/N, with the dead inputs' unit diagonal of `h` left out of `G`.
    let diff: Vec<f32> = cross
        .iter()
        .zip(gram)
        .map(|(&c, &g)| ((c as f64 - g as f64) * scale) as f32)
        .collect();
    let mut ut = vec![0.0f32; n * n];
    let u32s: Vec<f32> = u.iter().map(|&v| v as f32).collect();
    for i in 0..n {
        for j in 0..n {
            ut[j * n + i] = u32s[i * n + j];
        }
    }
    let inverse = matmul(&ut, &u32s, n, n, n);
    Ok(matmul(&diff, &inverse, n, n, n))
}

/// A quantized matrix.
pub struct Quantized {
    pub packed: Vec<u8>,
    /// The values the packed form stands for, `[rows, cols]`.
    pub dequant: Vec<f32>,
    /// The dampening fraction that made `H` positive definite.
    pub damp: f64,
}

#[allow(clippy::too_many_arguments)]
/// Quantizes `w` (`[rows, cols]`) given the Gram matrix `Σxᵀx` of `tokens` calibration inputs.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f32],
    tokens: usize,
    scheme: QuantScheme,
    opts: &GptqOptions,
    matmul: Matmul<'_>,
) -> Result<Quantized, String> {
    scheme.check_shape(&[rows, cols])?;
    let mut w = w.to_vec();
    let n = cols;
    let (h, dead) = hessian(gram, tokens, n);
    for &i in &dead {
        for r in 0..rows {
            w[r * cols + i] = 0.0;
        }
    }
    let g = scheme.group().unwrap_or(cols);
    let groups = cols / g;
    let diag: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
    let fit = |xs: &[f32], c0: usize| -> GroupParams {
        if opts.mse_scales {
            scheme.fit_weighted(xs, &diag[c0..c0 + g])
        } else {
            scheme.stored(scheme.fit(xs))
        }
    };
    let perm: Vec<usize> = if opts.act_order {
        let mut p: Vec<usize> = (0..n).collect();
        p.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
        p
    } else {
        (0..n).collect()
    };
    let mut hp = vec![0.0f64; n * n];
    for (i, &a) in perm.iter().enumerate() {
        for (j, &b) in perm.iter().enumerate() {
            hp[i * n + j] = h[a * n + b];
        }
    }
    let (u, damp) = damped_inverse_factor(&hp, n, opts.damp)?;
    let u: Vec<f32> = u.iter().map(|&v| v as f32).collect();

    // Rows are independent given U: each thread takes a run of rows through every block; only
    // the update of the columns after a block (one matrix product) joins them.
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(rows.max(1));
    let per = rows.div_ceil(threads);
    let mut states: Vec<Rows> = (0..rows)
        .step_by(per)
        .map(|r0| {
            let r1 = (r0 + per).min(rows);
            let mut st = Rows {
                r0,
                wp: Vec::new(),
                codes: vec![0; (r1 - r0) * cols],
                params: Vec::new(),
                err: Vec::new(),
            };
            st.load(&w, &perm, cols);
            st
        })
        .collect();
    // Static groups under act order, from the weights before any update.
    if opts.act_order {
        std::thread::scope(|sc| {
            for st in states.iter_mut() {
                let fit = &fit;
                let w = &w;
                sc.spawn(move || {
                    let nr = st.codes.len() / cols;
                    st.params = (st.r0..st.r0 + nr)
                        .flat_map(|r| (0..groups).map(move |gi| (r, gi)))
                        .map(|(r, gi)| fit(&w[r * cols + gi * g..r * cols + gi * g + g], gi * g))
                        .collect();
                });
            }
        });
    } else {
        for st in states.iter_mut() {
            st.params = vec![scheme.stored(scheme.fit(&[0.0])); st.codes.len() / cols * groups];
        }
    }
    let bs = opts.block_size.max(1);
    let rounds = opts.rounds.max(1);
    let h32: Vec<f32> = if opts.refit_scales {
        h.iter().map(|&v| v as f32).collect()
    } else {
        Vec::new()
    };
    // The best pass so far of each thread's rows: codes, parameters and output errors.
    let mut best: Vec<(Vec<u8>, Vec<GroupParams>, Vec<f64>)> = Vec::new();
    // Each thread's `H·wᵀ`, the same in every pass.
    let mut hws: Vec<Option<Vec<f32>>> = vec![None; states.len()];
    for round in 0..rounds {
        // From the second pass on, the groups keep the scales the previous pass refit.
        let static_groups = opts.act_order || round > 0;
        if round > 0 {
            for st in states.iter_mut() {
                st.load(&w, &perm, cols);
            }
        }
        quantize_blocks(
            &mut states,
            scheme,
            static_groups,
            g,
            n,
            cols,
            bs,
            &perm,
            &u,
            &fit,
            matmul,
        );
        if !opts.refit_scales {
            break; // further passes would only repeat this one
        }
        for (k, (st, hw)) in states.iter_mut().zip(&mut hws).enumerate() {
            let nr = st.codes.len() / cols;
            let wr = &w[st.r0 * cols..(st.r0 + nr) * cols];
            let losses = refit_scales(
                wr,
                hw,
                nr,
                cols,
                g,
                &h32,
                scheme,
                &st.codes,
                &mut st.params,
                matmul,
            );
            // Passes are compared by the refit's losses: without a unit scale there is no refit,
            // and no further pass.
            let (Some(e), true) = (losses, rounds > 1) else {
                continue;
            };
            match best.get_mut(k) {
                None => best.push((st.codes.clone(), st.params.clone(), e)),
                Some((codes, params, errs)) => {
                    for (r, &er) in e.iter().enumerate() {
                        if er < errs[r] {
                            errs[r] = er;
                            codes[r * cols..(r + 1) * cols]
                                .copy_from_slice(&st.codes[r * cols..(r + 1) * cols]);
                            params[r * groups..(r + 1) * groups]
                                .copy_from_slice(&st.params[r * groups..(r + 1) * groups]);
                        }
                    }
                }
            }
        }
        if best.is_empty() {
            break;
        }
    }
    if !best.is_empty() {
        for (st, (codes, params, _)) in states.iter_mut().zip(best) {
            st.codes = codes;
            st.params = params;
        }
    }
    let mut packer = Packer::new(scheme, rows, cols);
    for st in &states {
        for (k, codes) in st.codes.chunks_exact(cols).enumerate() {
            let r = st.r0 + k;
            for gi in 0..groups {
                packer.set_params(r, gi, st.params[k * groups + gi]);
            }
            for (c, q) in codes.iter().enumerate() {
                packer.set_code(r, c, *q);
            }
        }
    }
    let packed = packer.finish();
    // From the packed form: NF4's double quantization rounds the absmax values at the end.
    let dequant = scheme.dequantize(&packed, &[rows, cols]);
    Ok(Quantized {
        packed,
        dequant,
        damp,
    })
}

/// One GPTQ pass over every column, in lazy blocks of `bs`: quantizes each block on the rows'
/// threads, then pushes its error onto the columns after it.
#[allow(clippy::too_many_arguments)]
fn quantize_blocks(
    states: &mut [Rows],
    scheme: QuantScheme,
    static_groups: bool,
    g: usize,
    n: usize,
    cols: usize,
    bs: usize,
    perm: &[usize],
    u: &[f32],
    fit: &(dyn Fn(&[f32], usize) -> GroupParams + Sync),
    matmul: Matmul<'_>,
) {
    let rows: usize = states.iter().map(|st| st.codes.len() / cols).sum();
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        std::thread::scope(|sc| {
            for st in states.iter_mut() {
                sc.spawn(move || st.block(scheme, static_groups, g, n, cols, i1, i2, perm, u, fit));
            }
        });
        if i2 < n {
            // …and onto the columns after it: W[:, i2:] -= Err · U[i1:i2, i2:].
            let rest = n - i2;
            let err: Vec<f32> = states
                .iter()
                .flat_map(|st| st.err.iter().copied())
                .collect();
            let delta = trailing_update(u, n, i1, i2, &err, rows, matmul);
            for st in states.iter_mut() {
                for (k, row) in st.wp.chunks_exact_mut(n).enumerate() {
                    let r = st.r0 + k;
                    for (wv, dv) in row[i2..].iter_mut().zip(&delta[r * rest..(r + 1) * rest]) {
                        *wv -= dv;
                    }
                }
            }
        }
        i1 = i2;
    }
}

/// One thread's run of rows: weights in permuted column order, codes and group parameters in
/// the original order, and the scaled errors of the current block.
struct Rows {
    r0: usize,
    wp: Vec<f32>,
    codes: Vec<u8>,
    params: Vec<GroupParams>,
    err: Vec<f32>,
}

impl Rows {
    /// Loads the original weights of these rows in permuted column order.
    fn load(&mut self, w: &[f32], perm: &[usize], cols: usize) {
        let n = perm.len();
        let nr = self.codes.len() / cols;
        self.wp = vec![0.0f32; nr * n];
        for k in 0..nr {
            let r = self.r0 + k;
            for (j, &c) in perm.iter().enumerate() {
                self.wp[k * n + j] = w[r * cols + c];
            }
        }
    }

    /// Quantizes columns `i1..i2` (permuted order) of these rows, pushing each column's error
    /// onto the rest of the block.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        scheme: QuantScheme,
        static_groups: bool,
        g: usize,
        n: usize,
        cols: usize,
        i1: usize,
        i2: usize,
        perm: &[usize],
        u: &[f32],
        fit: &(dyn Fn(&[f32], usize) -> GroupParams + Sync),
    ) {
        let count = i2 - i1;
        let nr = self.codes.len() / cols;
        let groups = cols / g;
        self.err = vec![0.0f32; nr * count];
        for i in 0..count {
            let col = i1 + i;
            let orig = perm[col];
            if !static_groups && orig.is_multiple_of(g) {
                // Group parameters from the current, error-updated weights of the group.
                for k in 0..nr {
                    let xs = &self.wp[k * n + orig..k * n + orig + g];
                    self.params[k * groups + orig / g] = fit(xs, orig);
                }
            }
            let d = u[col * n + col];
            let urow = &u[col * n + col + 1..col * n + i2];
            for k in 0..nr {
                let p = &self.params[k * groups + orig / g];
                let x = self.wp[k * n + col];
                let q = scheme.code(x, p);
                let v = scheme.value(q, p);
                self.codes[k * cols + orig] = q;
                let e = (x - v) / d;
                self.err[k * count + i] = e;
                for (wv, uv) in self.wp[k * n + col + 1..k * n + i2].iter_mut().zip(urow) {
                    *wv -= e * uv;
                }
            }
        }
    }
}

/// `acc[k] = Σ_{c ∈ cols} x[c·rows + r0 + k] · y[c·rows + r0 + k]` in f64 for the rows
/// `r0..r0 + acc.len()`: the columns in order, each a contiguous run over the rows (a row's sum
/// in its own order of columns, whichever run of rows a thread takes).
fn group_dots(
    x: &[f32],
    y: &[f32],
    rows: usize,
    r0: usize,
    cols: std::ops::Range<usize>,
    acc: &mut [f64],
) {
    acc.fill(0.0);
    let nr = acc.len();
    for c in cols {
        let at = c * rows + r0;
        let (xc, yc) = (&x[at..at + nr], &y[at..at + nr]);
        for ((a, xv), yv) in acc.iter_mut().zip(xc).zip(yc) {
            *a += *xv as f64 * *yv as f64;
        }
    }
}

/// The operands of [`quadratic_forms`]: `H` (`[n, n]`), the unit-scale values transposed
/// (`[n, rows]`) and the group size.
#[derive(Clone, Copy)]
struct Forms<'a> {
    h: &'a [f32],
    v: &'a [f32],
    n: usize,
    rows: usize,
    g: usize,
}

/// `a[k][gi][gj] = v_giᵀ · H[gi, gj] · v_gj` for the rows `r0 + k` (`a`: `[rows, groups,
/// groups]`), `v` the unit-scale values transposed (`[n, rows]`). The same arithmetic as an
/// sgemm of `H[:, gj]` by `v[gj]` followed by [`group_dots`] (each `H·v` entry one multiply-add
/// chain over the group's columns in order, fused where the sgemm fuses), but a block of `H` by
/// a run of rows at a time, in cache: no `[n, rows]` product per group ever leaves it.
fn quadratic_forms(x: Forms<'_>, r0: usize, a: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA, checked just above.
            return unsafe { quadratic_forms_fma(x, r0, a) };
        }
        quadratic_forms_with::<false>(x, r0, a)
    }
    #[cfg(not(target_arch = "x86_64"))]
    quadratic_forms_with::<true>(x, r0, a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quadratic_forms_fma(x: Forms<'_>, r0: usize, a: &mut [f64]) {
    quadratic_forms_with::<true>(x, r0, a)
}

#[inline(always)]
fn quadratic_forms_with<const FUSED: bool>(x: Forms<'_>, r0: usize, a: &mut [f64]) {
    let Forms { h, v, n, rows, g } = x;
    let groups = n / g;
    let gg = groups * groups;
    let nr = a.len() / gg;
    // This run of rows packed `[n, REFIT_ROWS]`, zero past its last row: in `v` a column's
    // rows are `rows` apart, a power of two that would alias in the cache.
    let mut vl = vec![0.0f32; n * REFIT_ROWS];
    for (c, dst) in vl.chunks_exact_mut(REFIT_ROWS).enumerate() {
        dst[..nr].copy_from_slice(&v[c * rows + r0..c * rows + r0 + nr]);
    }
    for gj in 0..groups {
        let vj = &vl[gj * g * REFIT_ROWS..(gj + 1) * g * REFIT_ROWS];
        for gi in 0..groups {
            let mut acc = [0.0f64; REFIT_ROWS];
            for c in gi * g..(gi + 1) * g {
                let mut hv = [0.0f32; REFIT_ROWS];
                let hc = &h[c * n + gj * g..c * n + (gj + 1) * g];
                for (&hk, vk) in hc.iter().zip(vj.chunks_exact(REFIT_ROWS)) {
                    for (t, &x) in hv.iter_mut().zip(vk) {
                        *t = if FUSED {
                            hk.mul_add(x, *t)
                        } else {
                            *t + hk * x
                        };
                    }
                }
                let vc = &vl[c * REFIT_ROWS..(c + 1) * REFIT_ROWS];
                for ((s, &x), &y) in acc.iter_mut().zip(vc).zip(&hv) {
                    *s += x as f64 * y as f64;
                }
            }
            for (k, s) in acc[..nr].iter().enumerate() {
                a[k * gg + gi * groups + gj] = *s;
            }
        }
    }
}

/// Rows per task of the refit's host loops: enough that a task outweighs its scheduling.
const REFIT_ROWS: usize = 64;

/// Refits the group scales of `rows` rows of `w` (`[rows, cols]`, groups of `g` columns) for
/// their fixed `codes`: per row, the scales `d` minimising `(w − Σ d_g·v_g)ᵀ H (w − Σ d_g·v_g)`,
/// `v_g` the unit-scale values of group `g`'s codes, solve `A d = b` with `A = VᵀHV` and
/// `b = VᵀHw`. Each row keeps whichever of its old and new (stored-rounded) scales scores lower.
/// Returns each row's output error for the scales it keeps, less the row's constant `wᵀHw`
/// (so rows compare across code choices); schemes without a unit scale are left as they are
/// (`None`). `hw` caches `H·wᵀ` from pass to pass; it runs on the calibration device, `VᵀHV`
/// ([`quadratic_forms`]) and the per-row solves, which grow with the square and cube of the
/// group count, on the host's thread pool by runs of rows.
#[allow(clippy::too_many_arguments)]
fn refit_scales(
    w: &[f32],
    hw: &mut Option<Vec<f32>>,
    rows: usize,
    cols: usize,
    g: usize,
    h: &[f32],
    scheme: QuantScheme,
    codes: &[u8],
    params: &mut [GroupParams],
    matmul: Matmul<'_>,
) -> Option<Vec<f64>> {
    use rayon::prelude::*;
    let n = cols;
    let groups = cols / g;
    let unit = params.first().and_then(|p| scheme.unit_scale(p))?;
    // Unit-scale values, transposed: `v[c * rows + r]` for row r, column c.
    let mut v = vec![0.0f32; n * rows];
    for r in 0..rows {
        for c in 0..n {
            v[c * rows + r] = scheme.value(codes[r * cols + c], &unit);
        }
    }
    // H·wᵀ: `[n, rows]`, once for every pass.
    let hw = hw.get_or_insert_with(|| {
        let mut wt = vec![0.0f32; n * rows];
        for r in 0..rows {
            for c in 0..n {
                wt[c * rows + r] = w[r * cols + c];
            }
        }
        matmul(h, &wt, n, n, rows)
    });
    let gg = groups * groups;
    let mut a = vec![0.0f64; rows * gg];
    let mut b = vec![0.0f64; rows * groups];
    a.par_chunks_mut(REFIT_ROWS * gg)
        .enumerate()
        .for_each(|(t, a)| {
            quadratic_forms(
                Forms {
                    h,
                    v: &v,
                    n,
                    rows,
                    g,
                },
                t * REFIT_ROWS,
                a,
            )
        });
    b.par_chunks_mut(REFIT_ROWS * groups)
        .enumerate()
        .for_each(|(t, b)| {
            let r0 = t * REFIT_ROWS;
            let mut acc = vec![0.0f64; b.len() / groups];
            for gi in 0..groups {
                group_dots(&v, hw, rows, r0, gi * g..gi * g + g, &mut acc);
                for (k, s) in acc.iter().enumerate() {
                    b[k * groups + gi] = *s;
                }
            }
        });
    let mut losses = vec![0.0f64; rows];
    params
        .par_chunks_mut(groups)
        .zip(losses.par_iter_mut())
        .zip(a.par_chunks(gg).zip(b.par_chunks(groups)))
        .with_min_len(REFIT_ROWS)
        .for_each(|((params, loss_out), (a, b))| {
            *loss_out = refit_row(a, b, groups, scheme, params);
        });
    Some(losses)
}

/// One row of [`refit_scales`]: solves `A d = b` for its group scales, keeps them where they
/// score lower than `params`' (then in `params`), and returns the loss of the scales kept.
fn refit_row(
    a: &[f64],
    b: &[f64],
    groups: usize,
    scheme: QuantScheme,
    params: &mut [GroupParams],
) -> f64 {
    let old: Vec<f64> = params.iter().map(|p| p.scale as f64).collect();
    // The loss up to a constant: dᵀAd − 2dᵀb.
    let loss = |d: &[f64]| -> f64 {
        let mut l = 0.0;
        for i in 0..groups {
            let ad: f64 = (0..groups).map(|j| a[i * groups + j] * d[j]).sum();
            l += d[i] * ad - 2.0 * d[i] * b[i];
        }
        l
    };
    let before = loss(&old);
    // A group of zero-valued codes has no scale to fit: pin it to its old one.
    let mut sys = a.to_vec();
    let mut rhs = b.to_vec();
    for gi in 0..groups {
        if sys[gi * groups + gi] <= 0.0 {
            for j in 0..groups {
                sys[gi * groups + j] = 0.0;
                sys[j * groups + gi] = 0.0;
            }
            sys[gi * groups + gi] = 1.0;
            rhs[gi] = old[gi];
        }
    }
    let Some(d) = crate::linalg::solve_spd(&sys, &rhs, groups) else {
        return before;
    };
    let new: Vec<GroupParams> = d.iter().map(|&s| scheme.with_scale(s as f32)).collect();
    let rounded: Vec<f64> = new.iter().map(|p| p.scale as f64).collect();
    let after = loss(&rounded);
    if after < before {
        params.copy_from_slice(&new);
        after
    } else {
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the formulation it replaces, an sgemm per group and then [`group_dots`]: bit for
    /// bit in the unfused order (`host_matmul`'s), to rounding in the order this CPU takes.
    #[test]
    fn quadratic_forms_are_products_then_dots() {
        // 70 rows: one full run of REFIT_ROWS and a partial one.
        let (n, g, rows) = (96, 32, 70);
        let (groups, gg) = (n / g, (n / g) * (n / g));
        let noise = |i: usize, m: usize| ((i * m % 1009) as f32 / 1009.0) - 0.5;
        let h: Vec<f32> = (0..n * n).map(|i| noise(i, 7919)).collect();
        let v: Vec<f32> = (0..n * rows).map(|i| noise(i, 104_729)).collect();
        let mut want = vec![0.0f64; rows * gg];
        let mut acc = vec![0.0f64; rows];
        for gj in 0..groups {
            let hcols: Vec<f32> = (0..n)
                .flat_map(|i| h[i * n + gj * g..i * n + (gj + 1) * g].to_vec())
                .collect();
            let hv = host_matmul(&hcols, &v[gj * g * rows..(gj + 1) * g * rows], n, g, rows);
            for gi in 0..groups {
                group_dots(&v, &hv, rows, 0, gi * g..(gi + 1) * g, &mut acc);
                for (r, s) in acc.iter().enumerate() {
                    want[r * gg + gi * groups + gj] = *s;
                }
            }
        }
        let forms = Forms {
            h: &h,
            v: &v,
            n,
            rows,
            g,
        };
        let run = |f: &dyn Fn(usize, &mut [f64])| {
            let mut got = vec![0.0f64; rows * gg];
            for (t, a) in got.chunks_mut(REFIT_ROWS * gg).enumerate() {
                f(t * REFIT_ROWS, a);
            }
            got
        };
        let unfused = run(&|r0, a| quadratic_forms_with::<false>(forms, r0, a));
        assert_eq!(unfused, want);
        let dispatched = run(&|r0, a| quadratic_forms(forms, r0, a));
        for (x, y) in dispatched.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
        }
    }
}
