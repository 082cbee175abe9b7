//! Attention computed on the host for the CPU backend at inference (eval, calibration): one
//! pass per query row over the keys it can see, with the softmax taken in place. burn-ndarray
//! spends most of attention's time outside the two products (the mask, the softmax's passes
//! over the scores, copies of transposed views; docs/BENCHMARKS.md has the measurements).
//! Training (autodiff), generation with a KV cache and other backends keep the tensor-op path
//! in `interp`.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use shrink_ir::AttentionSpec;

use crate::cpu::with_values;
use crate::interp::transpose;

/// Query rows per work item: small enough to balance causal rows of unequal length.
const ROWS_PER_ITEM: usize = 64;

/// `Some(output)` when `B` is the CPU backend; `None` sends the caller to the tensor-op path.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    spec: &AttentionSpec,
    rope: Option<&(Tensor<B, 2>, Tensor<B, 2>)>,
    past: usize,
    causal: bool,
) -> Option<Tensor<B, 3>> {
    let [b, s, _] = q.dims();
    // The interpreter's tables for these positions, computed once per forward for all layers.
    let tables = match (rope, spec.rope) {
        (Some((cos, sin)), Some(r)) => Some((
            crate::cpu::with_values(cos, <[f32]>::to_vec)?,
            crate::cpu::with_values(sin, <[f32]>::to_vec)?,
            r.dim / 2,
        )),
        _ => None,
    };
    let rope = tables
        .as_ref()
        .map(|(c, s, h)| (c.as_slice(), s.as_slice(), *h));
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
                    scale: spec.score_scale(),
                    softcap: spec.softcap,
                };
                let window = spec.window.filter(|_| causal);
                compute(q, k, v, shape, rope, past, causal, window)
            })
        })
    })
    .flatten()
    .flatten()?;
    crate::cpu::to_backend(out, [b, s, heads * d])
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
    /// The factor on `q·k`.
    scale: f32,
    /// Scores soft-capped to `cap · tanh(score / cap)`.
    softcap: Option<f32>,
}

/// `q [b, s, heads·d]`, `k`, `v [b, t, kv_heads·d]` (rows of tokens, heads side by side) →
/// `[b, s, heads·d]`. RoPE (`cos`, `sin [s, half]` of positions `past..`) applies to queries
/// and keys alike (no cache: the keys are the queries' own positions); with `causal`, query `i`
/// sees keys `0..=past + i`, and with a sliding `window` only the last `window` of those.
#[allow(clippy::too_many_arguments)]
fn compute(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: Shape,
    rope: Option<RopeRows>,
    past: usize,
    causal: bool,
    window: Option<usize>,
) -> Vec<f32> {
    let Shape {
        b,
        s,
        t,
        heads,
        kv_heads,
        d,
        softcap,
        ..
    } = sh;
    let g = heads / kv_heads.max(1);
    // Per head, contiguous `[positions, d]`, rotated; queries also scaled.
    let scale = sh.scale;
    let qh = per_head(q, b, s, heads, d, rope, scale);
    // Keys transposed, `[d, tp]` per head with the key axis padded with zeros to a multiple of
    // the tiles' width: a row's scores are then `d` vector updates of the score row instead of
    // `t` dot products that each end in a horizontal sum.
    let tp = t.next_multiple_of(KEY_TILE);
    let kh: Vec<f32> = per_head(k, b, t, kv_heads, d, rope, 1.0)
        .chunks_exact(t * d)
        .flat_map(|head| {
            let kt = transpose(head, t, d);
            let mut padded = vec![0.0f32; d * tp];
            for (dst, src) in padded.chunks_exact_mut(tp).zip(kt.chunks_exact(t)) {
                dst[..t].copy_from_slice(src);
            }
            padded
        })
        .collect();
    let tiled = tiles_fit(d);
    let vh = per_head(v, b, t, kv_heads, d, None, 1.0);
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
                    let mut scores = vec![0.0f32; ROWS * tp];
                    loop {
                        let item = next.fetch_add(1, Ordering::Relaxed);
                        if item >= items {
                            break;
                        }
                        let (bh, chunk) = (item / chunks, item % chunks);
                        let (bi, h) = (bh / heads, bh % heads);
                        let kvi = bi * kv_heads + h / g;
                        let keys = &kh[kvi * tp * d..(kvi + 1) * tp * d];
                        let values = &vh[kvi * t * d..(kvi + 1) * t * d];
                        let r0 = chunk * ROWS_PER_ITEM;
                        let r1 = (r0 + ROWS_PER_ITEM).min(s);
                        let seen = |i: usize| if causal { (past + i + 1).min(t) } else { t };
                        let first = |i: usize| window.map_or(0, |w| seen(i).saturating_sub(w));
                        let mut out = vec![0.0f32; (r1 - r0) * d];
                        let mut i = r0;
                        while i < r1 {
                            let o = &mut out[(i - r0) * d..];
                            if tiled && i + ROWS <= r1 {
                                let q = &qh[(bh * s + i) * d..(bh * s + i + ROWS) * d];
                                let seen: [usize; ROWS] = std::array::from_fn(|r| seen(i + r));
                                let first: [usize; ROWS] = std::array::from_fn(|r| first(i + r));
                                rows_tiled(
                                    q,
                                    keys,
                                    values,
                                    (first, seen),
                                    softcap,
                                    &mut scores,
                                    &mut o[..ROWS * d],
                                );
                                i += ROWS;
                            } else {
                                let qi = &qh[(bh * s + i) * d..(bh * s + i + 1) * d];
                                let (lo, hi) = (first(i), seen(i));
                                let sc = &mut scores[..hi - lo];
                                row(qi, keys, tp, values, lo, softcap, sc, &mut o[..d]);
                                i += 1;
                            }
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

/// Query rows of one tile.
const ROWS: usize = 4;
/// Keys (in the scores) and features (in the output) of one tile: two 8-lane registers.
const KEY_TILE: usize = 16;

/// Whether the tiled kernel serves head size `d` on this CPU.
fn tiles_fit(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        d.is_multiple_of(KEY_TILE)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// `ROWS` query rows at once (`q [ROWS, d]`), row `r` seeing keys `first[r]..seen[r]`: the same
/// result as `row` for each, with every key and value loaded once per tile of rows, so the
/// products run from registers rather than from the score and output rows. `keys_t` is
/// `[d, tp]` (zero-padded keys), `scores` at least `ROWS × tp`. Only called after `tiles_fit`.
fn rows_tiled(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    range: ([usize; ROWS], [usize; ROWS]),
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `tiles_fit` checked AVX2, FMA and `d % KEY_TILE == 0` before this is reached.
    unsafe {
        rows_tiled_avx2(q, keys_t, values, range, softcap, scores, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, keys_t, values, range, softcap, scores, out);
        unreachable!("tiles_fit is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_tiled_avx2(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    (first, seen): ([usize; ROWS], [usize; ROWS]),
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = q.len() / ROWS;
    let tp = keys_t.len() / d;
    let most = seen.iter().copied().max().unwrap_or(0);
    // Keys before every row's window are skipped a whole tile at a time.
    let least = first.iter().copied().min().unwrap_or(0) / KEY_TILE * KEY_TILE;
    assert!(
        most <= tp
            && (0..ROWS).all(|r| first[r] < seen[r])
            && scores.len() >= ROWS * tp
            && out.len() == ROWS * d
            && values.len() >= most * d
    );
    let (qp, kp, vp, sp) = (
        q.as_ptr(),
        keys_t.as_ptr(),
        values.as_ptr(),
        scores.as_mut_ptr(),
    );
    // Scores: tiles of ROWS × KEY_TILE, accumulated over the d features. Key columns past
    // `t` are zero padding, and those past a row's `seen` are dropped by the softmax below.
    // SAFETY (pointer reads and writes here and below): j + 16 ≤ tp by the padding, c < d,
    // r < ROWS, and `scores`, `out`, `values` were sized by the assert above.
    for j in (least..most).step_by(KEY_TILE) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for c in 0..d {
            let k0 = _mm256_loadu_ps(kp.add(c * tp + j));
            let k1 = _mm256_loadu_ps(kp.add(c * tp + j + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = _mm256_set1_ps(*qp.add(r * d + c));
                a[0] = _mm256_fmadd_ps(qb, k0, a[0]);
                a[1] = _mm256_fmadd_ps(qb, k1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(sp.add(r * tp + j), a[0]);
            _mm256_storeu_ps(sp.add(r * tp + j + 8), a[1]);
        }
    }
    // Softmax of each row over the keys it sees; zero weight for the rest of the tiles' keys.
    let mut sums = [0.0f32; ROWS];
    for (r, sum) in sums.iter_mut().enumerate() {
        let row = &mut scores[r * tp + least..r * tp + most];
        let (before, rest) = row.split_at_mut(first[r] - least);
        let (live, after) = rest.split_at_mut(seen[r] - first[r]);
        *sum = softmax_unnormalised(live, softcap);
        before.fill(0.0);
        after.fill(0.0);
    }
    // Output: tiles of ROWS × KEY_TILE features, accumulated over the keys.
    let sp = scores.as_ptr();
    for f in (0..d).step_by(KEY_TILE) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for j in least..most {
            let v0 = _mm256_loadu_ps(vp.add(j * d + f));
            let v1 = _mm256_loadu_ps(vp.add(j * d + f + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let pb = _mm256_set1_ps(*sp.add(r * tp + j));
                a[0] = _mm256_fmadd_ps(pb, v0, a[0]);
                a[1] = _mm256_fmadd_ps(pb, v1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let sum = _mm256_set1_ps(sums[r]);
            let o = out.as_mut_ptr().add(r * d + f);
            _mm256_storeu_ps(o, _mm256_div_ps(a[0], sum));
            _mm256_storeu_ps(o.add(8), _mm256_div_ps(a[1], sum));
        }
    }
}

/// Scores soft-capped (`cap · tanh(s / cap)`) when `softcap` is set, then `exp(s - max)` in
/// place; returns their sum. Inlined into the AVX2 callers. The max and the sum are kept in
/// `LANES` partial results, so that every loop vectorises (a single running sum is a chain the
/// compiler must keep in order).
#[inline(always)]
fn softmax_unnormalised(scores: &mut [f32], softcap: Option<f32>) -> f32 {
    const LANES: usize = 8;
    if let Some(c) = softcap {
        for s in scores.iter_mut() {
            *s = crate::cpu::soft_cap_value(*s, c);
        }
    }
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = scores.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for s in scores.iter_mut() {
        *s = crate::cpu::exp(*s - max);
    }
    let mut sums = [0.0f32; LANES];
    let mut chunks = scores.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (t, &x) in sums.iter_mut().zip(chunk) {
            *t += x;
        }
    }
    chunks.remainder().iter().chain(&sums).sum()
}

/// One query row: scores against the `scores.len()` keys from key `first` (soft-capped when
/// `softcap` is set), softmax, weighted sum of values. `keys_t` is `[d, tp]`.
#[allow(clippy::too_many_arguments)]
fn row(
    qi: &[f32],
    keys_t: &[f32],
    tp: usize,
    values: &[f32],
    first: usize,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_avx2(qi, keys_t, tp, values, first, softcap, scores, out) };
    }
    row_portable(qi, keys_t, tp, values, first, softcap, scores, out)
}

/// `row` compiled for AVX2 (8 lanes): the build targets baseline x86-64 (4-lane SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_avx2(
    qi: &[f32],
    keys_t: &[f32],
    tp: usize,
    values: &[f32],
    first: usize,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    row_portable(qi, keys_t, tp, values, first, softcap, scores, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_portable(
    qi: &[f32],
    keys_t: &[f32],
    t: usize,
    values: &[f32],
    first: usize,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = qi.len();
    let values = &values[first * d..];
    scores.fill(0.0);
    for (k, &qk) in qi.iter().enumerate() {
        let kr = &keys_t[k * t + first..k * t + first + scores.len()];
        for (sc, &x) in scores.iter_mut().zip(kr) {
            *sc += qk * x;
        }
    }
    let sum = softmax_unnormalised(scores, softcap);
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

/// RoPE's `cos` and `sin`, `[positions, half]` row-major, and `half` (rotated dims / 2).
type RopeRows<'a> = (&'a [f32], &'a [f32], usize);

/// `x [b, n, heads·d]` → `[b, heads, n, d]`, RoPE applied (rotating the first `2·half`
/// features of each head in two halves, as `interp::apply_rope`), times `scale`.
fn per_head(
    x: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    d: usize,
    rope: Option<RopeRows>,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; b * heads * n * d];
    let (cos, sin, half) = rope.unwrap_or((&[], &[], 0));
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
