//! ggml block dequantizers, bit-exact with `dequantize_row_*` in ggml-quants.c.
//!
//! Every block is read as a fixed-size array, so no index depends on the input.

use half::f16;

use super::{GgmlType, GgufError};

/// Dequantizes `n_elements` values of type `ty` from `bytes` (exactly their size) into ggml order.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    check(ty, bytes, n_elements)?;
    let mut out = vec![0.0f32; n_elements];
    run(ty, bytes, &mut out);
    Ok(out)
}

/// As [`dequantize`], writing into `out` (whose length is the element count).
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check(ty, bytes, out.len())?;
    run(ty, bytes, out);
    Ok(())
}

fn check(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<(), GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            path: None,
            tensor: None,
            ggml_type: ty,
        });
    }
    let bs = ty.block_size();
    if bs == 0 || !n_elements.is_multiple_of(bs) {
        return Err(GgufError::BlockMismatch {
            path: None,
            tensor: None,
            ggml_type: ty,
            what: "element count",
            len: n_elements as u64,
            block_size: bs,
        });
    }
    let expected = (n_elements / bs).checked_mul(ty.type_size());
    if expected != Some(bytes.len()) {
        return Err(GgufError::DataLength {
            path: None,
            tensor: None,
            ggml_type: ty,
            n_elements: n_elements as u64,
            expected: expected.map_or(u64::MAX, |e| e as u64),
            got: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Lengths already checked: `bytes` holds exactly the blocks of `out`.
fn run(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => blocks::<4, 1>(bytes, out, |b, y| y[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => blocks::<2, 1>(bytes, out, |b, y| y[0] = h(b[0], b[1])),
        GgmlType::BF16 => blocks::<2, 1>(bytes, out, |b, y| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, out, q8_0),
        GgmlType::Q2_K => blocks::<84, 256>(bytes, out, q2_k),
        GgmlType::Q3_K => blocks::<110, 256>(bytes, out, q3_k),
        GgmlType::Q4_K => blocks::<144, 256>(bytes, out, q4_k),
        GgmlType::Q5_K => blocks::<176, 256>(bytes, out, q5_k),
        GgmlType::Q6_K => blocks::<210, 256>(bytes, out, q6_k),
        GgmlType::Q8_K => blocks::<292, 256>(bytes, out, q8_k),
        // Rejected by `check`.
        GgmlType::Q8_1 | GgmlType::Unsupported(_) => {}
    }
}

#[inline(always)]
fn blocks<const TS: usize, const BS: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]),
) {
    let (src, _) = bytes.as_chunks::<TS>();
    let (dst, _) = out.as_chunks_mut::<BS>();
    for (b, y) in src.iter().zip(dst.iter_mut()) {
        f(b, y);
    }
}

/// Little-endian f16 to f32 (exact for every non-NaN value).
#[inline(always)]
fn h(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = h(b[0], b[1]);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = h(b[0], b[1]);
    let m = h(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = h(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((u32::from(q & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = ((u32::from(q >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = h(b[0], b[1]);
    let m = h(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = (u32::from(q & 0x0F) | xh0) as f32 * d + m;
        y[j + 16] = (u32::from(q >> 4) | xh1) as f32 * d + m;
    }
}

fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = h(b[0], b[1]);
    for j in 0..32 {
        y[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// Layout: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin.
fn q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let d = h(b[80], b[81]);
    let dmin = h(b[82], b[83]);
    for n in 0..2 {
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = b[n * 8 + j * 2 + half];
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                for l in 0..16 {
                    let q = (b[16 + n * 32 + half * 16 + l] >> shift) & 3;
                    y[n * 128 + j * 32 + half * 16 + l] = dl * f32::from(q) - ml;
                }
            }
        }
    }
}

/// Layout: hmask[32], qs[64], scales[12] (sixteen 6-bit scales), d.
fn q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let d = h(b[108], b[109]);
    let mut scales = [0i32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let lo = if i < 8 {
            b[96 + i] & 0x0F
        } else {
            b[96 + i - 8] >> 4
        };
        let hi = (b[104 + i % 4] >> (2 * (i / 4))) & 3;
        *s = i32::from(lo | (hi << 4)) - 32;
    }
    for n in 0..2 {
        for j in 0..4 {
            let shift = 2 * j;
            let mask = 1u8 << (n * 4 + j);
            for half in 0..2 {
                let dl = d * scales[n * 8 + j * 2 + half] as f32;
                for l in 0..16 {
                    let k = half * 16 + l;
                    let q = i32::from((b[32 + n * 32 + k] >> shift) & 3);
                    let q = if b[k] & mask != 0 { q } else { q - 4 };
                    y[n * 128 + j * 32 + k] = dl * q as f32;
                }
            }
        }
    }
}

/// ggml's `get_scale_min_k4`: the j-th 6-bit (scale, min) pair of a Q4_K/Q5_K block.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn scales12(b: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (d, v) in s.iter_mut().zip(b) {
        *d = *v;
    }
    s
}

/// Layout: d, dmin, scales[12], qs[128].
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = h(b[0], b[1]);
    let dmin = h(b[2], b[3]);
    let sc = scales12(&b[4..16]);
    for k in 0..4 {
        let (s1, m1) = scale_min_k4(2 * k, &sc);
        let (s2, m2) = scale_min_k4(2 * k + 1, &sc);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        for l in 0..32 {
            let q = b[16 + 32 * k + l];
            y[64 * k + l] = d1 * f32::from(q & 0x0F) - m1;
            y[64 * k + 32 + l] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Layout: d, dmin, scales[12], qh[32], qs[128].
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = h(b[0], b[1]);
    let dmin = h(b[2], b[3]);
    let sc = scales12(&b[4..16]);
    for k in 0..4 {
        let (s1, m1) = scale_min_k4(2 * k, &sc);
        let (s2, m2) = scale_min_k4(2 * k + 1, &sc);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let u1 = 1u8 << (2 * k);
        let u2 = 2u8 << (2 * k);
        for l in 0..32 {
            let q = b[48 + 32 * k + l];
            let qh = b[16 + l];
            let hi1 = if qh & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh & u2 != 0 { 16 } else { 0 };
            y[64 * k + l] = d1 * f32::from((q & 0x0F) + hi1) - m1;
            y[64 * k + 32 + l] = d2 * f32::from((q >> 4) + hi2) - m2;
        }
    }
}

/// Layout: ql[128], qh[64], scales[16] (i8), d.
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = h(b[208], b[209]);
    for n in 0..2 {
        let ql = 64 * n;
        let qh = 128 + 32 * n;
        let sc = 192 + 8 * n;
        for l in 0..32 {
            let is = l / 16;
            let hb = b[qh + l];
            let a = b[ql + l];
            let c = b[ql + l + 32];
            let q1 = i32::from((a & 0x0F) | ((hb & 3) << 4)) - 32;
            let q2 = i32::from((c & 0x0F) | (((hb >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((a >> 4) | (((hb >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((c >> 4) | (((hb >> 6) & 3) << 4)) - 32;
            let s = |i: usize| d * f32::from(b[sc + is + i] as i8);
            y[128 * n + l] = s(0) * q1 as f32;
            y[128 * n + l + 32] = s(2) * q2 as f32;
            y[128 * n + l + 64] = s(4) * q3 as f32;
            y[128 * n + l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Layout: d (f32), qs[256] (i8), bsums[16] (i16, unused).
fn q8_k(b: &[u8; 292], y: &mut [f32; 256]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..256 {
        y[j] = d * f32::from(b[4 + j] as i8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every type gguf-py can dequantize (it has no Q8_K; see `q8_k_by_hand`).
    const TYPES: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf-blocks")
    }

    fn read_f32(path: &std::path::Path) -> Vec<f32> {
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(raw.len() % 4, 0);
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Equal bit for bit, except that any NaN matches any NaN (payloads are not compared).
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn golden_blocks_match_gguf_py() {
        let dir = fixtures();
        for ty in TYPES {
            let bin = dir.join(format!("{}.bin", ty.name()));
            let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let want = read_f32(&dir.join(format!("{}.f32", ty.name())));
            assert!(!want.is_empty(), "{ty}: empty golden file");
            let got = dequantize(ty, &bytes, want.len()).unwrap();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    same(g, w),
                    "{ty}[{i}]: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                    g.to_bits(),
                    w.to_bits()
                );
            }
            let mut into = vec![f32::NAN; want.len()];
            dequantize_into(ty, &bytes, &mut into).unwrap();
            assert!(into.iter().zip(&got).all(|(&a, &b)| same(a, b)));
        }
    }

    #[test]
    fn q8_k_by_hand() {
        let mut b = vec![0u8; 292];
        b[..4].copy_from_slice(&0.5f32.to_le_bytes());
        for j in 0..256 {
            b[4 + j] = (j as i32 - 128) as i8 as u8;
        }
        let y = dequantize(GgmlType::Q8_K, &b, 256).unwrap();
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * (j as f32 - 128.0));
        }
    }

    #[test]
    fn q4_0_by_hand() {
        // d = 2.0 (f16 0x4000); nibbles 0..15 → (q - 8) * 2.
        let mut b = [0u8; 18];
        b[1] = 0x40;
        for j in 0..16 {
            b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 2.0);
        }
    }

    #[test]
    fn length_and_type_errors() {
        let e = dequantize(GgmlType::Q8_0, &[0u8; 33], 32).unwrap_err();
        assert!(
            matches!(
                e,
                GgufError::DataLength {
                    expected: 34,
                    got: 33,
                    ..
                }
            ),
            "{e}"
        );
        let e = dequantize(GgmlType::Q4_K, &[0u8; 144], 255).unwrap_err();
        assert!(
            matches!(
                e,
                GgufError::BlockMismatch {
                    len: 255,
                    block_size: 256,
                    ..
                }
            ),
            "{e}"
        );
        let e = dequantize(GgmlType::Q8_1, &[0u8; 36], 32).unwrap_err();
        assert!(matches!(e, GgufError::UnsupportedType { .. }), "{e}");
        let e = dequantize(GgmlType::from_u32(16), &[], 0).unwrap_err();
        assert!(e.to_string().contains("IQ2_XXS"), "{e}");
        let e = dequantize_into(GgmlType::F32, &[0u8; 8], &mut [0.0; 3]).unwrap_err();
        assert!(matches!(e, GgufError::DataLength { .. }), "{e}");
        assert!(dequantize(GgmlType::Q6_K, &[], 0).unwrap().is_empty());
    }

    #[test]
    fn type_table() {
        for id in 0..64u32 {
            let ty = GgmlType::from_u32(id);
            assert_eq!(ty.id(), id);
            if ty.can_dequantize() {
                assert!(ty.block_size() > 0 && ty.type_size() > 0);
            }
        }
        assert_eq!(GgmlType::from_u32(3), GgmlType::Q4_1);
        assert_eq!(GgmlType::Q4_1.name(), "Q4_1");
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
    }

    /// 28M-element Q8_0 tensor; the time limit only means something in release builds.
    #[test]
    fn q8_0_speed() {
        let n_blocks = 28 * 1024 * 1024 / 32;
        let mut bytes = vec![0u8; n_blocks * 34];
        for (i, blk) in bytes.chunks_exact_mut(34).enumerate() {
            blk[0] = (i % 251) as u8;
            blk[1] = 0x2c; // small positive f16 scale
            for (j, q) in blk[2..].iter_mut().enumerate() {
                *q = (i + j) as u8;
            }
        }
        let t = std::time::Instant::now();
        let y = dequantize(GgmlType::Q8_0, &bytes, n_blocks * 32).unwrap();
        let dt = t.elapsed();
        assert_eq!(y.len(), n_blocks * 32);
        assert!(y.iter().all(|v| v.is_finite()));
        if !cfg!(debug_assertions) {
            assert!(dt.as_secs_f64() < 1.0, "Q8_0 dequantization took {dt:?}");
        }
    }
}
