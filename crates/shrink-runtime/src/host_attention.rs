//! Attention computed on the host for the CPU backend at inference (eval, calibration): one
//! pass per query row over the keys it can see, with the softmax taken in place. burn-ndarray
//! spends most of attention's time outside the two products (the mask, the softmax's passes
//! over the scores, copies of transposed views; docs/BENCHMARKS.md has the measurements).
//! Training (autodiff), generation with a KV cache and other backends keep the tensor-op path
//! in `interp`.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use shrink_ir::AttentionSpec;

use crate::cpu::with_values;
use crate::interp::{rope_cos_sin, transpose, upload};
use crate::Cpu;

/// Query rows per work item: small enough to balance causal rows of unequal length.
const ROWS_PER_ITEM: usize = 64;

/// `Some(output)` when `B` is the CPU backend; `None` sends the caller to the tensor-op path.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    spec: &AttentionSpec,
    rope: Option<(f32, usize)>,
    past: usize,
    causal: bool,
) -> Option<Tensor<B, 3>> {
    let [b, s, _] = q.dims();
    let (heads, kv_heads, d) = (spec.heads, spec.kv_heads, spec.head_dim);
    // The three have one backend: on the CPU all are read in place, elsewhere none.
    let out = with_values(q, |q| {
        with_values(k, |k| {
            with_values(v, |v| {
                let t = k.len() / (b * kv_heads * d).max(1);
                let shape = Shape {
                    b,
                    s,
                    t,
                    heads,
                    kv_heads,
                    d,
                };
                compute(q, k, v, shape, rope, past, causal)
            })
        })
    })
    .flatten()
    .flatten()?;
    let out = upload::<Cpu, 3>(out, [b, s, heads * d], &Default::default());
    let out: Box<dyn Any> = Box::new(out);
    out.downcast::<Tensor<B, 3>>().ok().map(|t| *t)
}

#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    /// Query positions.
    s: usize,
    /// Key positions (no cache here, so the queries' own).
    t: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

/// `q [b, s, heads·d]`, `k`, `v [b, t, kv_heads·d]` (rows of tokens, heads side by side) →
/// `[b, s, heads·d]`. RoPE (`theta`, rotated dims) applies at positions `past..` to queries
/// and keys alike (no cache: the keys are the queries' own positions); with `causal`, query `i`
/// sees keys `0..=past + i`.
fn compute(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: Shape,
    rope: Option<(f32, usize)>,
    past: usize,
    causal: bool,
) -> Vec<f32> {
    let Shape {
        b,
        s,
        t,
        heads,
        kv_heads,
        d,
    } = sh;
    let g = heads / kv_heads.max(1);
    // Per head, contiguous `[positions, d]`, rotated; queries also scaled.
    let scale = 1.0 / (d as f32).sqrt();
    let qh = per_head(q, b, s, heads, d, rope, past, scale);
    // Keys transposed, `[d, t]` per head: a row's scores are then `d` vector updates of the
    // score row instead of `t` dot products that each end in a horizontal sum.
    let kh: Vec<f32> = per_head(k, b, t, kv_heads, d, rope, past, 1.0)
        .chunks_exact(t * d)
        .flat_map(|head| transpose(head, t, d))
        .collect();
    let vh = per_head(v, b, t, kv_heads, d, None, 0, 1.0);
    let chunks = s.div_ceil(ROWS_PER_ITEM);
    let items = b * heads * chunks;
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.max(1));
    let mut done: Vec<(usize, Vec<f32>)> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (qh, kh, vh, next) = (&qh, &kh, &vh, &next);
                sc.spawn(move || {
                    let mut mine = Vec::new();
                    let mut scores = vec![0.0f32; t];
                    loop {
                        let item = next.fetch_add(1, Ordering::Relaxed);
                        if item >= items {
                            break;
                        }
                        let (bh, chunk) = (item / chunks, item % chunks);
                        let (bi, h) = (bh / heads, bh % heads);
                        let kvi = bi * kv_heads + h / g;
                        let keys = &kh[kvi * t * d..(kvi + 1) * t * d];
                        let values = &vh[kvi * t * d..(kvi + 1) * t * d];
                        let r0 = chunk * ROWS_PER_ITEM;
                        let r1 = (r0 + ROWS_PER_ITEM).min(s);
                        let mut out = vec![0.0f32; (r1 - r0) * d];
                        for (i, o) in (r0..r1).zip(out.chunks_exact_mut(d)) {
                            let qi = &qh[(bh * s + i) * d..(bh * s + i + 1) * d];
                            let seen = if causal { (past + i + 1).min(t) } else { t };
                            row(qi, keys, values, &mut scores[..seen], o);
                        }
                        mine.push((item, out));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_by_key(|(item, _)| *item);
    let mut out = vec![0.0f32; b * s * heads * d];
    for (item, rows) in done {
        let (bh, chunk) = (item / chunks, item % chunks);
        let (bi, h) = (bh / heads, bh % heads);
        let r0 = chunk * ROWS_PER_ITEM;
        for (k, o) in rows.chunks_exact(d).enumerate() {
            let at = ((bi * s + r0 + k) * heads + h) * d;
            out[at..at + d].copy_from_slice(o);
        }
    }
    out
}

/// One query row: scores against `scores.len()` keys, softmax, weighted sum of values.
/// `keys_t` is `[d, t]`.
fn row(qi: &[f32], keys_t: &[f32], values: &[f32], scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_avx2(qi, keys_t, values, scores, out) };
    }
    row_portable(qi, keys_t, values, scores, out)
}

/// `row` compiled for AVX2 (8 lanes): the build targets baseline x86-64 (4-lane SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(
    qi: &[f32],
    keys_t: &[f32],
    values: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    row_portable(qi, keys_t, values, scores, out)
}

#[inline(always)]
fn row_portable(qi: &[f32], keys_t: &[f32], values: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let d = qi.len();
    let t = keys_t.len() / d;
    scores.fill(0.0);
    for (k, &qk) in qi.iter().enumerate() {
        let kr = &keys_t[k * t..k * t + scores.len()];
        for (sc, &x) in scores.iter_mut().zip(kr) {
            *sc += qk * x;
        }
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
            *o += p * x;
        }
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// `x [b, n, heads·d]` → `[b, heads, n, d]`, RoPE applied at positions `first..` (rotating
/// the first `dim` features of each head in two halves, as `interp::apply_rope`), times `scale`.
#[allow(clippy::too_many_arguments)]
fn per_head(
    x: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    d: usize,
    rope: Option<(f32, usize)>,
    first: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; b * heads * n * d];
    let half = rope.map_or(0, |(_, dim)| dim / 2);
    let (cos, sin) = rope.map_or((Vec::new(), Vec::new()), |(theta, dim)| {
        rope_cos_sin(theta, dim, first, n)
    });
    for p in 0..n {
        let (cos, sin) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for bi in 0..b {
            for h in 0..heads {
                let src = &x[((bi * n + p) * heads + h) * d..][..d];
                let dst = &mut out[((bi * heads + h) * n + p) * d..][..d];
                for i in 0..half {
                    let (x1, x2) = (src[i], src[half + i]);
                    dst[i] = (x1 * cos[i] - x2 * sin[i]) * scale;
                    dst[half + i] = (x2 * cos[i] + x1 * sin[i]) * scale;
                }
                for i in 2 * half..d {
                    dst[i] = src[i] * scale;
                }
            }
        }
    }
    out
}
