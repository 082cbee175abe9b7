//! A GGUF v3 writer: metadata key/values and tensors of any ggml type, given as
//! `(name, type, dims, bytes)`. It knows nothing of models; `shrink-export` maps the IR onto it,
//! and a quantizing exporter adds packed tensors through the same [`GgufWriter::add_tensor`].
//! A tensor's bytes may be given as pieces borrowed from others (rows of stacked or reordered
//! tensors), written one after another: nothing is assembled in memory before the file.
//!
//! Layout (little-endian): `GGUF`, version 3, tensor count (u64), key/value count (u64); the
//! key/values; one info per tensor (name, dim count, dims fastest first, ggml type id, offset
//! into the data section); zero padding to the alignment; the tensor data, each tensor starting
//! at a multiple of the alignment and padded to one.

use std::borrow::Cow;
use std::io::{self, Write};

use super::{GgmlType, MetaValue};

/// GGUF's default alignment (written files do not set `general.alignment`).
pub const ALIGNMENT: u64 = 32;
const VERSION: u32 = 3;
const MAX_DIMS: usize = 4;

/// One tensor to write.
#[derive(Clone, Debug)]
pub struct GgufTensor<'a> {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml order: `dims[0]` is the row length (fastest varying), the reverse of the IR shape.
    pub dims: Vec<u64>,
    /// The bytes, as pieces written in order.
    pub pieces: Vec<Cow<'a, [u8]>>,
}

impl GgufTensor<'_> {
    /// Bytes of data (without padding).
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Key/values and tensors of a GGUF file, in the order they will be written.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensor<'a>>,
}

/// The GGUF value type id of a metadata value.
fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// The element type id of an array. An empty array keeps no element type once read, so one is
/// chosen from the key: `i32` for `…token_type`, `f32` for `…scores`, string otherwise.
fn elem_type(key: &str, items: &[MetaValue]) -> Result<u32, String> {
    let Some(first) = items.first() else {
        return Ok(if key.ends_with("token_type") {
            5
        } else if key.ends_with("scores") {
            6
        } else {
            8
        });
    };
    let t = type_id(first);
    if let Some(i) = items.iter().position(|x| type_id(x) != t) {
        return Err(format!(
            "array mixes {} (element 0) and {} (element {i})",
            first.type_name(),
            items[i].type_name()
        ));
    }
    for (i, x) in items.iter().enumerate() {
        if let MetaValue::Array(inner) = x {
            elem_type(key, inner).map_err(|e| format!("element {i}: {e}"))?;
        }
    }
    Ok(t)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes of a value without its type id.
fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // Checked in add_metadata.
            let t = elem_type(key, items).unwrap_or(8);
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(out, key, x);
            }
        }
    }
}

fn pad_len(n: u64) -> u64 {
    n.next_multiple_of(ALIGNMENT) - n
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a key/value; fails on a duplicate key or a mixed-type array.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> Result<(), String> {
        let key = key.into();
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(format!("metadata key '{key}' is set twice"));
        }
        if let MetaValue::Array(items) = &value {
            elem_type(&key, items).map_err(|e| format!("metadata key '{key}': {e}"))?;
        }
        self.metadata.push((key, value));
        Ok(())
    }

    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[GgufTensor<'a>] {
        &self.tensors
    }

    /// Appends a tensor of any ggml type whose bytes are already in that type's layout (for a
    /// block type, `dims[0]` must be a multiple of the block size and the bytes whole blocks).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        data: Cow<'a, [u8]>,
    ) -> Result<(), String> {
        self.add_tensor_pieces(name, ggml_type, dims, vec![data])
    }

    /// As [`GgufWriter::add_tensor`], the bytes given as pieces concatenated when written.
    pub fn add_tensor_pieces(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        pieces: Vec<Cow<'a, [u8]>>,
    ) -> Result<(), String> {
        let name = name.into();
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!("tensor '{name}' is added twice"));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(format!(
                "tensor '{name}': dims {dims:?} must be 1 to {MAX_DIMS} positive sizes"
            ));
        }
        let block = ggml_type.block_size() as u64;
        if block == 0 {
            return Err(format!(
                "tensor '{name}': ggml type {ggml_type} has no known layout"
            ));
        }
        if !dims[0].is_multiple_of(block) {
            return Err(format!(
                "tensor '{name}': row length {} is not a multiple of the {ggml_type} block size {block}",
                dims[0]
            ));
        }
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor '{name}': dims {dims:?} overflow"))?;
        let want = numel / block * ggml_type.type_size() as u64;
        let t = GgufTensor {
            name,
            ggml_type,
            dims,
            pieces,
        };
        if t.len() != want {
            return Err(format!(
                "tensor '{}': {} bytes of data, but {ggml_type} {:?} takes {want}",
                t.name,
                t.len(),
                t.dims
            ));
        }
        self.tensors.push(t);
        Ok(())
    }

    /// Header, key/values and tensor infos, padded to the alignment: everything before the data.
    fn head(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, k, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let n = t.len();
            offset += n + pad_len(n);
        }
        let pad = pad_len(out.len() as u64) as usize;
        out.resize(out.len() + pad, 0);
        out
    }

    /// Writes the whole file; returns the bytes written.
    pub fn write_to<W: Write>(&self, mut w: W) -> io::Result<u64> {
        let head = self.head();
        w.write_all(&head)?;
        let mut total = head.len() as u64;
        let zeros = [0u8; ALIGNMENT as usize];
        for t in &self.tensors {
            for p in &t.pieces {
                w.write_all(p)?;
            }
            let n = t.len();
            let pad = pad_len(n);
            w.write_all(&zeros[..pad as usize])?;
            total += n + pad;
        }
        w.flush()?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn reader_reads_back_what_the_writer_wrote() {
        let dir =
            std::env::temp_dir().join(format!("shrink-formats-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = GgufWriter::new();
        let meta = [
            ("general.architecture", MetaValue::String("llama".into())),
            ("a.u8", MetaValue::U8(7)),
            ("a.i8", MetaValue::I8(-7)),
            ("a.u16", MetaValue::U16(700)),
            ("a.i16", MetaValue::I16(-700)),
            ("a.u32", MetaValue::U32(70000)),
            ("a.i32", MetaValue::I32(-70000)),
            ("a.f32", MetaValue::F32(1e-5)),
            ("a.bool", MetaValue::Bool(true)),
            ("a.u64", MetaValue::U64(1 << 40)),
            ("a.i64", MetaValue::I64(-(1 << 40))),
            ("a.f64", MetaValue::F64(0.1)),
            (
                "a.strs",
                MetaValue::Array(vec![
                    MetaValue::String("x y".into()),
                    MetaValue::String("é".into()),
                ]),
            ),
            (
                "a.nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
                    MetaValue::Array(vec![]),
                ]),
            ),
            ("a.empty", MetaValue::Array(vec![])),
        ];
        for (k, v) in &meta {
            w.add_metadata(*k, v.clone()).unwrap();
        }
        let a: Vec<u8> = (0..3 * 5 * 4).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..7 * 2).map(|i| (i * 3) as u8).collect();
        w.add_tensor("a", GgmlType::F32, vec![5, 3], Cow::Borrowed(&a))
            .unwrap();
        w.add_tensor("b", GgmlType::F16, vec![7], Cow::Borrowed(&b))
            .unwrap();
        // A block type: two Q8_0 blocks (34 bytes each) for one row of 64.
        let q = vec![0u8; 68];
        w.add_tensor("q", GgmlType::Q8_0, vec![64], Cow::Borrowed(&q))
            .unwrap();
        // Pieces borrowed from another tensor's rows, in another order.
        let pieces = vec![Cow::Borrowed(&a[20..40]), Cow::Borrowed(&a[..20])];
        w.add_tensor_pieces("p", GgmlType::F32, vec![5, 2], pieces)
            .unwrap();
        assert!(w
            .add_tensor_pieces(
                "p2",
                GgmlType::F32,
                vec![5, 2],
                vec![Cow::Borrowed(&a[..20])]
            )
            .unwrap_err()
            .contains("20 bytes of data"));
        assert!(w
            .add_tensor("q2", GgmlType::Q8_0, vec![48], Cow::Borrowed(&q))
            .unwrap_err()
            .contains("block size"));
        assert!(w
            .add_tensor("a", GgmlType::F32, vec![1], Cow::Borrowed(&a[..4]))
            .unwrap_err()
            .contains("twice"));
        assert!(w
            .add_tensor("c", GgmlType::F32, vec![2], Cow::Borrowed(&a[..4]))
            .unwrap_err()
            .contains("bytes"));
        assert!(w
            .add_metadata(
                "mixed",
                MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)])
            )
            .unwrap_err()
            .contains("mixes"));
        let path = dir.join("t.gguf");
        let n = w
            .write_to(std::io::BufWriter::new(
                std::fs::File::create(&path).unwrap(),
            ))
            .unwrap();
        assert_eq!(n, std::fs::metadata(&path).unwrap().len());
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 32);
        assert_eq!(f.metadata.len(), meta.len());
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.data_offset() % 32, 0);
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "q", "p"]);
        assert_eq!(
            f.tensor_data(f.tensor("p").unwrap()),
            [&a[20..40], &a[..20]].concat()
        );
        assert_eq!(f.tensor_data(f.tensor("a").unwrap()), &a[..]);
        assert_eq!(f.tensor("a").unwrap().dims, vec![5, 3]);
        assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &b[..]);
        assert_eq!(f.tensor("q").unwrap().ggml_type, GgmlType::Q8_0);
        assert_eq!(f.tensor_data(f.tensor("q").unwrap()), &q[..]);
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
