//! CPU-only helpers that step outside burn's tensor ops where burn-ndarray copies a lot: reading
//! a tensor's values in place, the linear layer as one sgemm on those values, and the Gram
//! matrix `XᵀX` of calibration with `Xᵀ` as a strided view.

use std::any::{Any, TypeId};
use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use shrink_ir::NormKind;

use crate::interp::upload;
use crate::Cpu;

/// `f` of a CPU tensor's values in row-major order, borrowed from its storage when it is
/// contiguous (copied otherwise), or `None` for other backends.
pub(crate) fn with_values<B: Backend, const D: usize, R>(
    t: &Tensor<B, D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    let any: &dyn Any = t;
    let t = any.downcast_ref::<Tensor<Cpu, D>>()?;
    let prim = t.clone().into_primitive().tensor();
    if let burn_ndarray::NdArrayTensor::F32(storage) = &prim {
        if let Some(values) = storage.view().as_slice() {
            return Some(f(values));
        }
    }
    // A strided view: burn's own copy.
    let values = t.clone().into_data().to_vec::<f32>().ok()?;
    Some(f(&values))
}

/// `f` of a CPU matrix's values with its row and column strides, borrowed in place when it is
/// stored row- or column-major (a transposed view), copied to row-major otherwise; `None` for
/// other backends.
fn with_matrix<B: Backend, R>(
    t: &Tensor<B, 2>,
    f: impl FnOnce(&[f32], isize, isize) -> R,
) -> Option<R> {
    let any: &dyn Any = t;
    let t = any.downcast_ref::<Tensor<Cpu, 2>>()?;
    let [rows, cols] = t.dims();
    let prim = t.clone().into_primitive().tensor();
    if let burn_ndarray::NdArrayTensor::F32(storage) = &prim {
        let view = storage.view();
        if let Some(values) = view.as_slice() {
            return Some(f(values, cols as isize, 1));
        }
        if view.t().is_standard_layout() {
            if let Some(values) = view.as_slice_memory_order() {
                return Some(f(values, 1, rows as isize));
            }
        }
    }
    let values = t.clone().into_data().to_vec::<f32>().ok()?;
    Some(f(&values, cols as isize, 1))
}

/// `x · wᵀ (+ bias)` for `x [b, s, in]` and `wᵀ [in, out]` as one sgemm on the values in place,
/// or `None` for other backends. burn-ndarray's matmul copies both operands on the way (its
/// reshapes of shared arrays), about 4% of an eval's time.
pub(crate) fn linear<B: Backend>(
    x: &Tensor<B, 3>,
    weight_t: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let [b, s, d] = x.dims();
    let [k, n] = weight_t.dims();
    if k != d {
        return None; // burn's matmul reports the mismatch
    }
    let m = b * s;
    // The output is allocated inside, once `with_values` has found the CPU backend: other
    // backends (training, CUDA) come through here on every linear.
    let mut y = with_values(x, |xv| {
        with_matrix(weight_t, |wv, rs, cs| {
            let mut y = vec![0.0f32; m * n];
            // SAFETY: A is `m × k` row-major (`xv` holds `m·k` values), B is `k × n` with
            // element (i, j) at `wv[i·rs + j·cs]`, inside `wv` for either layout `with_matrix`
            // gives, C is `m × n` row-major in `y`, which overlaps neither.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    xv.as_ptr(),
                    k as isize,
                    1,
                    wv.as_ptr(),
                    rs,
                    cs,
                    0.0,
                    y.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            y
        })
    })
    .flatten()?;
    add_bias(&mut y, n, bias)?;
    to_backend(y, [b, s, n])
}

/// `x · Wᵀ (+ bias)` for `x [b, s, cols]` and a `[rows, cols]` matrix that `fill(r0..r1, out)`
/// dequantizes `step` rows at a time (row-major, into one buffer reused by every block), one
/// sgemm per block into the output's columns, so the matrix never exists whole in f32; `None`
/// for other backends.
pub(crate) fn linear_row_blocks<B: Backend>(
    x: &Tensor<B, 3>,
    [rows, cols]: [usize; 2],
    step: usize,
    fill: impl Fn(Range<usize>, &mut [f32]),
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let [b, s, d] = x.dims();
    if cols != d {
        return None; // burn's matmul reports the mismatch
    }
    let m = b * s;
    let step = step.clamp(1, rows.max(1));
    let mut y = with_values(x, |xv| {
        let mut y = vec![0.0f32; m * rows];
        let mut block = vec![0.0f32; step * d];
        for r0 in (0..rows).step_by(step) {
            let r1 = (r0 + step).min(rows);
            let w = &mut block[..(r1 - r0) * d];
            fill(r0..r1, w);
            // SAFETY: A is `m × d` row-major in `xv`; B is the block transposed, `d × (r1−r0)`
            // with element (i, j) at `w[j·d + i]`; C is columns `r0..r1` of the `m × rows`
            // row-major `y` (row stride `rows`), which `r1 ≤ rows` keeps in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    d,
                    r1 - r0,
                    1.0,
                    xv.as_ptr(),
                    d as isize,
                    1,
                    w.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    y.as_mut_ptr().add(r0),
                    rows as isize,
                    1,
                );
            }
        }
        y
    })?;
    add_bias(&mut y, rows, bias)?;
    to_backend(y, [b, s, rows])
}

/// Adds `bias` (`n` values) to every row of `y`; `None` if it is not a CPU tensor.
fn add_bias<B: Backend>(y: &mut [f32], n: usize, bias: Option<&Tensor<B, 1>>) -> Option<()> {
    if let Some(bias) = bias {
        with_values(bias, |bv| {
            for row in y.chunks_exact_mut(n) {
                for (o, &c) in row.iter_mut().zip(bv) {
                    *o += c;
                }
            }
        })?;
    }
    Some(())
}

/// Host values as a tensor of `B`, which the caller found to be the CPU backend.
pub(crate) fn to_backend<B: Backend>(values: Vec<f32>, shape: [usize; 3]) -> Option<Tensor<B, 3>> {
    cast(upload::<Cpu, 3>(values, shape, &Default::default())).ok()
}

/// RMS or layer normalization of each row of `x [b, s, d]`, scaled by `weight` and shifted by
/// `bias`, in one pass per row; `None` for other backends. Divides by the root as the tensor-op
/// path does (`interp::norm` says why).
pub(crate) fn norm<B: Backend>(
    x: &Tensor<B, 3>,
    kind: NormKind,
    eps: f32,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let dims = x.dims();
    let d = dims[2];
    let bias = match bias {
        Some(b) => Some(with_values(b, <[f32]>::to_vec)?),
        None => None,
    };
    let y = with_values(x, |xv| {
        with_values(weight, |w| {
            let mut y = vec![0.0f32; xv.len()];
            for (row, out) in xv.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                let (mean, centered) = match kind {
                    NormKind::Rms => (0.0, false),
                    NormKind::Layer => (row.iter().sum::<f32>() / d as f32, true),
                };
                let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let root = (var + eps).sqrt();
                for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
                    let c = if centered { v - mean } else { v };
                    *o = c / root * g;
                }
                if let Some(bias) = &bias {
                    for (o, &c) in out.iter_mut().zip(bias) {
                        *o += c;
                    }
                }
            }
            y
        })
    })
    .flatten()?;
    to_backend(y, dims)
}

/// `eˣ` without a libm call, so that loops over slices vectorise (libm's `expf` is a call per
/// value): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `eʳ` by its Taylor polynomial of degree 7
/// (truncation below 1e-8), `2ⁿ` built in the exponent bits. Within 2 ulp of `f32::exp` on
/// `[-87.3, 88]`; 0 below (where `eˣ` is subnormal), ∞ above (where it passes 1.6·10³⁸; the
/// callers only divide by `eˣ + 1`), NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75; // ln 2 to 16 bits, so that n·LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let c = x.clamp(-87.3, 88.0);
    let n = (c * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let y = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `x · sigmoid(x)`, as `x / (exp(-x) + 1)` like the tensor-op path, in one pass shared among
/// the cores; `Err(x)` for other backends.
pub(crate) fn silu<B: Backend>(x: Tensor<B, 3>) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    par_map(x, |v| v / (exp(-v) + 1.0))
}

/// `f` of every value of a CPU tensor, the values shared among the cores: in place when the
/// tensor alone holds its values (the interpreter hands a value over at its last use), since a
/// fresh output costs a page fault per 4 KiB; into a copy otherwise; `Err(x)` for other backends.
fn par_map<B: Backend>(
    x: Tensor<B, 3>,
    f: impl Fn(f32) -> f32 + Sync,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let x: Tensor<Cpu, 3> = cast(x)?;
    let mut prim = x.into_primitive().tensor();
    if let burn_ndarray::NdArrayTensor::F32(storage) = &mut prim {
        if storage.is_unique() {
            if let Some(values) = storage.ensure_owned().as_slice_mut() {
                par_apply(values, &f);
                return Ok(back(Tensor::from_primitive(TensorPrimitive::Float(prim))));
            }
        }
    }
    let x = Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(prim));
    let dims = x.dims();
    let Some(mut y) = with_values(&x, <[f32]>::to_vec) else {
        return Err(back(x));
    };
    par_apply(&mut y, &f);
    Ok(back(upload::<Cpu, 3>(y, dims, &Default::default())))
}

/// `f` of every value in place, the values shared among the cores.
fn par_apply(values: &mut [f32], f: &(impl Fn(f32) -> f32 + Sync)) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = values.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for chunk in values.chunks_mut(per) {
            sc.spawn(move || apply(chunk, f));
        }
    });
}

/// `f` of every value in place, with AVX2 and FMA where the CPU has them: `f` is inlined into
/// the loop, which then runs 8 lanes wide (the build targets baseline x86-64, 4 lanes).
fn apply(values: &mut [f32], f: &impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { apply_avx2(values, f) };
    }
    for v in values.iter_mut() {
        *v = f(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(values: &mut [f32], f: &impl Fn(f32) -> f32) {
    for v in values.iter_mut() {
        *v = f(*v);
    }
}

/// `x` as a `U` when `T` is `U`, else `Err(x)`: how backend-generic code takes the CPU's paths.
fn cast<T: 'static, U: 'static>(x: T) -> Result<U, T> {
    if TypeId::of::<T>() != TypeId::of::<U>() {
        return Err(x);
    }
    let any: Box<dyn Any> = Box::new(x);
    Ok(*any.downcast::<U>().expect("T is U, checked just above"))
}

/// A CPU tensor back in the caller's backend, which is the CPU's.
fn back<B: Backend>(t: Tensor<Cpu, 3>) -> Tensor<B, 3> {
    match cast(t) {
        Ok(t) => t,
        Err(_) => unreachable!("called only once `B` is known to be `Cpu`"),
    }
}

/// `cap · tanh(x / cap)` as `cap - 2·cap / (exp(2x / cap) + 1)`: one `exp`, cheaper than
/// `tanh`; exact at both ends, within ~1e-7·cap near 0. The host attention caps its scores so.
#[inline(always)]
pub(crate) fn soft_cap_value(x: f32, cap: f32) -> f32 {
    cap - 2.0 * cap / (exp(x * (2.0 / cap)) + 1.0)
}

/// `cap · tanh(x / cap)` of every value (Gemma 2's logits: a vocabulary's width per position);
/// `Err(x)` for other backends.
pub(crate) fn soft_cap<B: Backend>(
    x: Tensor<B, 3>,
    cap: f32,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    par_map(x, |v| soft_cap_value(v, cap))
}

/// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (torch's
/// `gelu(approximate="tanh")`); `Err(x)` for other backends. burn's `gelu_approximate` makes a
/// pass and an allocation per operation. `1 + tanh(u)` is taken as `2 - 2 / (exp(2u) + 1)`:
/// one `exp`, about half the time of libm's `tanhf`, and exact at both ends.
pub(crate) fn gelu_tanh<B: Backend>(x: Tensor<B, 3>) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    const K2: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
    par_map(x, |v| {
        let e = exp(K2 * (v + 0.044715 * v * v * v));
        v - v / (e + 1.0)
    })
}

/// `log softmax(row)[target]` of each row of `logits [1, n, vocab]` against `targets` (`n`
/// ids below `vocab`, checked by the caller), rows shared among the cores; `None` for other
/// backends. burn's `log_softmax` makes several passes, each allocating a tensor the size of the
/// logits (50 MB for 256 rows of a 49,152-token vocabulary).
pub(crate) fn target_log_probs<B: Backend>(
    logits: &Tensor<B, 3>,
    targets: &[usize],
) -> Option<Vec<f64>> {
    let vocab = logits.dims()[2];
    with_values(logits, |all| {
        let rows: Vec<&[f32]> = all.chunks_exact(vocab).collect();
        let mut out = vec![0.0f64; rows.len()];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = rows.len().div_ceil(threads).max(1);
        std::thread::scope(|sc| {
            for ((rows, targets), out) in rows
                .chunks(per)
                .zip(targets.chunks(per))
                .zip(out.chunks_mut(per))
            {
                sc.spawn(move || {
                    for ((row, &target), o) in rows.iter().zip(targets).zip(out.iter_mut()) {
                        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                        let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
                        *o = f64::from(row[target] - max) - sum.ln();
                    }
                });
            }
        });
        out
    })
}

/// Block rows of the Gram matrix computed: with `k`, the products cover `(k+1)/2k` of it.
const GRAM_BLOCKS: usize = 4;

/// `Σ xᵀx` over `[n, d]` blocks of token rows, accumulated block by block. Only the block rows
/// on and above the diagonal are multiplied (the matrix is symmetric: 5/8 of the work), each by
/// one sgemm reading `Xᵀ` through strides, without the transposed copy burn-ndarray would make.
pub(crate) struct Gram {
    d: usize,
    bounds: Vec<usize>,
    g: Vec<f32>,
}

impl Gram {
    pub(crate) fn new(d: usize) -> Self {
        Gram {
            d,
            bounds: (0..=GRAM_BLOCKS).map(|i| i * d / GRAM_BLOCKS).collect(),
            g: vec![0.0; d * d],
        }
    }

    /// Adds `xᵀx` of the rows of `x` (`[n, d]` row-major).
    pub(crate) fn add(&mut self, x: &[f32]) {
        let d = self.d;
        let n = x.len().checked_div(d).unwrap_or(0);
        if n == 0 {
            return;
        }
        for w in self.bounds.windows(2) {
            let (r0, r1) = (w[0], w[1]);
            if r0 == r1 {
                continue;
            }
            // G[r0..r1, r0..d] += X[:, r0..r1]ᵀ · X[:, r0..d]
            // SAFETY: A is `(r1-r0) × n` with element (i, t) at `x[t·d + r0 + i]`, B is
            // `n × (d-r0)` with (t, j) at `x[t·d + r0 + j]`, C is `(r1-r0) × (d-r0)` with (i, j)
            // at `g[(r0+i)·d + r0 + j]`: every index stays inside `x` (t < n, r0+i, r0+j < d) and
            // `g` (r0+i < d, r0+j < d); C does not overlap A or B.
            unsafe {
                matrixmultiply::sgemm(
                    r1 - r0,
                    n,
                    d - r0,
                    1.0,
                    x.as_ptr().add(r0),
                    1,
                    d as isize,
                    x.as_ptr().add(r0),
                    d as isize,
                    1,
                    1.0,
                    self.g.as_mut_ptr().add(r0 * d + r0),
                    d as isize,
                    1,
                );
            }
        }
    }

    /// The whole `[d, d]` matrix: below the diagonal blocks, from the mirror.
    pub(crate) fn finish(mut self) -> Vec<f32> {
        let d = self.d;
        for w in self.bounds.windows(2) {
            for r in w[0]..w[1] {
                for c in 0..w[0] {
                    self.g[r * d + c] = self.g[c * d + r];
                }
            }
        }
        self.g
    }
}

/// `acc [d, d] += xrᵀ · x` for the rows of `xr` and `x` (both `[n, d]` row-major), `Xrᵀ` read
/// through strides.
pub(crate) fn add_cross(acc: &mut [f32], xr: &[f32], x: &[f32], d: usize) {
    let n = x.len().checked_div(d).unwrap_or(0);
    if n == 0 || xr.len() != x.len() || acc.len() != d * d {
        return;
    }
    // SAFETY: A is `d × n` with (i, t) at `xr[t·d + i]`, B is `n × d` with (t, j) at
    // `x[t·d + j]`, C is `d × d` row-major in `acc`: all indices stay inside the slices (lengths
    // checked above) and C overlaps neither.
    unsafe {
        matrixmultiply::sgemm(
            d,
            n,
            d,
            1.0,
            xr.as_ptr(),
            1,
            d as isize,
            x.as_ptr(),
            d as isize,
            1,
            1.0,
            acc.as_mut_ptr(),
            d as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use shrink_ir::{Activation, NormKind};

    use crate::interp::{activate, linear, norm, upload};
    use crate::Cpu;

    /// burn's tensor ops: on the autodiff backend the host paths step aside.
    type Ops = Autodiff<Cpu>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32 values")
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f32;
        for i in 0..=2_000_000 {
            let x = -87.3 + 175.3 * i as f32 / 2_000_000.0;
            let (got, want) = (super::exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(100.0), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
        assert_eq!(super::exp(0.0), 1.0);
    }

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect()
    }

    #[test]
    fn target_log_probs_equal_burns_log_softmax() {
        let (n, vocab) = (7, 300);
        let logits = data(n * vocab, 9);
        let targets: Vec<usize> = (0..n).map(|i| i * 41 % vocab).collect();
        let host = upload::<Cpu, 3>(logits.clone(), [1, n, vocab], &Default::default());
        let got = super::target_log_probs(&host, &targets).expect("the host path runs on the CPU");
        let logp = values(burn::tensor::activation::log_softmax(host, 2));
        for (i, (&g, &t)) in got.iter().zip(&targets).enumerate() {
            let want = f64::from(logp[i * vocab + t]);
            assert!((g - want).abs() < 1e-5, "row {i}: {g} vs {want}");
        }
    }

    #[test]
    fn host_layers_equal_the_tensor_ops() {
        let (b, s, d, out) = (2, 5, 24, 11);
        let x = data(b * s * d, 1);
        let w = data(out * d, 2); // [out, in]
        let bias = data(out, 3);
        let gain = data(d, 4);
        let host =
            |v: &[f32], shape: [usize; 3]| upload::<Cpu, 3>(v.to_vec(), shape, &Default::default());
        let ops =
            |v: &[f32], shape: [usize; 3]| upload::<Ops, 3>(v.to_vec(), shape, &Default::default());
        // Linear, with `wᵀ` stored `[in, out]` and as a transposed view of `[out, in]`.
        let w_host = upload::<Cpu, 2>(w.clone(), [out, d], &Default::default());
        let wt_host = upload::<Cpu, 2>(
            crate::interp::transpose(&w, out, d),
            [d, out],
            &Default::default(),
        );
        let b_host = upload::<Cpu, 1>(bias.clone(), [out], &Default::default());
        let want = values(linear(
            ops(&x, [b, s, d]),
            &upload::<Ops, 2>(w.clone(), [out, d], &Default::default()).transpose(),
            Some(&upload::<Ops, 1>(bias.clone(), [out], &Default::default())),
        ));
        for wt in [wt_host, w_host.transpose()] {
            let got = super::linear(&host(&x, [b, s, d]), &wt, Some(&b_host));
            let got = values(got.expect("the host path runs on the CPU backend"));
            assert!(max_diff(&got, &want) < 1e-5, "linear");
        }
        // Both norms, with and without a bias.
        let g_ops = upload::<Ops, 1>(gain.clone(), [d], &Default::default());
        let g_host = upload::<Cpu, 1>(gain.clone(), [d], &Default::default());
        let shift = data(d, 5);
        let s_ops = upload::<Ops, 1>(shift.clone(), [d], &Default::default());
        let s_host = upload::<Cpu, 1>(shift, [d], &Default::default());
        for kind in [NormKind::Rms, NormKind::Layer] {
            for with_bias in [false, true] {
                let want = values(norm(
                    ops(&x, [b, s, d]),
                    kind,
                    1e-5,
                    &g_ops,
                    with_bias.then_some(&s_ops),
                    None,
                ));
                let got = super::norm(
                    &host(&x, [b, s, d]),
                    kind,
                    1e-5,
                    &g_host,
                    with_bias.then_some(&s_host),
                );
                let got = values(got.expect("the host path runs on the CPU backend"));
                assert!(max_diff(&got, &want) < 1e-5, "{kind:?}, bias {with_bias}");
            }
        }
        // A grouped RMSNorm (Qwen3's per-head q/k norm) normalises each run of `g` features
        // with one shared `[g]` weight, on both paths, as written out by hand here.
        let g = 8;
        let gw = data(g, 6);
        let mut want = x.clone();
        for (i, run) in want.chunks_mut(g).enumerate() {
            let ms = x[i * g..(i + 1) * g].iter().map(|v| v * v).sum::<f32>() / g as f32;
            let r = 1.0 / (ms + 1e-6).sqrt();
            for (v, w) in run.iter_mut().zip(&gw) {
                *v *= r * w;
            }
        }
        for got in [
            values(norm(
                host(&x, [b, s, d]),
                NormKind::Rms,
                1e-6,
                &upload::<Cpu, 1>(gw.clone(), [g], &Default::default()),
                None,
                Some(g),
            )),
            values(norm(
                ops(&x, [b, s, d]),
                NormKind::Rms,
                1e-6,
                &upload::<Ops, 1>(gw.clone(), [g], &Default::default()),
                None,
                Some(g),
            )),
        ] {
            assert!(max_diff(&got, &want) < 1e-5, "grouped rms norm");
        }
        let want = values(activate(ops(&x, [b, s, d]), Activation::Silu));
        let got = values(
            super::silu(host(&x, [b, s, d])).expect("the host path runs on the CPU backend"),
        );
        assert!(max_diff(&got, &want) < 1e-6, "silu");
        let want = values(activate(ops(&x, [b, s, d]), Activation::GeluTanh));
        let got = values(
            super::gelu_tanh(host(&x, [b, s, d])).expect("the host path runs on the CPU backend"),
        );
        assert!(max_diff(&got, &want) < 1e-6, "gelu_tanh");
        let want = values(crate::interp::soft_cap(ops(&x, [b, s, d]), 1.5));
        let got = values(
            super::soft_cap(host(&x, [b, s, d]), 1.5).expect("the host path runs on the CPU"),
        );
        assert!(max_diff(&got, &want) < 1e-6, "soft_cap");
        // An operation's result alone holds its values: mapped in place. With a second holder,
        // into a copy, and the second holder keeps the old values.
        let alone = host(&x, [b, s, d]).mul_scalar(2.0);
        let want: Vec<f32> = x
            .iter()
            .map(|v| super::soft_cap_value(2.0 * v, 1.5))
            .collect();
        let got = values(super::soft_cap(alone, 1.5).expect("the host path runs on the CPU"));
        assert!(max_diff(&got, &want) < 1e-6, "soft_cap in place");
        let shared = host(&x, [b, s, d]).mul_scalar(2.0);
        let holder = shared.clone();
        let got = values(super::soft_cap(shared, 1.5).expect("the host path runs on the CPU"));
        assert!(max_diff(&got, &want) < 1e-6, "soft_cap into a copy");
        let doubled: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        assert_eq!(values(holder), doubled, "the other holder's values");
    }

    #[test]
    fn gram_equals_the_full_product() {
        let d = 13;
        let parts: Vec<Vec<f32>> = [7usize, 5]
            .iter()
            .map(|&n| {
                (0..n * d)
                    .map(|i| ((i * 7919 % 101) as f32 / 101.0) - 0.5)
                    .collect()
            })
            .collect();
        let mut gram = super::Gram::new(d);
        for x in &parts {
            gram.add(x);
        }
        let got = gram.finish();
        for a in 0..d {
            for b in 0..d {
                let want: f32 = parts
                    .iter()
                    .flat_map(|x| x.chunks_exact(d))
                    .map(|row| row[a] * row[b])
                    .sum();
                let v = got[a * d + b];
                assert!((v - want).abs() < 1e-5, "({a},{b}): {v} vs {want}");
            }
        }
    }

    #[test]
    fn cross_product_equals_the_direct_sum() {
        let (n, d) = (7, 5);
        let xr: Vec<f32> = (0..n * d)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
            .collect();
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let mut acc = vec![1.0f32; d * d];
        super::add_cross(&mut acc, &xr, &x, d);
        for i in 0..d {
            for j in 0..d {
                let want: f32 = 1.0 + (0..n).map(|t| xr[t * d + i] * x[t * d + j]).sum::<f32>();
                assert!((acc[i * d + j] - want).abs() < 1e-4, "({i}, {j})");
            }
        }
    }
}
