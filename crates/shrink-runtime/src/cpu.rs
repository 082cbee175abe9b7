//! CPU-only helpers that step outside burn's tensor ops where burn-ndarray copies a lot: reading
//! a tensor's values in place, and the Gram matrix `XᵀX` of calibration with `Xᵀ` as a strided
//! view.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

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

#[cfg(test)]
mod tests {
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
}
