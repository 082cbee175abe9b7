//! Quantized parameter formats: the schemes, their round-to-nearest rules, packing and
//! dequantization. `docs/quantization.md` is the specification; the goldens in
//! `fixtures/quant/` check it against ggml (gguf-py) and bitsandbytes.
//!
//! Groups and blocks run along the last (input) dimension, so every row of a `[out, in]` matrix
//! packs and unpacks on its own: the runtime dequantizes any range of rows, and calibrated
//! methods (GPTQ) choose codes column by column through [`Packer`].

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use half::f16;

/// How a parameter is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantScheme {
    /// ggml Q8_0: blocks of 32, f16 scale, int8 codes.
    Q8_0,
    /// ggml Q4_0: blocks of 32, f16 scale, codes 0..15 around 8.
    Q4_0,
    /// ggml Q4_1: blocks of 32, f16 scale and minimum.
    Q4_1,
    /// Integer grid of `bits` (2..=8) with an f16 scale per group of `group` input columns (per
    /// row when `None`); asymmetric groups add a u8 zero-point.
    Int {
        bits: u8,
        group: Option<u32>,
        symmetric: bool,
    },
    /// NormalFloat4 (bitsandbytes): f32 absmax per block; `double_quant` stores the absmax values
    /// as 8-bit codes in blocks of 256.
    Nf4 { block: u32, double_quant: bool },
}

/// The 16 values of NF4 (QLoRA, Dettmers et al. 2023), as bitsandbytes defines them.
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Block of absmax values quantized together by NF4's double quantization.
pub const DQ_BLOCK: usize = 256;

impl QuantScheme {
    /// Elements sharing one set of group parameters (one row for per-row schemes: `None`).
    pub fn group(self) -> Option<usize> {
        match self {
            QuantScheme::Q8_0 | QuantScheme::Q4_0 | QuantScheme::Q4_1 => Some(32),
            QuantScheme::Int { group, .. } => group.map(|g| g as usize),
            QuantScheme::Nf4 { block, .. } => Some(block as usize),
        }
    }

    /// Bits of one code.
    pub fn bits(self) -> u32 {
        match self {
            QuantScheme::Q8_0 => 8,
            QuantScheme::Q4_0 | QuantScheme::Q4_1 | QuantScheme::Nf4 { .. } => 4,
            QuantScheme::Int { bits, .. } => bits as u32,
        }
    }

    /// Codes are `0..levels()`.
    pub fn levels(self) -> u32 {
        1 << self.bits()
    }

    /// Whether GGUF has a tensor type with exactly this layout.
    pub fn is_ggml(self) -> bool {
        matches!(
            self,
            QuantScheme::Q8_0 | QuantScheme::Q4_0 | QuantScheme::Q4_1
        )
    }

    /// Checks that a tensor of `shape` can take this scheme: a matrix whose input dimension is a
    /// multiple of the group.
    pub fn check_shape(self, shape: &[usize]) -> Result<(), String> {
        let [_, cols] = shape else {
            return Err(format!(
                "{self} quantizes matrices; this parameter has shape {shape:?}"
            ));
        };
        if let Some(g) = self.group() {
            if cols % g != 0 {
                return Err(format!(
                    "{self} needs the input dimension to be a multiple of {g}; it is {cols}"
                ));
            }
        }
        Ok(())
    }

    /// Groups per row.
    fn groups(self, cols: usize) -> usize {
        self.group().map_or(1, |g| cols / g)
    }

    /// Bytes of one packed row of codes (ggml formats: the whole block structs).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            QuantScheme::Q8_0 => cols / 32 * 34,
            QuantScheme::Q4_0 => cols / 32 * 18,
            QuantScheme::Q4_1 => cols / 32 * 20,
            QuantScheme::Int { bits, .. } => (cols * bits as usize).div_ceil(8),
            QuantScheme::Nf4 { .. } => cols / 2,
        }
    }

    /// Bytes the packed tensor takes; an error when the shape cannot take the scheme.
    pub fn packed_size(self, shape: &[usize]) -> Result<usize, String> {
        self.check_shape(shape)?;
        let (rows, cols) = (shape[0], shape[1]);
        let groups = rows * self.groups(cols);
        let codes = rows * self.row_bytes(cols);
        Ok(match self {
            QuantScheme::Q8_0 | QuantScheme::Q4_0 | QuantScheme::Q4_1 => codes,
            QuantScheme::Int { symmetric, .. } => {
                codes + groups * 2 + if symmetric { 0 } else { groups }
            }
            QuantScheme::Nf4 {
                double_quant: false,
                ..
            } => codes + groups * 4,
            QuantScheme::Nf4 {
                double_quant: true, ..
            } => codes + groups + groups.div_ceil(DQ_BLOCK) * 4 + 4,
        })
    }

    /// Round-to-nearest parameters of one group, by the scheme's reference rule.
    pub fn fit(self, xs: &[f32]) -> GroupParams {
        let amax = xs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        match self {
            QuantScheme::Q8_0 => {
                let d = amax / 127.0;
                GroupParams::with_inv(f16_round(d), if d != 0.0 { 1.0 / d } else { 0.0 })
            }
            QuantScheme::Q4_0 => {
                let mut max = 0.0f32;
                let mut m = 0.0f32;
                for &x in xs {
                    if m < x.abs() {
                        m = x.abs();
                        max = x;
                    }
                }
                let d = max / -8.0;
                GroupParams::with_inv(f16_round(d), if d != 0.0 { 1.0 / d } else { 0.0 })
            }
            QuantScheme::Q4_1 => {
                let min = xs.iter().copied().fold(f32::INFINITY, f32::min);
                let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                GroupParams {
                    scale: f16_round(d),
                    inv: if d != 0.0 { 1.0 / d } else { 0.0 },
                    min: f16_round(min),
                    exact_min: min,
                }
            }
            QuantScheme::Int {
                bits,
                symmetric: true,
                ..
            } => {
                let s = f16_round(amax / ((1u32 << (bits - 1)) - 1) as f32);
                GroupParams::with_inv(s, if s != 0.0 { 1.0 / s } else { 0.0 })
            }
            QuantScheme::Int {
                bits,
                symmetric: false,
                ..
            } => {
                let lo = xs.iter().copied().fold(0.0f32, f32::min);
                let hi = xs.iter().copied().fold(0.0f32, f32::max);
                let maxq = ((1u32 << bits) - 1) as f32;
                let s = if hi == lo {
                    1.0
                } else {
                    f16_round((hi - lo) / maxq)
                };
                let s = if s == 0.0 { 1.0 } else { s };
                let z = round_half_away(-lo / s).clamp(0.0, maxq);
                GroupParams {
                    scale: s,
                    inv: 1.0 / s,
                    min: z,
                    exact_min: z,
                }
            }
            QuantScheme::Nf4 { .. } => GroupParams::with_inv(amax, 1.0 / amax),
        }
    }

    /// Group parameters chosen to minimise the `importance`-weighted squared rounding error
    /// of `xs` (importance: the mean squared input of each column, as llama.cpp's importance
    /// matrix; or GPTQ's Hessian diagonal). Candidates: the round-to-nearest range shrunk by
    /// up to half (GPTQ's `mse` search), for Q4_0 also with the extreme mapped to +7 instead
    /// of −8; for the symmetric schemes the best one's scale is then refit by weighted least
    /// squares for its codes. Parameters are as stored (see [`QuantScheme::stored`]).
    pub fn fit_weighted(self, xs: &[f32], importance: &[f32]) -> GroupParams {
        let err = |p: &GroupParams| -> f64 {
            xs.iter()
                .zip(importance)
                .map(|(x, w)| {
                    let d = x - self.value(self.code(*x, p), p);
                    *w as f64 * (d as f64) * (d as f64)
                })
                .sum()
        };
        let mut best = self.stored(self.fit(xs));
        let mut best_err = err(&best);
        let flips: &[f32] = if self == QuantScheme::Q4_0 {
            &[1.0, -8.0 / 7.0]
        } else {
            &[1.0]
        };
        let mut scaled = vec![0.0f32; xs.len()];
        for &flip in flips {
            for k in 0..=10 {
                let f = flip * (1.0 - k as f32 * 0.05);
                scaled.iter_mut().zip(xs).for_each(|(s, x)| *s = x * f);
                let p = self.stored(self.fit(&scaled));
                let e = err(&p);
                if e < best_err {
                    (best, best_err) = (p, e);
                }
            }
        }
        if let Some(unit) = self.unit_scale(&best) {
            // Weighted least squares for the scale, keeping the codes.
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (x, w) in xs.iter().zip(importance) {
                let u = self.value(self.code(*x, &best), &unit) as f64;
                num += *w as f64 * *x as f64 * u;
                den += *w as f64 * u * u;
            }
            if den > 0.0 {
                let p = self.with_scale((num / den) as f32);
                let e = err(&p);
                if e < best_err {
                    best = p;
                }
            }
        }
        best
    }

    /// For schemes whose values are `u(code)·scale`, the parameters with scale 1.
    pub fn unit_scale(self, p: &GroupParams) -> Option<GroupParams> {
        match self {
            QuantScheme::Q8_0
            | QuantScheme::Q4_0
            | QuantScheme::Nf4 { .. }
            | QuantScheme::Int {
                symmetric: true, ..
            } => Some(GroupParams {
                scale: 1.0,
                inv: 1.0,
                ..*p
            }),
            _ => None,
        }
    }

    /// Stored parameters of a symmetric scheme with scale `s` (f16-rounded where stored so).
    pub fn with_scale(self, s: f32) -> GroupParams {
        let s = match self {
            QuantScheme::Nf4 { .. } => s,
            _ => f16_round(s),
        };
        GroupParams::with_inv(s, if s != 0.0 { 1.0 / s } else { 0.0 })
    }

    /// Parameters as stored, rounded the way the packed form keeps them, with codes then chosen
    /// against the stored values (what GPTQ wants: its error feedback sees the real grid).
    pub fn stored(self, p: GroupParams) -> GroupParams {
        let inv = if p.scale != 0.0 { 1.0 / p.scale } else { 0.0 };
        GroupParams {
            inv,
            exact_min: p.min,
            ..p
        }
    }

    /// The code of `x` in a group with parameters `p`.
    pub fn code(self, x: f32, p: &GroupParams) -> u8 {
        match self {
            QuantScheme::Q8_0 => round_half_away(x * p.inv).clamp(-128.0, 127.0) as i8 as u8,
            QuantScheme::Q4_0 => ((x * p.inv + 8.5) as i8).clamp(0, 15) as u8,
            QuantScheme::Q4_1 => (((x - p.exact_min) * p.inv + 0.5) as i8).clamp(0, 15) as u8,
            QuantScheme::Int {
                bits,
                symmetric: true,
                ..
            } => {
                let half = (1u32 << (bits - 1)) as f32;
                (round_half_away(x * p.inv).clamp(-half, half - 1.0) + half) as u8
            }
            QuantScheme::Int { bits, .. } => {
                let maxq = ((1u32 << bits) - 1) as f32;
                (round_half_away(x * p.inv) + p.min).clamp(0.0, maxq) as u8
            }
            QuantScheme::Nf4 { .. } => {
                let v = if p.scale != 0.0 { x / p.scale } else { 0.0 };
                nearest(&NF4_CODEBOOK, v) as u8
            }
        }
    }

    /// The value code `q` stands for in a group with (stored) parameters `p`, computed as the
    /// reference dequantizer computes it.
    pub fn value(self, q: u8, p: &GroupParams) -> f32 {
        match self {
            QuantScheme::Q8_0 => (q as i8) as f32 * p.scale,
            QuantScheme::Q4_0 => (q as i32 - 8) as f32 * p.scale,
            QuantScheme::Q4_1 => q as f32 * p.scale + p.min,
            QuantScheme::Int {
                bits,
                symmetric: true,
                ..
            } => (q as i32 - (1i32 << (bits - 1))) as f32 * p.scale,
            QuantScheme::Int { .. } => (q as f32 - p.min) * p.scale,
            QuantScheme::Nf4 { .. } => NF4_CODEBOOK[q as usize & 15] * p.scale,
        }
    }

    /// Round-to-nearest quantization of a row-major matrix of `shape`.
    pub fn quantize(self, shape: &[usize], values: &[f32]) -> Result<Vec<u8>, String> {
        self.check_shape(shape)?;
        let (rows, cols) = (shape[0], shape[1]);
        if values.len() != rows * cols {
            return Err(format!("{} values do not fill {shape:?}", values.len()));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "element {i} (row {}, column {}) is {}",
                i / cols,
                i % cols,
                values[i]
            ));
        }
        let g = self.group().unwrap_or(cols);
        let mut packer = Packer::new(self, rows, cols);
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            for (gi, xs) in row.chunks(g).enumerate() {
                let p = self.fit(xs);
                packer.set_params(r, gi, p);
                for (j, &x) in xs.iter().enumerate() {
                    packer.set_code(r, gi * g + j, self.code(x, &p));
                }
            }
        }
        Ok(packer.finish())
    }

    /// Dequantizes rows `rows` of a packed `[_, cols]` tensor into `out` (`rows.len() * cols`).
    pub fn dequantize_rows(
        self,
        bytes: &[u8],
        shape: &[usize],
        rows: Range<usize>,
        out: &mut [f32],
    ) {
        let (nrows, cols) = (shape[0], shape[1]);
        debug_assert_eq!(out.len(), rows.len() * cols);
        let rb = self.row_bytes(cols);
        let codes = &bytes[..nrows * rb];
        match self {
            QuantScheme::Q8_0 | QuantScheme::Q4_0 | QuantScheme::Q4_1 => {
                for (k, r) in rows.enumerate() {
                    let row = &codes[r * rb..(r + 1) * rb];
                    let dst = &mut out[k * cols..(k + 1) * cols];
                    dequantize_ggml_row(self, row, dst);
                }
            }
            QuantScheme::Int {
                bits, symmetric, ..
            } => {
                let groups = self.groups(cols);
                let g = cols / groups;
                let scales = &bytes[nrows * rb..nrows * rb + nrows * groups * 2];
                let zeros = &bytes[nrows * rb + nrows * groups * 2..];
                let half = 1i32 << (bits - 1);
                for (k, r) in rows.enumerate() {
                    let row = &codes[r * rb..(r + 1) * rb];
                    let dst = &mut out[k * cols..(k + 1) * cols];
                    unpack_bits(row, bits as u32, dst);
                    for gi in 0..groups {
                        let i = r * groups + gi;
                        let s = f16::from_le_bytes([scales[2 * i], scales[2 * i + 1]]).to_f32();
                        let z = if symmetric {
                            half as f32
                        } else {
                            zeros[i] as f32
                        };
                        for v in &mut dst[gi * g..(gi + 1) * g] {
                            *v = (*v - z) * s;
                        }
                    }
                }
            }
            QuantScheme::Nf4 {
                block,
                double_quant,
            } => {
                let block = block as usize;
                let groups = cols / block;
                let absmax = nf4_absmax(bytes, nrows * rb, nrows * groups, double_quant);
                for (k, r) in rows.enumerate() {
                    let row = &codes[r * rb..(r + 1) * rb];
                    let dst = &mut out[k * cols..(k + 1) * cols];
                    for (j, b) in row.iter().enumerate() {
                        dst[2 * j] = NF4_CODEBOOK[(b >> 4) as usize];
                        dst[2 * j + 1] = NF4_CODEBOOK[(b & 15) as usize];
                    }
                    for gi in 0..groups {
                        let a = absmax(r * groups + gi);
                        for v in &mut dst[gi * block..(gi + 1) * block] {
                            *v *= a;
                        }
                    }
                }
            }
        }
    }

    /// Where each group's scale is stored in the packed bytes of `shape` (row-major over rows
    /// and groups) and how wide it is: for schemes whose values are `level(code) · scale` with
    /// the scale stored as such (q8_0, q4_0, symmetric INT: f16; NF4 without double
    /// quantization: f32); `None` for the others.
    fn scale_slots(self, shape: &[usize]) -> Option<(Vec<usize>, usize)> {
        let (rows, cols) = (*shape.first()?, *shape.get(1)?);
        let groups = rows * self.groups(cols);
        let codes = rows * self.row_bytes(cols);
        match self {
            QuantScheme::Q8_0 | QuantScheme::Q4_0 => {
                let block = self.row_bytes(32);
                Some(((0..groups).map(|i| i * block).collect(), 2))
            }
            QuantScheme::Int {
                symmetric: true, ..
            } => Some(((0..groups).map(|i| codes + 2 * i).collect(), 2)),
            QuantScheme::Nf4 {
                double_quant: false,
                ..
            } => Some(((0..groups).map(|i| codes + 4 * i).collect(), 4)),
            _ => None,
        }
    }

    /// Whether values are `level(code) · scale` with each group's scale stored as such (q8_0,
    /// q4_0, symmetric INT, NF4 without double quantization): the schemes whose scales can be
    /// read, trained and written back alone ([`QuantScheme::scales`], [`QuantScheme::set_scales`]).
    pub fn has_plain_scales(self) -> bool {
        let g = self.group().unwrap_or(1);
        self.scale_slots(&[1, g]).is_some()
    }

    /// Every group's stored scale, row-major `[rows, groups]`; `None` for schemes without a
    /// plain stored scale (see [`QuantScheme::set_scales`]).
    pub fn scales(self, bytes: &[u8], shape: &[usize]) -> Option<Vec<f32>> {
        let (slots, width) = self.scale_slots(shape)?;
        slots
            .iter()
            .map(|&o| {
                let b = bytes.get(o..o + width)?;
                Some(match width {
                    2 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                })
            })
            .collect()
    }

    /// Rewrites every group's scale in packed `bytes` (codes untouched), rounded as stored.
    /// Schemes: q8_0, q4_0, symmetric INT, NF4 without double quantization.
    pub fn set_scales(
        self,
        bytes: &mut [u8],
        shape: &[usize],
        scales: &[f32],
    ) -> Result<(), String> {
        let (slots, width) = self
            .scale_slots(shape)
            .ok_or_else(|| format!("{self} has no plain stored scale per group"))?;
        if scales.len() != slots.len() {
            return Err(format!(
                "{} scales for {} groups",
                scales.len(),
                slots.len()
            ));
        }
        if let Some(bad) = scales.iter().find(|v| !v.is_finite()) {
            return Err(format!("a scale is {bad}"));
        }
        for (&o, &v) in slots.iter().zip(scales) {
            let dst = bytes
                .get_mut(o..o + width)
                .ok_or_else(|| "the packed bytes are shorter than the shape needs".to_string())?;
            match width {
                2 => dst.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
                _ => dst.copy_from_slice(&v.to_le_bytes()),
            }
        }
        Ok(())
    }

    /// The whole tensor as f32.
    pub fn dequantize(self, bytes: &[u8], shape: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; shape.iter().product()];
        self.dequantize_rows(bytes, shape, 0..shape[0], &mut out);
        out
    }
}

/// Absmax of NF4 block `i`, from the plain f32 array or from the double-quantized codes.
fn nf4_absmax(bytes: &[u8], at: usize, n: usize, dq: bool) -> impl Fn(usize) -> f32 + '_ {
    let f32_at =
        move |o: usize| f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    move |i: usize| {
        if dq {
            let codes_end = at + n;
            let offset_at = codes_end + n.div_ceil(DQ_BLOCK) * 4;
            let a2 = f32_at(codes_end + (i / DQ_BLOCK) * 4);
            dynamic_map()[bytes[at + i] as usize] * a2 + f32_at(offset_at)
        } else {
            f32_at(at + 4 * i)
        }
    }
}

fn dequantize_ggml_row(scheme: QuantScheme, row: &[u8], dst: &mut [f32]) {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match scheme {
        QuantScheme::Q8_0 => {
            for (blk, out) in row.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
                let d = half(blk);
                for (o, &q) in out.iter_mut().zip(&blk[2..]) {
                    *o = (q as i8) as f32 * d;
                }
            }
        }
        QuantScheme::Q4_0 => {
            for (blk, out) in row.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
                let d = half(blk);
                for (j, &b) in blk[2..].iter().enumerate() {
                    out[j] = ((b & 15) as i32 - 8) as f32 * d;
                    out[j + 16] = ((b >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        QuantScheme::Q4_1 => {
            for (blk, out) in row.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
                let (d, m) = (half(blk), half(&blk[2..]));
                for (j, &b) in blk[4..].iter().enumerate() {
                    out[j] = (b & 15) as f32 * d + m;
                    out[j + 16] = (b >> 4) as f32 * d + m;
                }
            }
        }
        _ => unreachable!("not a ggml scheme"),
    }
}

/// Writes codes of `bits` each, little-endian bit order, as f32.
fn unpack_bits(row: &[u8], bits: u32, dst: &mut [f32]) {
    match bits {
        8 => dst.iter_mut().zip(row).for_each(|(d, &b)| *d = b as f32),
        4 => {
            for (j, &b) in row.iter().enumerate().take(dst.len().div_ceil(2)) {
                dst[2 * j] = (b & 15) as f32;
                if 2 * j + 1 < dst.len() {
                    dst[2 * j + 1] = (b >> 4) as f32;
                }
            }
        }
        _ => {
            let mask = (1u32 << bits) - 1;
            for (i, d) in dst.iter_mut().enumerate() {
                let bit = i * bits as usize;
                let (byte, shift) = (bit / 8, bit % 8);
                let lo = row[byte] as u32;
                let hi = row.get(byte + 1).copied().unwrap_or(0) as u32;
                *d = (((lo | hi << 8) >> shift) & mask) as f32;
            }
        }
    }
}

/// Per-group parameters: `scale` and `min` as stored (`min`: Q4_1's minimum, or the integer
/// zero-point of asymmetric schemes); `inv` and `exact_min` as the reference rule uses them to
/// choose codes (ggml quantizes with `1/d` of the unrounded `d`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub min: f32,
    pub inv: f32,
    pub exact_min: f32,
}

impl GroupParams {
    fn with_inv(scale: f32, inv: f32) -> Self {
        GroupParams {
            scale,
            min: 0.0,
            inv,
            exact_min: 0.0,
        }
    }
}

/// Builds a packed tensor from group parameters and codes set in any order.
pub struct Packer {
    scheme: QuantScheme,
    rows: usize,
    cols: usize,
    params: Vec<GroupParams>,
    codes: Vec<u8>,
}

impl Packer {
    pub fn new(scheme: QuantScheme, rows: usize, cols: usize) -> Self {
        let groups = rows * scheme.groups(cols);
        Packer {
            scheme,
            rows,
            cols,
            params: vec![GroupParams::with_inv(0.0, 0.0); groups],
            codes: vec![0; rows * cols],
        }
    }

    pub fn set_params(&mut self, row: usize, group: usize, p: GroupParams) {
        let groups = self.scheme.groups(self.cols);
        self.params[row * groups + group] = p;
    }

    pub fn set_code(&mut self, row: usize, col: usize, q: u8) {
        self.codes[row * self.cols + col] = q;
    }

    /// The packed bytes.
    pub fn finish(self) -> Vec<u8> {
        let Packer {
            scheme,
            rows,
            cols,
            params,
            codes,
        } = self;
        let groups = scheme.groups(cols);
        let mut out = Vec::with_capacity(scheme.packed_size(&[rows, cols]).unwrap_or(0));
        let h = |v: f32| f16::from_f32(v).to_le_bytes();
        match scheme {
            QuantScheme::Q8_0 | QuantScheme::Q4_0 | QuantScheme::Q4_1 => {
                for r in 0..rows {
                    for gi in 0..groups {
                        let p = &params[r * groups + gi];
                        let q = &codes[r * cols + gi * 32..r * cols + gi * 32 + 32];
                        out.extend(h(p.scale));
                        match scheme {
                            QuantScheme::Q8_0 => out.extend(q),
                            _ => {
                                if scheme == QuantScheme::Q4_1 {
                                    out.extend(h(p.min));
                                }
                                out.extend((0..16).map(|j| q[j] | q[j + 16] << 4));
                            }
                        }
                    }
                }
            }
            QuantScheme::Int {
                bits, symmetric, ..
            } => {
                let rb = scheme.row_bytes(cols);
                for r in 0..rows {
                    let start = out.len();
                    out.resize(start + rb, 0);
                    let row = &mut out[start..];
                    for (i, &q) in codes[r * cols..(r + 1) * cols].iter().enumerate() {
                        let bit = i * bits as usize;
                        let v = (q as u32) << (bit % 8);
                        row[bit / 8] |= v as u8;
                        if v > 0xff {
                            row[bit / 8 + 1] |= (v >> 8) as u8;
                        }
                    }
                }
                out.extend(params.iter().flat_map(|p| h(p.scale)));
                if !symmetric {
                    out.extend(params.iter().map(|p| p.min as u8));
                }
            }
            QuantScheme::Nf4 { double_quant, .. } => {
                out.extend(codes.chunks_exact(2).map(|q| q[0] << 4 | q[1]));
                let absmax: Vec<f32> = params.iter().map(|p| p.scale).collect();
                if double_quant {
                    let (c, a2, offset) = double_quantize(&absmax);
                    out.extend(c);
                    out.extend(a2.iter().flat_map(|v| v.to_le_bytes()));
                    out.extend(offset.to_le_bytes());
                } else {
                    out.extend(absmax.iter().flat_map(|v| v.to_le_bytes()));
                }
            }
        }
        out
    }
}

/// bitsandbytes' double quantization of absmax values: minus their mean, blockwise 8-bit with
/// the signed dynamic map.
fn double_quantize(absmax: &[f32]) -> (Vec<u8>, Vec<f32>, f32) {
    let offset =
        (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let map = dynamic_map();
    let mut codes = Vec::with_capacity(absmax.len());
    let mut a2 = Vec::new();
    for blk in absmax.chunks(DQ_BLOCK) {
        let m = blk.iter().fold(0.0f32, |m, v| m.max((v - offset).abs()));
        let inv = if m != 0.0 { 1.0 / m } else { 0.0 };
        codes.extend(blk.iter().map(|v| nearest(map, (v - offset) * inv) as u8));
        a2.push(m);
    }
    (codes, a2, offset)
}

/// bitsandbytes' `create_dynamic_map(signed=True)`: 7 decades of mantissas, signed, plus 0 and 1.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..7i32 {
            let items = (1usize << i) + 1;
            // torch.linspace(0.1, 1, items) in f32
            let step = (1.0f32 - 0.1) / (items - 1) as f32;
            let b: Vec<f32> = (0..items)
                .map(|k| {
                    if k < items / 2 {
                        0.1 + step * k as f32
                    } else {
                        1.0 - step * (items - 1 - k) as f32
                    }
                })
                .collect();
            let scale = 10f64.powi(-6 + i) as f32;
            for w in b.windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                data.push(scale * mean);
                data.push(-(scale * mean));
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(f32::total_cmp);
        let mut map = [0.0f32; 256];
        map.copy_from_slice(&data);
        map
    })
}

/// Index of the value of a sorted `table` nearest to `v` (the lower one on ties).
fn nearest(table: &[f32], v: f32) -> usize {
    let i = table.partition_point(|&t| t < v);
    if i == 0 {
        0
    } else if i == table.len() || (v - table[i - 1]) <= (table[i] - v) {
        i - 1
    } else {
        i
    }
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// C's `roundf`: halves away from zero.
pub fn round_half_away(v: f32) -> f32 {
    v.round()
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantScheme::Q8_0 => f.write_str("q8_0"),
            QuantScheme::Q4_0 => f.write_str("q4_0"),
            QuantScheme::Q4_1 => f.write_str("q4_1"),
            QuantScheme::Int {
                bits,
                group,
                symmetric,
            } => {
                write!(f, "int{bits}")?;
                if let Some(g) = group {
                    write!(f, "_g{g}")?;
                }
                if !symmetric {
                    f.write_str("_asym")?;
                }
                Ok(())
            }
            QuantScheme::Nf4 {
                block,
                double_quant,
            } => {
                write!(f, "nf4_b{block}")?;
                if *double_quant {
                    f.write_str("_dq")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for QuantScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown quantization scheme '{s}' (q8_0, q4_0, q4_1, int<bits>[_g<group>][_asym] \
                 with bits 2..=8, nf4_b<block>[_dq])"
            )
        };
        match s {
            "q8_0" => return Ok(QuantScheme::Q8_0),
            "q4_0" => return Ok(QuantScheme::Q4_0),
            "q4_1" => return Ok(QuantScheme::Q4_1),
            _ => {}
        }
        let num = |t: &str| -> Result<u32, String> {
            t.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad)
        };
        if let Some(rest) = s.strip_prefix("nf4_b") {
            let (b, dq) = match rest.strip_suffix("_dq") {
                Some(b) => (b, true),
                None => (rest, false),
            };
            let block = num(b)?;
            if block % 2 != 0 {
                return Err(bad());
            }
            return Ok(QuantScheme::Nf4 {
                block,
                double_quant: dq,
            });
        }
        let rest = s.strip_prefix("int").ok_or_else(bad)?;
        let (rest, symmetric) = match rest.strip_suffix("_asym") {
            Some(r) => (r, false),
            None => (rest, true),
        };
        let (bits, group) = match rest.split_once("_g") {
            Some((b, g)) => (num(b)?, Some(num(g)?)),
            None => (num(rest)?, None),
        };
        if !(2..=8).contains(&bits) {
            return Err(bad());
        }
        Ok(QuantScheme::Int {
            bits: bits as u8,
            group,
            symmetric,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "q8_0",
            "q4_0",
            "q4_1",
            "int8",
            "int4_g64",
            "int4_g128_asym",
            "int6_g32",
            "nf4_b64",
            "nf4_b64_dq",
        ] {
            let q: QuantScheme = s.parse().unwrap();
            assert_eq!(q.to_string(), s);
        }
        for bad in [
            "q5_k", "int9", "int4_g0", "int1_g32", "nf4_b63", "int4_gx", "nf4",
        ] {
            assert!(bad.parse::<QuantScheme>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_shape_checks() {
        let q4: QuantScheme = "q4_0".parse().unwrap();
        assert_eq!(q4.packed_size(&[2, 64]).unwrap(), 2 * 2 * 18);
        assert!(q4
            .packed_size(&[2, 48])
            .unwrap_err()
            .contains("multiple of 32"));
        assert!(q4.packed_size(&[64]).is_err());
        let nf: QuantScheme = "nf4_b64_dq".parse().unwrap();
        // 2·640 values: 640 code bytes, 20 absmax codes, one absmax2, the offset
        assert_eq!(nf.packed_size(&[2, 640]).unwrap(), 640 + 20 + 4 + 4);
        let i3: QuantScheme = "int3_g32_asym".parse().unwrap();
        assert_eq!(i3.packed_size(&[1, 64]).unwrap(), 24 + 2 * 2 + 2);
    }

    /// Scales read back as stored; rewriting them scales every value of their group and leaves
    /// the codes alone.
    #[test]
    fn scales_read_and_rewrite_in_place() {
        let (rows, cols) = (2, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        for name in ["q8_0", "q4_0", "int4_g64", "int8", "nf4_b64"] {
            let scheme: QuantScheme = name.parse().expect("scheme");
            assert!(scheme.has_plain_scales(), "{name}");
            let shape = [rows, cols];
            let mut packed = scheme.quantize(&shape, &w).expect("quantize");
            let before = scheme.dequantize(&packed, &shape);
            let scales = scheme.scales(&packed, &shape).expect("scales");
            let groups = scales.len() / rows;
            let g = cols / groups;
            let doubled: Vec<f32> = scales.iter().map(|s| s * 2.0).collect();
            scheme
                .set_scales(&mut packed, &shape, &doubled)
                .expect("set");
            let after = scheme.dequantize(&packed, &shape);
            for (i, (a, b)) in after.iter().zip(&before).enumerate() {
                let k = (i / cols) * groups + (i % cols) / g;
                assert_eq!(*a, *b * 2.0, "{name}: value {i} (group {k})");
            }
        }
        for name in ["q4_1", "int4_g64_asym", "nf4_b64_dq"] {
            let scheme: QuantScheme = name.parse().expect("scheme");
            assert!(!scheme.has_plain_scales(), "{name}");
        }
        let q41: QuantScheme = "q4_1".parse().expect("scheme");
        assert!(q41.scales(&[0; 40], &[1, 64]).is_none());
        assert!(q41.set_scales(&mut [0; 40], &[1, 64], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn every_scheme_round_trips_its_own_grid() {
        let cols = 128;
        let values: Vec<f32> = (0..4 * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
            .collect();
        for s in [
            "q8_0",
            "q4_0",
            "q4_1",
            "int8",
            "int4_g32",
            "int3_g64_asym",
            "int6_g32",
            "nf4_b64",
            "nf4_b64_dq",
        ] {
            let q: QuantScheme = s.parse().unwrap();
            let packed = q.quantize(&[4, cols], &values).unwrap();
            assert_eq!(packed.len(), q.packed_size(&[4, cols]).unwrap(), "{s}");
            let back = q.dequantize(&packed, &[4, cols]);
            // Dequantized values lie on the grid: quantizing them again is lossless.
            let again = q.dequantize(&q.quantize(&[4, cols], &back).unwrap(), &[4, cols]);
            let err: f32 = values
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // A full grid step bounds the error of uniform grids; NF4's widest gap is 0.30.
            let step = match q {
                QuantScheme::Nf4 { .. } => 0.16 * 0.05,
                _ => 0.1 / (q.levels() as f32 - 1.0),
            };
            assert!(
                err <= step * 1.01 + 1e-6,
                "{s}: max error {err} vs step {step}"
            );
            let exact_grid = q.is_ggml()
                || matches!(
                    q,
                    QuantScheme::Int {
                        symmetric: true,
                        ..
                    }
                )
                || q == QuantScheme::Nf4 {
                    block: 64,
                    double_quant: false,
                };
            if exact_grid {
                let drift = back
                    .iter()
                    .zip(&again)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(drift <= 1e-6, "{s}: requantizing moved a value by {drift}");
            }
            // A row range dequantizes to the same values as the whole tensor.
            let mut part = vec![0.0; 2 * cols];
            q.dequantize_rows(&packed, &[4, cols], 1..3, &mut part);
            assert_eq!(&part[..], &back[cols..3 * cols], "{s}");
        }
    }

    #[test]
    fn refuses_non_finite() {
        let mut v = vec![0.5f32; 64];
        v[40] = f32::NAN;
        let e = QuantScheme::Q8_0.quantize(&[2, 32], &v).unwrap_err();
        assert!(e.contains("row 1, column 8"), "{e}");
    }
}
