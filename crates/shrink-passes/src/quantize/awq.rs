//! AWQ (Lin et al., 2023): activation-aware scaling. The input channels of a group of linears
//! that read the same value are scaled by `s = mean|x|^α` (α searched on a grid) before
//! rounding, and `1/s` is folded into whatever produced the value, so salient channels get a
//! finer grid. Then each group of weights is clipped to the range that minimises its output
//! error. Errors are measured on all calibration tokens through the Gram matrix `G = XᵀX`:
//! the output error of a weight change `Δ` is `tr(Δ·G·Δᵀ)/N`.

use serde::{Deserialize, Serialize};
use shrink_ir::quant::QuantScheme;

use super::gptq::Matmul;
use crate::linalg::output_error;

/// Options of AWQ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwqOptions {
    /// Search a clipping range per group of weights after scaling.
    pub clip: bool,
    /// Points of the exponent grid α ∈ {0, 1/grid, …, (grid−1)/grid}.
    pub grid: usize,
    /// Clipping shrinks the range by at most this fraction.
    pub max_shrink: f32,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions {
            clip: true,
            grid: 20,
            max_shrink: 0.5,
        }
    }
}

/// Round-to-nearest of a row-major matrix, back to f32 (the values the packed form holds).
pub fn fake_quantize(scheme: QuantScheme, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let g = scheme.group().unwrap_or(cols);
    let mut out = vec![0.0f32; w.len()];
    for r in 0..rows {
        for c0 in (0..cols).step_by(g) {
            let xs = &w[r * cols + c0..r * cols + c0 + g];
            let p = scheme.fit(xs);
            for (j, &x) in xs.iter().enumerate() {
                out[r * cols + c0 + j] = scheme.value(scheme.code(x, &p), &p);
            }
        }
    }
    out
}

/// `w` with input column `j` multiplied by `s[j]` (`s`: one factor per column).
pub fn scale_columns(w: &[f32], s: &[f32]) -> Vec<f32> {
    let cols = s.len();
    w.iter().enumerate().map(|(i, v)| v * s[i % cols]).collect()
}

/// The weight change `Δ = w − q/s` of quantized, column-scaled weights `q` (`s`: `None` for no
/// scaling).
pub fn weight_change(w: &[f32], q: &[f32], s: Option<&[f32]>) -> Vec<f32> {
    match s {
        Some(s) => w
            .iter()
            .zip(q)
            .enumerate()
            .map(|(i, (a, b))| a - b / s[i % s.len()])
            .collect(),
        None => w.iter().zip(q).map(|(a, b)| a - b).collect(),
    }
}

/// The result of the scale search.
pub struct ScaleSearch {
    pub ratio: f32,
    /// Per input channel.
    pub scales: Vec<f32>,
    /// Output error (`tr(Δ·G·Δᵀ)/N`) for every grid point.
    pub losses: Vec<f64>,
}

/// Searches the exponent α for the linears `ws` (each `[rows_i, cols]`) reading one value.
#[allow(clippy::too_many_arguments)]
pub fn search_scales(
    ws: &[(&[f32], usize)],
    cols: usize,
    gram: &[f32],
    tokens: usize,
    abs_mean: &[f32],
    scheme: QuantScheme,
    grid: usize,
    mm: Matmul<'_>,
) -> ScaleSearch {
    let mut best = (f64::INFINITY, 0.0f32, vec![1.0f32; cols]);
    let mut losses = Vec::with_capacity(grid);
    for k in 0..grid.max(1) {
        let ratio = k as f32 / grid.max(1) as f32;
        let mut s: Vec<f32> = abs_mean.iter().map(|m| m.powf(ratio).max(1e-4)).collect();
        let (mx, mn) = s
            .iter()
            .fold((f32::MIN, f32::MAX), |(a, b), v| (a.max(*v), b.min(*v)));
        let norm = (mx * mn).sqrt();
        s.iter_mut().for_each(|v| *v /= norm);
        let mut loss = 0.0;
        for (w, rows) in ws {
            let q = fake_quantize(scheme, &scale_columns(w, &s), *rows, cols);
            let delta = weight_change(w, &q, Some(&s));
            loss += output_error(&delta, *rows, cols, gram, mm);
        }
        let loss = loss / tokens.max(1) as f64;
        losses.push(loss);
        if loss < best.0 {
            best = (loss, ratio, s);
        }
    }
    ScaleSearch {
        ratio: best.1,
        scales: best.2,
        losses,
    }
}

/// Clips each group of `w` (`[rows, cols]`, already scaled) to `±amax·(1 − i/grid)` for the `i`
/// (below `max_shrink·grid`) whose rounding error through `gram` (of the scaled inputs) is
/// least. Returns the clipped weights.
pub fn clip(
    scheme: QuantScheme,
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f32],
    grid: usize,
    max_shrink: f32,
) -> Vec<f32> {
    let g = scheme.group().unwrap_or(cols);
    let steps = ((max_shrink * grid as f32) as usize).max(1);
    let mut out = w.to_vec();
    let mut trial = vec![0.0f32; g];
    let mut delta = vec![0.0f32; g];
    for r in 0..rows {
        for c0 in (0..cols).step_by(g) {
            let xs = &w[r * cols + c0..r * cols + c0 + g];
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let mut best = (f64::INFINITY, 0usize);
            for i in 0..steps {
                let mv = amax * (1.0 - i as f32 / grid as f32);
                for (t, x) in trial.iter_mut().zip(xs) {
                    *t = x.clamp(-mv, mv);
                }
                let p = scheme.fit(&trial);
                for ((d, t), x) in delta.iter_mut().zip(&trial).zip(xs) {
                    *d = x - scheme.value(scheme.code(*t, &p), &p);
                }
                // δ·G_gg·δᵀ over the group's block of the Gram matrix.
                let mut e = 0.0f64;
                for (a, da) in delta.iter().enumerate() {
                    let row = &gram[(c0 + a) * cols + c0..(c0 + a) * cols + c0 + g];
                    let dot: f32 = row.iter().zip(&delta).map(|(gv, db)| gv * db).sum();
                    e += *da as f64 * dot as f64;
                }
                if e < best.0 {
                    best = (e, i);
                }
            }
            let mv = amax * (1.0 - best.1 as f32 / grid as f32);
            for (o, x) in out[r * cols + c0..r * cols + c0 + g].iter_mut().zip(xs) {
                *o = x.clamp(-mv, mv);
            }
        }
    }
    out
}
