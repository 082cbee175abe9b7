//! GGUF v2/v3 (little-endian) reader over a memory map.
//!
//! [`GgufFile::open`] validates, and reports with the file path and the byte offset, key or
//! tensor at fault:
//! - the magic `GGUF` and the version (2 or 3);
//! - that no read runs past the end of the file (header, metadata, tensor infos);
//! - every count and length (tensors, metadata entries, strings, arrays) against the bytes left,
//!   before anything is allocated from it;
//! - metadata value types (known ids only, arrays nested at most [`MAX_ARRAY_DEPTH`] deep),
//!   UTF-8 keys, strings and tensor names, no duplicate keys or tensor names;
//! - `general.alignment`: an integer power of two (default 32);
//! - each tensor: at most 4 dims, an element count that fits `i64`, a type this crate can
//!   dequantize, a row length (`ne[0]`) that is a multiple of the type's block size, an offset
//!   that is a multiple of the alignment, a byte range inside the file, and no overlap with any
//!   other tensor's bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::{dequantize, GgmlType, GgufError, MetaValue, TensorInfo};

/// Deepest nesting of arrays inside a metadata value.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

/// An opened, validated GGUF file; tensor data stays in the memory map.
#[derive(Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_offset: u64,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    /// A summary: a real file's metadata holds tens of thousands of tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and validates `path` (see the module docs for what is checked).
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::other("is a directory, not a GGUF file")));
        }
        // SAFETY: the map is read-only; as with any mmap, another process truncating or rewriting
        // the file while it is open is outside what this reader can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let layout = parse(path, &map)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: layout.version,
            alignment: layout.alignment,
            metadata: layout.metadata,
            tensors: layout.tensors,
            data_offset: layout.data_offset,
            map: Arc::new(map),
        })
    }

    /// File offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Raw bytes of a tensor; empty if `info` does not describe a range of this file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        self.tensor_range(info)
            .and_then(|r| self.map.get(r))
            .unwrap_or(&[])
    }

    /// The byte range of a tensor's data in the file (and in [`GgufFile::map`]); `None` if
    /// `info` does not describe a range of this file.
    pub fn tensor_range(&self, info: &TensorInfo) -> Option<std::ops::Range<usize>> {
        let start = self.data_offset.checked_add(info.offset)?;
        let end = start.checked_add(info.n_bytes())?;
        let r = usize::try_from(start).ok()?..usize::try_from(end).ok()?;
        (r.end <= self.map.len()).then_some(r)
    }

    /// The memory map of the whole file, for tensors that keep referring to it.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// All `n_elements` values of a tensor as f32, in ggml order.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_data(info);
        let n = usize::try_from(info.n_elements()).unwrap_or(usize::MAX);
        dequantize(info.ggml_type, bytes, n).map_err(|e| e.in_tensor(&self.path, &info.name))
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn want(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: String) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found,
        }
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T, GgufError> {
        let v = self.want(key)?;
        v.as_int()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, expected, describe(v)))
    }

    /// Any integer value that fits a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.int(key, "a u32")
    }

    /// Any integer value that fits a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.int(key, "a u64")
    }

    /// An `f32` (or an `f64`, narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.want(key)?;
        v.as_f32()
            .ok_or_else(|| self.wrong(key, "an f32", describe(v)))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.want(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong(key, "a string", describe(v)))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.want(key)?;
        v.as_bool()
            .ok_or_else(|| self.wrong(key, "a bool", describe(v)))
    }

    fn array<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        f: impl Fn(&'s MetaValue) -> Option<T>,
    ) -> Result<Vec<T>, GgufError> {
        let v = self.want(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, expected, describe(v)))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                f(item).ok_or_else(|| {
                    self.wrong(key, expected, format!("{} at index {i}", describe(item)))
                })
            })
            .collect()
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.array(key, "an array of strings", MetaValue::as_str)
    }

    /// An array of integers that each fit an `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.array(key, "an array of i32", |v| {
            v.as_int().and_then(|i| i32::try_from(i).ok())
        })
    }

    /// An array of `f32` (or `f64`, narrowed).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.array(key, "an array of f32", MetaValue::as_f32)
    }
}

/// A value's type, and the value itself where it is short.
fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::String(_) => "a string".to_string(),
        MetaValue::Array(a) => format!("an array of {} elements", a.len()),
        MetaValue::F32(x) => format!("f32 {x}"),
        MetaValue::F64(x) => format!("f64 {x}"),
        MetaValue::Bool(b) => format!("bool {b}"),
        other => match other.as_int() {
            Some(i) => format!("{} {i}", other.type_name()),
            None => other.type_name().to_string(),
        },
    }
}

/// What a GGUF file's header and tables say, before it is wrapped with its memory map.
pub(crate) struct Layout {
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
}

/// What the parser is reading, for error messages.
enum Ctx {
    Header(&'static str),
    Key(u64),
    Value(String),
    TensorName(u64),
    Tensor(String),
}

struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
    ctx: Ctx,
}

impl<'a> Parser<'a> {
    fn what(&self) -> String {
        match &self.ctx {
            Ctx::Header(s) => (*s).to_string(),
            Ctx::Key(i) => format!("the key of metadata entry {i}"),
            Ctx::Value(k) => format!("the value of metadata key '{}'", k.escape_debug()),
            Ctx::TensorName(i) => format!("the name of tensor {i}"),
            Ctx::Tensor(t) => format!("the info of tensor '{}'", t.escape_debug()),
        }
    }

    fn key(&self) -> String {
        match &self.ctx {
            Ctx::Value(k) => k.clone(),
            _ => String::new(),
        }
    }

    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            what: self.what(),
            needed,
            left: self.left() as u64,
        }
    }

    fn oversized(&self, offset: usize, item: &str, value: u64) -> GgufError {
        GgufError::Oversized {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            what: format!("{item} in {}", self.what()),
            value,
            left: self.left() as u64,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let buf: &'a [u8] = self.buf;
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| buf.get(self.pos..end))
            .ok_or_else(|| self.truncated(n as u64))?;
        self.pos += n;
        Ok(s)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let buf: &'a [u8] = self.buf;
        let a = buf
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or_else(|| self.truncated(N as u64))?;
        self.pos += N;
        Ok(*a)
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(u8::from_le_bytes(self.bytes()?))
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64()?;
        let n = match usize::try_from(len) {
            Ok(n) if n <= self.left() => n,
            _ => return Err(self.oversized(at, "string length", len)),
        };
        let start = self.pos;
        let raw = self.take(n)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                path: self.path.to_path_buf(),
                offset: start as u64,
                what: self.what(),
            }),
        }
    }

    fn unknown_type(&self, offset: usize, value_type: u32) -> GgufError {
        GgufError::UnknownValueType {
            path: self.path.to_path_buf(),
            key: self.key(),
            offset: offset as u64,
            value_type,
        }
    }

    /// Reads a value of type `ty`, whose id was read at `ty_at`.
    fn value(&mut self, ty: u32, ty_at: usize, depth: usize) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8()?),
            1 => MetaValue::I8(self.u8()? as i8),
            2 => MetaValue::U16(self.u16()?),
            3 => MetaValue::I16(self.u16()? as i16),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(self.u32()? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32()?)),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                let elem_at = self.pos;
                let elem = self.u32()?;
                let min = min_value_size(elem).ok_or_else(|| self.unknown_type(elem_at, elem))?;
                if elem == 9 && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        path: self.path.to_path_buf(),
                        key: self.key(),
                        offset: elem_at as u64,
                        max_depth: MAX_ARRAY_DEPTH,
                    });
                }
                let count_at = self.pos;
                let count = self.u64()?;
                let n = match usize::try_from(count) {
                    Ok(n) if n <= self.left() / min => n,
                    _ => return Err(self.oversized(count_at, "array length", count)),
                };
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, elem_at, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(self.u64()? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.unknown_type(ty_at, other)),
        })
    }
}

/// Fewest bytes a value of this type can take; `None` for unknown types.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Parses and validates everything but the tensor data itself.
pub(crate) fn parse(path: &Path, buf: &[u8]) -> Result<Layout, GgufError> {
    let pb = || path.to_path_buf();
    let mut p = Parser {
        path,
        buf,
        pos: 0,
        ctx: Ctx::Header("the magic"),
    };
    let magic = p.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: pb(),
            found: magic,
        });
    }
    p.ctx = Ctx::Header("the version");
    let version = p.u32()?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::UnsupportedVersion {
            path: pb(),
            version,
        });
    }
    p.ctx = Ctx::Header("the tensor count");
    let n_tensors = p.u64()?;
    p.ctx = Ctx::Header("the metadata count");
    let n_kv = p.u64()?;
    // A tensor info takes at least 24 bytes (empty name, no dims); a metadata entry 13.
    if n_tensors > (p.left() / 24) as u64 {
        return Err(p.oversized(8, "tensor count", n_tensors));
    }
    if n_kv > (p.left() / 13) as u64 {
        return Err(p.oversized(16, "metadata count", n_kv));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        p.ctx = Ctx::Key(i);
        let key_at = p.pos;
        let key = p.string()?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                path: pb(),
                key,
                offset: key_at as u64,
            });
        }
        p.ctx = Ctx::Value(key.clone());
        let ty_at = p.pos;
        let ty = p.u32()?;
        let value = p.value(ty, ty_at, 0)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_int().ok_or_else(|| GgufError::WrongType {
                path: pb(),
                key: ALIGNMENT_KEY.to_string(),
                expected: "an integer",
                found: describe(v),
            })?;
            match u64::try_from(a) {
                Ok(a) if a.is_power_of_two() && a <= 1 << 31 => a,
                _ => {
                    return Err(GgufError::BadAlignment {
                        path: pb(),
                        value: a,
                    })
                }
            }
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        p.ctx = Ctx::TensorName(i);
        let name_at = p.pos;
        let name = p.string()?;
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                path: pb(),
                tensor: name,
                offset: name_at as u64,
            });
        }
        p.ctx = Ctx::Tensor(name.clone());
        let dims_at = p.pos;
        let n_dims = p.u32()?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                path: pb(),
                tensor: name,
                offset: dims_at as u64,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(p.u64()?);
        }
        let fits = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_some_and(|n| n <= i64::MAX as u64);
        if !fits {
            return Err(GgufError::ShapeOverflow {
                path: pb(),
                tensor: name,
                offset: dims_at as u64,
                dims,
            });
        }
        let ggml_type = GgmlType::from_u32(p.u32()?);
        if !ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: Some(pb()),
                tensor: Some(name),
                ggml_type,
            });
        }
        let row = dims.first().copied().unwrap_or(1);
        let bs = ggml_type.block_size() as u64;
        if bs == 0 || !row.is_multiple_of(bs) {
            return Err(GgufError::BlockMismatch {
                path: Some(pb()),
                tensor: Some(name),
                ggml_type,
                what: "row length",
                len: row,
                block_size: ggml_type.block_size(),
            });
        }
        let offset = p.u64()?;
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset {
                path: pb(),
                tensor: name,
                offset,
                alignment,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    // alignment ≤ 2^31 and pos ≤ the file size, so this cannot overflow.
    let data_offset = (p.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes()));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => {
                if end > start {
                    ranges.push((start, end, i));
                }
            }
            _ => {
                return Err(GgufError::OutOfBounds {
                    path: pb(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    ranges.sort_unstable();
    let mut furthest: Option<(u64, u64, usize)> = None;
    for &(start, end, i) in &ranges {
        if let Some((o_start, o_end, o)) = furthest {
            if start < o_end {
                let name = |k: usize| tensors.get(k).map(|t| t.name.clone()).unwrap_or_default();
                return Err(GgufError::Overlap {
                    path: pb(),
                    tensor: name(i),
                    start,
                    end,
                    other: name(o),
                    other_start: o_start,
                    other_end: o_end,
                });
            }
        }
        if furthest.is_none_or(|(_, e, _)| end > e) {
            furthest = Some((start, end, i));
        }
    }

    Ok(Layout {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf-blocks")
    }

    fn tiny_path() -> PathBuf {
        fixtures().join("tiny.gguf")
    }

    fn tiny_bytes() -> Vec<u8> {
        std::fs::read(tiny_path()).unwrap()
    }

    fn tiny_json() -> Value {
        let text = std::fs::read_to_string(fixtures().join("tiny.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The JSON form make_blocks.py writes: `{"type", "value"}`, plus `"elem"` for arrays,
    /// whose elements are plain values unless they are arrays themselves.
    fn to_json(v: &MetaValue) -> Value {
        match v {
            MetaValue::Array(items) => {
                let elem = items.first().map_or("?", MetaValue::type_name);
                let values: Vec<Value> = items
                    .iter()
                    .map(|x| match x {
                        MetaValue::Array(_) => to_json(x),
                        _ => plain(x),
                    })
                    .collect();
                json!({"type": "array", "elem": elem, "value": values})
            }
            _ => json!({"type": v.type_name(), "value": plain(v)}),
        }
    }

    fn plain(v: &MetaValue) -> Value {
        match v {
            MetaValue::F32(x) => json!(f64::from(*x)),
            MetaValue::F64(x) => json!(x),
            MetaValue::Bool(b) => json!(b),
            MetaValue::String(s) => json!(s),
            MetaValue::U64(x) => json!(x),
            MetaValue::Array(_) => to_json(v),
            other => json!(other.as_int().and_then(|i| i64::try_from(i).ok()).unwrap()),
        }
    }

    #[test]
    fn tiny_matches_json() {
        let want = tiny_json();
        let f = GgufFile::open(&tiny_path()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, want["alignment"].as_u64().unwrap());
        assert_eq!(f.data_offset(), want["data_offset"].as_u64().unwrap());

        let meta = want["metadata"].as_object().unwrap();
        let got_keys: Vec<&String> = f.metadata.keys().collect();
        let mut want_keys: Vec<&String> = meta.keys().collect();
        want_keys.sort();
        assert_eq!(got_keys, want_keys);
        for (key, value) in meta {
            assert_eq!(&to_json(f.get(key).unwrap()), value, "metadata key {key}");
        }

        let tensors = want["tensors"].as_array().unwrap();
        assert_eq!(f.tensors.len(), tensors.len());
        for (t, w) in f.tensors.iter().zip(tensors) {
            assert_eq!(t.name, w["name"].as_str().unwrap());
            let dims: Vec<u64> = w["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, dims, "{}", t.name);
            assert_eq!(t.ggml_type.name(), w["type"].as_str().unwrap());
            assert_eq!(t.offset, w["offset"].as_u64().unwrap());
            assert_eq!(t.n_bytes(), w["n_bytes"].as_u64().unwrap());
            assert_eq!(t.n_elements(), w["n_elements"].as_u64().unwrap());
            assert_eq!(f.tensor(&t.name), Some(t));
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes());
            let bits: Vec<u32> = f
                .dequantize(t)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let want_bits: Vec<u32> = w["f32_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(bits, want_bits, "{}", t.name);
        }
        assert!(f.tensor("no.such.tensor").is_none());
    }

    #[test]
    fn typed_getters() {
        let f = GgufFile::open(&tiny_path()).unwrap();
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u32("general.alignment").unwrap(), 64);
        assert_eq!(f.get_u32("test.u8").unwrap(), 200);
        assert_eq!(f.get_u32("test.u16").unwrap(), 60000);
        assert_eq!(f.get_u32("test.u32").unwrap(), 4_000_000_000);
        assert_eq!(f.get_u64("test.u64").unwrap(), (1 << 40) + 5);
        assert_eq!(f.get_u64("test.u8").unwrap(), 200);
        assert_eq!(f.get_f32("test.f32").unwrap(), 1.5);
        assert_eq!(f.get_f32("test.f64").unwrap(), -0.125);
        assert!(f.get_bool("test.bool").unwrap());
        assert_eq!(
            f.get_str("test.string").unwrap(),
            "h\u{e9}llo w\u{f6}rld \u{2713}"
        );
        assert_eq!(
            f.get_str_array("test.str_array").unwrap(),
            ["a", "", "\u{fc}n\u{ef}", "<0x0A>", " \u{120}the"]
        );
        assert_eq!(
            f.get_i32_array("test.i32_array").unwrap(),
            [1, -2, 3, i32::MAX]
        );
        assert_eq!(f.get_i32_array("test.u8_array").unwrap(), [0, 7, 255]);
        assert_eq!(
            f.get_f32_array("test.f32_array").unwrap(),
            [0.5, -1.25, 3.0]
        );

        let name = "tiny.gguf";
        for (err, key) in [
            (f.get_u32("test.i32").unwrap_err(), "test.i32"),
            (f.get_u32("test.u64").unwrap_err(), "test.u64"),
            (f.get_u64("test.i8").unwrap_err(), "test.i8"),
            (f.get_u32("test.string").unwrap_err(), "test.string"),
            (f.get_f32("test.u8").unwrap_err(), "test.u8"),
            (f.get_str("test.str_array").unwrap_err(), "test.str_array"),
            (f.get_bool("test.u8").unwrap_err(), "test.u8"),
            (
                f.get_str_array("test.i32_array").unwrap_err(),
                "test.i32_array",
            ),
            (
                f.get_i32_array("test.str_array").unwrap_err(),
                "test.str_array",
            ),
            (f.get_f32_array("test.nested").unwrap_err(), "test.nested"),
        ] {
            assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(name) && msg.contains(&format!("'{key}'")),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
        let err = f.get_u32("llama.block_count").unwrap_err();
        assert!(matches!(err, GgufError::MissingKey { .. }), "{err}");
        assert!(err.to_string().contains("'llama.block_count'"), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }

    #[test]
    fn foreign_tensor_info_does_not_panic() {
        let f = GgufFile::open(&tiny_path()).unwrap();
        let mut t = f.tensors[0].clone();
        t.name = "ghost".to_string();
        t.offset = u64::MAX - 3;
        assert!(f.tensor_data(&t).is_empty());
        let err = f.dequantize(&t).unwrap_err();
        assert!(matches!(err, GgufError::DataLength { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("tiny.gguf") && msg.contains("'ghost'"),
            "{msg}"
        );
        t.dims = vec![u64::MAX, u64::MAX];
        assert!(f.dequantize(&t).is_err());
        t.ggml_type = GgmlType::Unsupported(16);
        assert!(f
            .dequantize(&t)
            .unwrap_err()
            .to_string()
            .contains("IQ2_XXS"));
    }

    /// End of the last tensor's bytes in tiny.gguf; the padding after it is optional.
    fn tiny_data_end(bytes: &[u8]) -> usize {
        let layout = parse(Path::new("tiny.gguf"), bytes).unwrap();
        layout
            .tensors
            .iter()
            .map(|t| (layout.data_offset + t.offset + t.n_bytes()) as usize)
            .max()
            .unwrap()
    }

    fn infos_end(bytes: &[u8]) -> usize {
        // The data section starts at the first multiple of the alignment after the infos; the
        // infos end somewhere in the alignment-sized window before it.
        let layout = parse(Path::new("tiny.gguf"), bytes).unwrap();
        layout.data_offset as usize - layout.alignment as usize
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = tiny_bytes();
        let data_end = tiny_data_end(&bytes);
        let infos_lower = infos_end(&bytes);
        for cut in 0..=bytes.len() {
            let res = parse(Path::new("cut.gguf"), &bytes[..cut]);
            if cut >= data_end {
                assert!(res.is_ok(), "cut at {cut}: {}", res.err().unwrap());
                continue;
            }
            let err = res.err().unwrap_or_else(|| panic!("cut at {cut} parsed"));
            let msg = err.to_string();
            assert!(msg.starts_with("cut.gguf: "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
            if cut < infos_lower {
                assert!(
                    matches!(
                        err,
                        GgufError::Truncated { .. } | GgufError::Oversized { .. }
                    ),
                    "cut at {cut}: {msg}"
                );
                assert!(msg.contains("at byte"), "{msg}");
            } else if matches!(err, GgufError::OutOfBounds { .. }) {
                assert!(msg.contains("lies past the end of the file"), "{msg}");
            } else {
                assert!(
                    matches!(
                        err,
                        GgufError::Truncated { .. } | GgufError::Oversized { .. }
                    ),
                    "{msg}"
                );
            }
        }
        // A cut inside the metadata names the key being read.
        let at = find(&bytes, b"test.string") + 20;
        let msg = parse(Path::new("cut.gguf"), &bytes[..at])
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("'test.string'"), "{msg}");
        assert!(msg.contains("at byte"), "{msg}");
        // A cut inside the tensor infos names the tensor.
        let at = find(&bytes, b"blk.0.attn_q.weight") + 25;
        let msg = parse(Path::new("cut.gguf"), &bytes[..at])
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("'blk.0.attn_q.weight'"), "{msg}");
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    /// Byte offset of a tensor info's fields in tiny.gguf: (n_dims, dims[0], type, offset).
    fn info_fields(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
        let at = find(bytes, name.as_bytes()) + name.len();
        let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        (at, at + 4, at + 4 + 8 * n_dims, at + 8 + 8 * n_dims)
    }

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> TempFile {
            let unique = format!("shrink-gguf-test-{}-{name}", std::process::id());
            let path = std::env::temp_dir().join(unique);
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn open_err(name: &str, bytes: &[u8]) -> (GgufError, String) {
        let tmp = TempFile::new(name, bytes);
        let err = GgufFile::open(&tmp.0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}: ", tmp.0.display())), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        (err, msg)
    }

    #[test]
    fn corrupt_files_on_disk() {
        let tiny = tiny_bytes();

        let (err, msg) = open_err("truncated.gguf", &tiny[..300]);
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. } | GgufError::Oversized { .. }
            ),
            "{msg}"
        );
        assert!(msg.contains("at byte"), "{msg}");

        let (err, msg) = open_err("empty.gguf", &[]);
        assert!(
            matches!(err, GgufError::Truncated { offset: 0, .. }),
            "{msg}"
        );

        let mut b = tiny.clone();
        b[..4].copy_from_slice(b"GGML");
        let (err, msg) = open_err("magic.gguf", &b);
        assert!(matches!(err, GgufError::BadMagic { .. }), "{msg}");
        assert!(msg.contains("GGML"), "{msg}");

        let mut b = tiny.clone();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        let (err, _) = open_err("v1.gguf", &b);
        assert!(matches!(
            err,
            GgufError::UnsupportedVersion { version: 1, .. }
        ));
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        let (_, msg) = open_err("be.gguf", &b);
        assert!(msg.contains("big-endian"), "{msg}");

        let mut b = tiny.clone();
        b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let (err, msg) = open_err("count.gguf", &b);
        assert!(
            matches!(err, GgufError::Oversized { offset: 8, .. }),
            "{msg}"
        );
        assert!(msg.contains("tensor count"), "{msg}");
        b[8..16].copy_from_slice(&4u64.to_le_bytes());
        b[16..24].copy_from_slice(&1_000_000u64.to_le_bytes());
        let (err, msg) = open_err("kvcount.gguf", &b);
        assert!(
            matches!(err, GgufError::Oversized { offset: 16, .. }),
            "{msg}"
        );

        let name = "blk.0.ffn_down.weight";
        let (_, dim0, ty, off) = info_fields(&tiny, name);
        let quoted = format!("'{name}'");

        let mut b = tiny.clone();
        b[off..off + 8].copy_from_slice(&(64u64 * 1000).to_le_bytes());
        let (err, msg) = open_err("past_eof.gguf", &b);
        assert!(matches!(err, GgufError::OutOfBounds { .. }), "{msg}");
        let eof = format!("lies past the end of the file ({} bytes)", tiny.len());
        assert!(msg.contains(&quoted) && msg.contains(&eof), "{msg}");
        let data_offset = parse(Path::new("t"), &tiny).unwrap().data_offset;
        assert!(
            msg.contains(&format!("[{}..", data_offset + 64_000)),
            "{msg}"
        );

        b[off..off + 8].copy_from_slice(&u64::MAX.wrapping_sub(63).to_le_bytes());
        let (err, msg) = open_err("wrap.gguf", &b);
        assert!(matches!(err, GgufError::OutOfBounds { .. }), "{msg}");

        b[off..off + 8].copy_from_slice(&256u64.to_le_bytes());
        let (err, msg) = open_err("overlap.gguf", &b);
        assert!(matches!(err, GgufError::Overlap { .. }), "{msg}");
        assert!(
            msg.contains(&quoted) && msg.contains("'blk.0.attn_q.weight'"),
            "{msg}"
        );

        b[off..off + 8].copy_from_slice(&321u64.to_le_bytes());
        let (err, msg) = open_err("misaligned.gguf", &b);
        assert!(
            matches!(
                err,
                GgufError::MisalignedOffset {
                    offset: 321,
                    alignment: 64,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains(&quoted), "{msg}");

        let mut b = tiny.clone();
        b[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
        let (err, msg) = open_err("iq.gguf", &b);
        assert!(matches!(err, GgufError::UnsupportedType { .. }), "{msg}");
        assert!(msg.contains(&quoted) && msg.contains("IQ2_XXS"), "{msg}");

        let mut b = tiny.clone();
        b[dim0..dim0 + 8].copy_from_slice(&128u64.to_le_bytes());
        let (err, msg) = open_err("rows.gguf", &b);
        assert!(
            matches!(
                err,
                GgufError::BlockMismatch {
                    len: 128,
                    block_size: 256,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains(&quoted) && msg.contains("Q4_K"), "{msg}");

        let missing = std::env::temp_dir().join("shrink-gguf-test-does-not-exist.gguf");
        let err = GgufFile::open(&missing).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }));
        assert!(err.to_string().contains("does-not-exist.gguf"));
    }

    /// Builds GGUF files by hand for the cases GGUFWriter cannot produce.
    struct Builder(Vec<u8>);

    impl Builder {
        fn new(version: u32, n_tensors: u64, n_kv: u64) -> Builder {
            let mut b = Builder(b"GGUF".to_vec());
            b.u32(version).u64(n_tensors).u64(n_kv);
            b
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &[u8]) -> &mut Self {
            self.u64(s.len() as u64);
            self.0.extend_from_slice(s);
            self
        }
        fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.str(key.as_bytes()).u32(4).u32(v)
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
            self.str(name.as_bytes()).u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty).u64(offset)
        }
        fn pad(&mut self, align: usize) -> &mut Self {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
        fn zeros(&mut self, n: usize) -> &mut Self {
            self.0.resize(self.0.len() + n, 0);
            self
        }
        fn parse(&self) -> Result<Layout, GgufError> {
            parse(Path::new("built.gguf"), &self.0)
        }
        fn err(&self) -> (GgufError, String) {
            let err = self.parse().err().expect("should not parse");
            let msg = err.to_string();
            assert!(msg.starts_with("built.gguf: "), "{msg}");
            (err, msg)
        }
    }

    #[test]
    fn v2_and_edge_layouts_parse() {
        // v2, default alignment, an f32 vector and a zero-element tensor.
        let mut b = Builder::new(2, 2, 1);
        b.kv_u32("general.quantization_version", 2);
        b.tensor("a", &[3], 0, 0)
            .tensor("empty", &[0, 5], 8, 32)
            .pad(32);
        b.0.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64]);
        b.pad(32);
        let l = b.parse().unwrap();
        assert_eq!((l.version, l.alignment), (2, 32));
        assert_eq!(l.tensors[1].n_elements(), 0);
        let at = l.data_offset as usize;
        assert_eq!(
            dequantize(GgmlType::F32, &b.0[at..at + 12], 3).unwrap(),
            [1.0, 2.0, 3.0]
        );

        // No tensors and no padding after the metadata.
        let mut b = Builder::new(3, 0, 1);
        b.kv_u32("x", 1);
        assert!(b.parse().unwrap().tensors.is_empty());

        // A 0-dim tensor is a scalar.
        let mut b = Builder::new(3, 1, 0);
        b.tensor("s", &[], 0, 0).pad(32).zeros(4);
        assert_eq!(b.parse().unwrap().tensors[0].n_elements(), 1);

        // Nested arrays and an empty array.
        let mut b = Builder::new(3, 0, 2);
        b.str(b"n").u32(9).u32(9).u64(2);
        b.u32(5).u64(1).u32(7);
        b.u32(8).u64(1).str(b"s");
        b.str(b"e").u32(9).u32(4).u64(0);
        let l = b.parse().unwrap();
        assert_eq!(
            l.metadata["n"],
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::I32(7)]),
                MetaValue::Array(vec![MetaValue::String("s".into())]),
            ])
        );
        assert_eq!(l.metadata["e"], MetaValue::Array(vec![]));
    }

    #[test]
    fn bad_metadata() {
        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.weird").u32(13).u32(0);
        let (err, msg) = b.err();
        assert!(
            matches!(
                err,
                GgufError::UnknownValueType {
                    value_type: 13,
                    offset: 39,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("'k.weird'"), "{msg}");

        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.arr").u32(9).u32(99).u64(1);
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::UnknownValueType { value_type: 99, .. }),
            "{msg}"
        );

        let mut b = Builder::new(3, 0, 2);
        b.kv_u32("dup", 1).kv_u32("dup", 2);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::DuplicateKey { .. }), "{msg}");
        assert!(msg.contains("'dup'"), "{msg}");

        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.s").u32(8).u64(1 << 40).zeros(16);
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::Oversized { offset: 39, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("string length") && msg.contains("'k.s'"),
            "{msg}"
        );

        let mut b = Builder::new(3, 0, 1);
        b.u64(u64::MAX).zeros(16);
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::Oversized { offset: 24, .. }),
            "{msg}"
        );
        assert!(msg.contains("metadata entry 0"), "{msg}");

        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.a").u32(9).u32(6).u64(1_000_000).zeros(64);
        let (err, msg) = b.err();
        assert!(
            matches!(
                err,
                GgufError::Oversized {
                    value: 1_000_000,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("array length") && msg.contains("'k.a'"),
            "{msg}"
        );

        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.deep").u32(9);
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            b.u32(9).u64(1);
        }
        b.u32(0).u64(0);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{msg}");

        let mut b = Builder::new(3, 0, 1);
        b.str(b"k.utf").u32(8).str(b"ok\xff");
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::InvalidUtf8 { offset: 49, .. }),
            "{msg}"
        );
        assert!(msg.contains("'k.utf'"), "{msg}");

        for (value, ok) in [
            (1u32, true),
            (256, true),
            (0, false),
            (48, false),
            (1 << 31, true),
        ] {
            let mut b = Builder::new(3, 0, 1);
            b.kv_u32("general.alignment", value);
            match b.parse() {
                Ok(l) => assert!(ok && l.alignment == u64::from(value)),
                Err(e) => assert!(!ok && matches!(e, GgufError::BadAlignment { .. }), "{e}"),
            }
        }
        let mut b = Builder::new(3, 0, 1);
        b.str(b"general.alignment").u32(8).str(b"32");
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::WrongType { .. }), "{msg}");
    }

    #[test]
    fn bad_tensor_infos() {
        let mut b = Builder::new(3, 2, 0);
        b.tensor("t", &[32], 0, 0)
            .tensor("t", &[32], 0, 128)
            .pad(32)
            .zeros(256);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::DuplicateTensor { .. }), "{msg}");
        assert!(msg.contains("'t'"), "{msg}");

        let mut b = Builder::new(3, 1, 0);
        b.tensor("t5", &[1, 1, 1, 1, 1], 0, 0).pad(32).zeros(4);
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::TooManyDims { n_dims: 5, .. }),
            "{msg}"
        );

        let mut b = Builder::new(3, 1, 0);
        b.tensor("huge", &[1 << 32, 1 << 32], 0, 0).pad(32);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::ShapeOverflow { .. }), "{msg}");
        assert!(msg.contains("'huge'"), "{msg}");

        let mut b = Builder::new(3, 1, 0);
        b.tensor("big", &[1 << 20, 1 << 20], 0, 0).pad(32).zeros(64);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::OutOfBounds { .. }), "{msg}");

        let mut b = Builder::new(3, 1, 0);
        b.tensor("q81", &[32], 9, 0).pad(32).zeros(36);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::UnsupportedType { .. }), "{msg}");
        assert!(msg.contains("Q8_1") && msg.contains("'q81'"), "{msg}");

        let mut b = Builder::new(3, 1, 0);
        b.tensor("odd", &[33, 2], 8, 0).pad(32).zeros(200);
        let (err, msg) = b.err();
        assert!(
            matches!(err, GgufError::BlockMismatch { len: 33, .. }),
            "{msg}"
        );

        // Overlap with a tensor that is not the one just before it.
        let mut b = Builder::new(3, 3, 0);
        b.tensor("long", &[64], 0, 0)
            .tensor("short", &[8], 0, 32)
            .tensor("inner", &[8], 0, 128);
        b.pad(32).zeros(512);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::Overlap { .. }), "{msg}");
        assert!(msg.contains("'long'"), "{msg}");

        let mut b = Builder::new(3, 1, 0);
        b.tensor("past", &[8], 0, 0);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::OutOfBounds { .. }), "{msg}");
    }

    #[test]
    fn messages_stay_on_one_line() {
        let mut b = Builder::new(3, 1, 0);
        b.tensor("evil\nname", &[8], 0, 1 << 20).pad(32).zeros(32);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::OutOfBounds { .. }), "{msg}");
        assert!(
            !msg.contains('\n') && msg.contains("'evil\\nname'"),
            "{msg}"
        );

        let mut b = Builder::new(3, 0, 1);
        b.str(b"bad\nkey").u32(8).u64(99);
        let (err, msg) = b.err();
        assert!(matches!(err, GgufError::Oversized { .. }), "{msg}");
        assert!(!msg.contains('\n') && msg.contains("'bad\\nkey'"), "{msg}");

        let err = GgufFile::open(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }), "{err}");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    /// The real model (design.md), fetched into `models/` by scripts/fetch-smollm2.sh.
    #[test]
    #[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
    fn smollm2_reads() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
        assert_eq!(
            f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            49152
        );
        assert_eq!(f.tensors.len(), 272);
        let q = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(
            (q.dims.as_slice(), q.ggml_type),
            (&[576u64, 576][..], GgmlType::Q4_1)
        );
        let v = f.dequantize(q).unwrap();
        assert_eq!(v.len(), 576 * 576);
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0));
        assert!(format!("{f:?}").len() < 300);
    }

    /// Random byte mutations of tiny.gguf's header and tables never panic, and whatever parses
    /// has every tensor inside the file and dequantizable. `SHRINK_GGUF_FUZZ_ITERS` sets the
    /// number of tries (default 4000).
    #[test]
    fn mutations_never_panic() {
        let tiny = tiny_bytes();
        let header_len = parse(Path::new("t"), &tiny).unwrap().data_offset as usize;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        let iters = std::env::var("SHRINK_GGUF_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000);
        for _ in 0..iters {
            let mut b = tiny.clone();
            for _ in 0..1 + rand() % 4 {
                let at = (rand() % header_len as u64) as usize;
                b[at] = match rand() % 4 {
                    0 => rand() as u8,
                    1 => b[at] ^ (1 << (rand() % 8)),
                    2 => 0xFF,
                    _ => 0,
                };
            }
            let cut = if rand() % 4 == 0 {
                (rand() % b.len() as u64) as usize
            } else {
                b.len()
            };
            let b = &b[..cut];
            match parse(Path::new("m.gguf"), b) {
                Ok(l) => {
                    parsed += 1;
                    for t in &l.tensors {
                        let start = (l.data_offset + t.offset) as usize;
                        let data = &b[start..start + t.n_bytes() as usize];
                        dequantize(t.ggml_type, data, t.n_elements() as usize).unwrap();
                    }
                }
                Err(e) => assert!(e.to_string().starts_with("m.gguf: ")),
            }
        }
        assert!(parsed > 0);
    }
}
