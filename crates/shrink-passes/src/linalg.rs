//! Dense symmetric linear algebra on the host, in f64: the Cholesky factorizations that GPTQ
//! and SparseGPT need, and the steps they share around them (the Hessian of a linear's
//! calibration inputs, its dampened inverse factor, the lazy update of later columns). Sizes
//! are a layer's input width (at most a few thousand), so cubic loops over contiguous rows are
//! fast enough and keep burn out of the numerics.

/// `a [m, k] · b [k, n]`, wherever it is fastest (the calibration device in passes).
pub type Matmul<'a> = &'a dyn Fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32>;

/// Host matrix product, for tests and small matrices.
pub fn host_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            if av != 0.0 {
                for (cv, bv) in c[i * n..(i + 1) * n].iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *cv += av * bv;
                }
            }
        }
    }
    c
}

/// The Hessian `H = 2/N·XᵀX` of a linear's layer-wise squared error, from the Gram matrix
/// `Σxᵀx` (`n×n`) of `tokens` inputs, in f64. Inputs that are always zero (`H_ii = 0`) carry
/// no information: their diagonal becomes 1 so `H` can be factored, and their indices are
/// returned so the caller zeroes those weight columns (as GPTQ's and SparseGPT's reference code
/// do).
pub fn hessian(gram: &[f32], tokens: usize, n: usize) -> (Vec<f64>, Vec<usize>) {
    let scale = 2.0 / tokens.max(1) as f64;
    let mut h: Vec<f64> = gram.iter().map(|&v| v as f64 * scale).collect();
    let mut dead = Vec::new();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
            dead.push(i);
        }
    }
    (h, dead)
}

/// `U` with `(H + λ·mean(diag H)·I)⁻¹ = UᵀU`, starting at `λ = damp` and raising it tenfold
/// (up to 1.0) until the dampened `H` is positive definite. Returns `U` and the `λ` used.
pub fn damped_inverse_factor(h: &[f64], n: usize, damp: f64) -> Result<(Vec<f64>, f64), String> {
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let mut damp = damp;
    loop {
        let mut hd = h.to_vec();
        for i in 0..n {
            hd[i * n + i] += damp * mean_diag;
        }
        if let Some(u) = inverse_upper_cholesky(&hd, n) {
            return Ok((u, damp));
        }
        if damp >= 1.0 {
            return Err("the Hessian is not positive definite even with dampening 1.0".into());
        }
        damp = (damp * 10.0).min(1.0);
    }
}

/// The lazy batch update of GPTQ and SparseGPT: once columns `i1..i2` are final, their scaled
/// errors `err` (`[rows, i2-i1]`) move the columns after them by `err · U[i1:i2, i2:]`,
/// returned as `[rows, n-i2]` (subtract it).
pub fn trailing_update(
    u: &[f32],
    n: usize,
    i1: usize,
    i2: usize,
    err: &[f32],
    rows: usize,
    matmul: Matmul<'_>,
) -> Vec<f32> {
    let (count, rest) = (i2 - i1, n - i2);
    let mut ub = vec![0.0f32; count * rest];
    for i in 0..count {
        ub[i * rest..(i + 1) * rest].copy_from_slice(&u[(i1 + i) * n + i2..(i1 + i) * n + n]);
    }
    matmul(err, &ub, rows, count, rest)
}

/// Lower Cholesky factor `L` of a symmetric positive definite `a` (`n×n`, row-major):
/// `a = L·Lᵀ`. `None` when `a` is not positive definite. faer's blocked factorization: a
/// 70B model's MLP Hessians are 28,672 wide, where a row-by-row loop is bound by memory.
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    if a.len() != n * n || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let llt = faer::MatRef::from_row_major_slice(a, n, n)
        .llt(faer::Side::Lower)
        .ok()?;
    let l = llt.L();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            out[i * n + j] = l[(i, j)];
        }
    }
    // faer accepts any positive pivot; a subnormal one would overflow the inverse.
    (0..n).all(|i| out[i * n + i].is_normal()).then_some(out)
}

/// `x` with `a·x = b` for a symmetric positive definite `a` (`n×n`), through its Cholesky
/// factor; `None` when `a` is not positive definite.
pub fn solve_spd(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky(a, n)?;
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        y[i] = (b[i] - dot(&l[i * n..i * n + i], &y[..i])) / l[i * n + i];
    }
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    Some(x)
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it (a plain
/// `sum()` must keep the sequential order of f64 additions).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Inverse of a lower triangular `l` (`n×n`, row-major; also lower triangular), by faer's
/// blocked, threaded inversion.
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let src = faer::MatRef::from_row_major_slice(l, n, n);
    let mut inv = faer::Mat::<f64>::zeros(n, n);
    faer::linalg::triangular_inverse::invert_lower_triangular(
        inv.as_mut(),
        src,
        faer::Par::rayon(0),
    );
    let mut m = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = inv[(i, j)];
        }
    }
    m
}

/// Upper triangular `U` with `a⁻¹ = Uᵀ·U` (what `cholesky(cholesky_inverse(cholesky(a)),
/// upper=True)` gives in torch), from one factorization: with `P` the order reversal and
/// `P·a·P = L·Lᵀ`, `U = P·L⁻¹·P`.
pub fn inverse_upper_cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut rev = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            rev[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    let l = cholesky(&rev, n)?;
    let m = lower_inverse(&l, n);
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = m[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Some(u)
}

/// `tr(Δ·G·Δᵀ)`: the summed squared output error of a weight change `Δ` (`[rows, cols]`).
pub fn output_error(delta: &[f32], rows: usize, cols: usize, gram: &[f32], mm: Matmul<'_>) -> f64 {
    let dg = mm(delta, gram, rows, cols, cols);
    delta
        .iter()
        .zip(&dg)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // a = b·bᵀ + n·I for a fixed pseudo-random b.
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7919 % 97) as f64 / 97.0) - 0.5)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn upper_factor_of_the_inverse() {
        let n = 13;
        let a = spd(n);
        let u = inverse_upper_cholesky(&a, n).unwrap();
        // Uᵀ·U·a = I
        for i in 0..n {
            for j in 0..n {
                let mut v = 0.0;
                for k in 0..n {
                    let utu: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    v += utu * a[k * n + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
            assert!(u[i * n + i] > 0.0);
        }
    }

    #[test]
    fn not_positive_definite() {
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
