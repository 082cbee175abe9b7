//! The weight store: parameter data beside the graph, owned or memory-mapped from the file it
//! was loaded from.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};

use crate::types::{DType, ParamType};
use crate::QuantScheme;

/// Bytes of one tensor: owned, or a range of a memory-mapped file; shared, never copied, by
/// clones (an engine holds its stored matrices beside the model's store).
#[derive(Clone, Debug)]
enum Bytes {
    Owned(Arc<Vec<u8>>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

/// Index of the first ggml block of `BLOCK` bytes whose leading `HALVES` f16 values (scale,
/// minimum) are not finite. A branch-free pass first (most files have none), then the search.
fn first_bad_block<const BLOCK: usize, const HALVES: usize>(b: &[u8]) -> Option<usize> {
    let bad = |blk: &[u8]| {
        let mut any = false;
        for h in 0..HALVES {
            any |= u16::from_le_bytes([blk[2 * h], blk[2 * h + 1]]) & 0x7c00 == 0x7c00;
        }
        any
    };
    let mut any = false;
    for blk in b.chunks_exact(BLOCK) {
        any |= bad(blk);
    }
    if any {
        b.chunks_exact(BLOCK).position(bad)
    } else {
        None
    }
}

/// Index of the first `lane`-byte little-endian element of `b` whose `exponent` bits are all
/// set. Eight bytes at a time (a lane of all-ones exponent is a zero lane of
/// `(x & m) ^ m`, found by the carry trick), the exact element found by a rescan.
fn first_all_ones(b: &[u8], lane: usize, exponent: u64) -> Option<usize> {
    let bits = 8 * lane as u32;
    let lanes = 8 / lane;
    let (mut m, mut low, mut high) = (0u64, 0u64, 0u64);
    for k in 0..lanes as u32 {
        m |= exponent << (k * bits);
        low |= 1 << (k * bits);
        high |= 1 << (k * bits + bits - 1);
    }
    let scalar = |chunk: &[u8], first: usize| {
        chunk
            .chunks_exact(lane)
            .position(|c| {
                let mut v = 0u64;
                for (i, byte) in c.iter().enumerate() {
                    v |= u64::from(*byte) << (8 * i);
                }
                v & exponent == exponent
            })
            .map(|i| first + i)
    };
    const BLOCK: usize = 64;
    let whole = b.len() / BLOCK * BLOCK;
    for (k, block) in b[..whole].chunks_exact(BLOCK).enumerate() {
        let mut hit = 0u64;
        for w in block.chunks_exact(8) {
            let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            // Lanes of y stay below their top bit (the exponent masks exclude the sign), so a
            // borrow reaches a top bit only from a zero lane.
            let y = (x & m) ^ m;
            hit |= y.wrapping_sub(low) & !y & high;
        }
        if hit != 0 {
            if let Some(i) = scalar(block, k * BLOCK / lane) {
                return Some(i);
            }
        }
    }
    scalar(&b[whole..], whole / lane)
}

/// f32 values dequantized at a time by [`TensorData::first_non_finite`].
const FINITE_CHUNK: usize = 1 << 20;

/// Dense data of one parameter, little-endian, row-major in the declared shape.
#[derive(Clone, Debug)]
pub struct TensorData {
    pub ty: ParamType,
    bytes: Bytes,
}

impl TensorData {
    /// Wraps bytes already in `ty.dtype`; fails when the length does not match the shape.
    pub fn from_bytes(ty: ParamType, bytes: Vec<u8>) -> Result<Self, String> {
        check_len(&ty, bytes.len())?;
        Ok(TensorData {
            ty,
            bytes: Bytes::Owned(Arc::new(bytes)),
        })
    }

    /// Refers to `len` bytes at `start` of a mapped file without copying.
    pub fn mapped(
        ty: ParamType,
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    ) -> Result<Self, String> {
        check_len(&ty, len)?;
        if start.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(format!(
                "range [{start}..{}) lies outside the mapped file ({} bytes)",
                start.saturating_add(len),
                map.len()
            ));
        }
        Ok(TensorData {
            ty,
            bytes: Bytes::Mapped { map, start, len },
        })
    }

    /// Stores f32 values as `dtype` (rounding to nearest for f16/bf16).
    pub fn from_f32(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<Self, String> {
        let ty = ParamType::new(dtype, shape);
        if ty.numel() != values.len() {
            return Err(format!("{} values do not fill shape {ty}", values.len()));
        }
        let bytes = match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::I64 => return Err("cannot store floats as i64".into()),
        };
        Ok(TensorData {
            ty,
            bytes: Bytes::Owned(Arc::new(bytes)),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }

    /// Bytes the parameter takes in storage.
    pub fn nbytes(&self) -> usize {
        self.bytes().len()
    }

    /// Wraps a packed quantized tensor; fails when the length does not match the scheme.
    pub fn quantized(
        scheme: crate::QuantScheme,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<Self, String> {
        Self::from_bytes(ParamType::quantized(scheme, shape), bytes)
    }

    /// Index of the first NaN or infinity, in row-major element order (quantized data as it
    /// dequantizes). One pass over the bytes: floats by their exponent bits, quantized tensors
    /// dequantized a bounded chunk of rows at a time.
    pub fn first_non_finite(&self) -> Option<usize> {
        let b = self.bytes();
        if let Some(q) = self.ty.quant {
            // ggml's blocks of 32: every value is `d·q (+ m)` with f16 `d` (and `m`) and small
            // integer codes, finite exactly when those halves are.
            let ggml = match q {
                QuantScheme::Q8_0 => Some(first_bad_block::<34, 1>(b)),
                QuantScheme::Q4_0 => Some(first_bad_block::<18, 1>(b)),
                QuantScheme::Q4_1 => Some(first_bad_block::<20, 2>(b)),
                _ => None,
            };
            if let Some(block) = ggml {
                return block.map(|i| i * 32);
            }
            let (rows, cols) = match self.ty.shape.as_slice() {
                [r, c] => (*r, *c),
                _ => {
                    return q
                        .dequantize(b, &self.ty.shape)
                        .iter()
                        .position(|v| !v.is_finite())
                }
            };
            let step = (FINITE_CHUNK / cols.max(1)).max(1);
            let mut buf = vec![0.0f32; step.min(rows) * cols];
            for start in (0..rows).step_by(step) {
                let end = (start + step).min(rows);
                let out = &mut buf[..(end - start) * cols];
                q.dequantize_rows(b, &self.ty.shape, start..end, out);
                if let Some(i) = out.iter().position(|v| !v.is_finite()) {
                    return Some(start * cols + i);
                }
            }
            return None;
        }
        // A float is non-finite exactly when its exponent bits are all ones.
        let (lane, exponent) = match self.ty.dtype {
            DType::F32 => (4, 0x7f80_0000u64),
            DType::F16 => (2, 0x7c00),
            DType::BF16 => (2, 0x7f80),
            DType::I64 => return None,
        };
        first_all_ones(b, lane, exponent)
    }

    /// Rows `rows` of a `[rows, cols]` parameter as f32 into `out` (`rows.len() · cols` values):
    /// f32 copied, f16/bf16 widened, quantized data dequantized. A block of a large matrix at a
    /// time, so that its f32 form never exists whole.
    pub fn rows_f32_into(&self, rows: Range<usize>, out: &mut [f32]) {
        let b = self.bytes();
        let cols = self.ty.shape.get(1).copied().unwrap_or(1);
        debug_assert_eq!(out.len(), rows.len() * cols);
        if let Some(q) = self.ty.quant {
            return q.dequantize_rows(b, &self.ty.shape, rows, out);
        }
        let lane = self.ty.dtype.size();
        widen(
            self.ty.dtype,
            &b[rows.start * cols * lane..rows.end * cols * lane],
            out,
        );
    }

    /// The values as f32 (exact for every float dtype; quantized data dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes();
        if let Some(q) = self.ty.quant {
            return q.dequantize(b, &self.ty.shape);
        }
        let mut out = vec![0.0; b.len() / self.ty.dtype.size()];
        widen(self.ty.dtype, b, &mut out);
        out
    }
}

/// Little-endian elements of `dtype` in `b` as f32 into `out` (one per element).
fn widen(dtype: DType, b: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        // bf16 is the top half of an f32.
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        DType::I64 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
                *o = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
    }
}

fn check_len(ty: &ParamType, len: usize) -> Result<(), String> {
    let want = ty.storage_bytes()?;
    if want != len {
        return Err(format!("{len} bytes do not hold {ty} ({want} bytes)"));
    }
    Ok(())
}

/// Which entries of a `[rows, cols]` parameter were pruned (set bits), one bit per entry,
/// row-major. Kept beside the data so later passes (and reports) know the sparsity pattern even
/// once the values are rewritten (requantized, fine-tuned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparsityMask {
    rows: usize,
    cols: usize,
    bits: Vec<u64>,
}

impl SparsityMask {
    /// A mask with nothing pruned.
    pub fn new(rows: usize, cols: usize) -> Self {
        SparsityMask {
            rows,
            cols,
            bits: vec![0; (rows * cols).div_ceil(64)],
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Whether entry `(r, c)` is pruned (false outside the shape).
    pub fn get(&self, r: usize, c: usize) -> bool {
        r < self.rows && c < self.cols && self.bit(r * self.cols + c)
    }

    /// Marks entry `(r, c)` pruned or not; entries outside the shape are ignored.
    pub fn set(&mut self, r: usize, c: usize, pruned: bool) {
        if r < self.rows && c < self.cols {
            let i = r * self.cols + c;
            if pruned {
                self.bits[i / 64] |= 1 << (i % 64);
            } else {
                self.bits[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    /// Whether the entry at row-major index `i` is pruned.
    pub fn bit(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Pruned entries.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Pruned entries as a fraction of all (0 for an empty shape).
    pub fn sparsity(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            self.count() as f64 / n as f64
        }
    }

    /// Zeroes the pruned entries of row-major `values` (`[rows, cols]`).
    pub fn apply(&self, values: &mut [f32]) {
        for (i, v) in values.iter_mut().enumerate() {
            if self.bit(i) {
                *v = 0.0;
            }
        }
    }
}

/// Parameter data by name, and the sparsity masks of pruned parameters.
#[derive(Clone, Debug, Default)]
pub struct WeightStore {
    tensors: BTreeMap<String, TensorData>,
    masks: BTreeMap<String, SparsityMask>,
}

impl WeightStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` under `name`. A mask of the name survives only when the shape stays the
    /// same (new values of a pruned matrix keep its pattern; a resized one loses it).
    pub fn insert(&mut self, name: impl Into<String>, data: TensorData) {
        let name = name.into();
        if self
            .masks
            .get(&name)
            .is_some_and(|m| data.ty.shape[..] != m.shape()[..])
        {
            self.masks.remove(&name);
        }
        self.tensors.insert(name, data);
    }

    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    /// Removes a parameter's data and its mask.
    pub fn remove(&mut self, name: &str) -> Option<TensorData> {
        self.masks.remove(name);
        self.tensors.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TensorData)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Records which entries of the stored matrix `name` were pruned; fails when there is no
    /// such matrix or the mask's shape differs from it.
    pub fn set_mask(&mut self, name: &str, mask: SparsityMask) -> Result<(), String> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("'{name}' has no data to attach a sparsity mask to"))?;
        if t.ty.shape[..] != mask.shape()[..] {
            return Err(format!(
                "'{name}' is {}, its sparsity mask [{}, {}]",
                t.ty, mask.rows, mask.cols
            ));
        }
        self.masks.insert(name.to_string(), mask);
        Ok(())
    }

    pub fn mask(&self, name: &str) -> Option<&SparsityMask> {
        self.masks.get(name)
    }

    pub fn remove_mask(&mut self, name: &str) -> Option<SparsityMask> {
        self.masks.remove(name)
    }

    /// Masks by parameter name, in name order.
    pub fn masks(&self) -> impl Iterator<Item = (&String, &SparsityMask)> {
        self.masks.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_reads_ggml_block_scales() {
        let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        for (scheme, block, halves) in [
            (QuantScheme::Q8_0, 34, 1),
            (QuantScheme::Q4_0, 18, 1),
            (QuantScheme::Q4_1, 20, 2),
        ] {
            let packed = scheme.quantize(&[4, 64], &w).unwrap();
            let t = TensorData::quantized(scheme, vec![4, 64], packed.clone()).unwrap();
            assert_eq!(t.first_non_finite(), None, "{scheme}");
            for h in 0..halves {
                // Block 5 (row 2, columns 32..64): its scale or minimum made NaN.
                let mut bad = packed.clone();
                bad[5 * block + 2 * h..5 * block + 2 * h + 2]
                    .copy_from_slice(&0x7e00u16.to_le_bytes());
                let t = TensorData::quantized(scheme, vec![4, 64], bad).unwrap();
                assert_eq!(t.first_non_finite(), Some(160), "{scheme} half {h}");
                assert!(
                    !t.to_f32()[160..192].iter().all(|v| v.is_finite()),
                    "{scheme}"
                );
            }
        }
    }

    #[test]
    fn first_non_finite_finds_every_position_in_every_dtype() {
        // Each dtype's largest finite values, negatives and subnormals around the planted one.
        for (dtype, background) in [
            (DType::F32, [f32::MAX, -f32::MAX, 1e-40, -0.0, 1.0, 3.3e38]),
            (DType::BF16, [3.38e38, -3.38e38, 1e-40, -0.0, 1.0, 2.0e38]),
            (DType::F16, [65504.0, -65504.0, 6e-8, -0.0, 1.0, 60000.0]),
        ] {
            for n in [1usize, 7, 33, 100] {
                let base: Vec<f32> = (0..n).map(|i| background[i % background.len()]).collect();
                let clean = TensorData::from_f32(dtype, vec![n], &base).unwrap();
                assert!(clean.to_f32().iter().all(|v| v.is_finite()), "{dtype:?}");
                assert_eq!(clean.first_non_finite(), None, "{dtype:?} n={n}");
                for at in 0..n {
                    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                        let mut v = base.clone();
                        v[at] = bad;
                        let t = TensorData::from_f32(dtype, vec![n], &v).unwrap();
                        assert_eq!(t.first_non_finite(), Some(at), "{dtype:?} n={n} at={at}");
                    }
                }
            }
        }
    }

    #[test]
    fn masks_follow_their_parameter() {
        let mut m = SparsityMask::new(3, 70);
        m.set(0, 0, true);
        m.set(2, 69, true);
        m.set(1, 5, true);
        m.set(1, 5, false);
        m.set(3, 0, true); // outside: ignored
        assert_eq!(m.count(), 2);
        assert!(m.get(2, 69) && !m.get(1, 5) && !m.get(3, 0));
        assert!((m.sparsity() - 2.0 / 210.0).abs() < 1e-12);
        let mut v = vec![1.0f32; 210];
        m.apply(&mut v);
        assert_eq!(v.iter().filter(|x| **x == 0.0).count(), 2);
        assert_eq!((v[0], v[209]), (0.0, 0.0));

        let mut s = WeightStore::new();
        let data = |shape: Vec<usize>| {
            let n = shape.iter().product();
            TensorData::from_f32(DType::F32, shape, &vec![0.0; n]).unwrap()
        };
        assert!(s.set_mask("w", m.clone()).is_err(), "no data yet");
        s.insert("w", data(vec![3, 70]));
        assert!(
            s.set_mask("w", SparsityMask::new(70, 3)).is_err(),
            "wrong shape"
        );
        s.set_mask("w", m.clone()).unwrap();
        // A clone keeps it; new values of the same shape keep it; a new shape drops it.
        assert_eq!(s.clone().mask("w"), Some(&m));
        s.insert("w", data(vec![3, 70]));
        assert_eq!(s.mask("w"), Some(&m));
        s.insert("w", data(vec![3, 64]));
        assert_eq!(s.mask("w"), None);
        s.insert("w", data(vec![3, 70]));
        s.set_mask("w", m).unwrap();
        s.remove("w");
        assert_eq!(s.masks().count(), 0);
    }
}
