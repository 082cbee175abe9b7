//! The weight store: parameter data beside the graph, owned or memory-mapped from the file it
//! was loaded from.

use std::collections::BTreeMap;
use std::sync::Arc;

use half::{bf16, f16};

use crate::types::{DType, ParamType};

/// Bytes of one tensor: owned, or a range of a memory-mapped file.
#[derive(Clone, Debug)]
enum Bytes {
    Owned(Vec<u8>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

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
            bytes: Bytes::Owned(bytes),
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
            bytes: Bytes::Owned(bytes),
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

    /// The values as f32 (exact for every float dtype; quantized data dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes();
        if let Some(q) = self.ty.quant {
            return q.dequantize(b, &self.ty.shape);
        }
        match self.ty.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
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

/// Parameter data by name.
#[derive(Clone, Debug, Default)]
pub struct WeightStore {
    tensors: BTreeMap<String, TensorData>,
}

impl WeightStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, data: TensorData) {
        self.tensors.insert(name.into(), data);
    }

    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<TensorData> {
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
}
