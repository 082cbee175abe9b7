//! Element types and shapes of IR values and parameters.

use std::fmt;

use crate::quant::QuantScheme;

/// Element type of a value or a stored parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Token ids.
    I64,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I64];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The name a Hugging Face `config.json` gives it (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
        }
    }

    pub fn from_torch_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.torch_name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a value: the symbolic batch and sequence sizes, or a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Batch,
    Seq,
    Fixed(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("b"),
            Dim::Seq => f.write_str("s"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Type of an IR value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl ValueType {
    /// `[b, s]` token ids.
    pub fn tokens() -> Self {
        ValueType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        }
    }

    /// `f32[b, s, features]`, the type of every hidden state.
    pub fn hidden(features: usize) -> Self {
        ValueType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(features)],
        }
    }

    /// The fixed size of the last axis, if it has one.
    pub fn features(&self) -> Option<usize> {
        match self.shape.last() {
            Some(Dim::Fixed(n)) => Some(*n),
            _ => None,
        }
    }
}

/// `dtype[d0, d1, …]`, the form of value and parameter types alike.
fn write_typed<T: fmt::Display, D: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    dtype: T,
    dims: &[D],
) -> fmt::Result {
    write!(f, "{dtype}[")?;
    for (i, d) in dims.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{d}")?;
    }
    f.write_str("]")
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_typed(f, self.dtype, &self.shape)
    }
}

/// Declared type of a parameter (a weight): storage element type and fixed shape.
/// The shape uses the IR's conventions: linear weights are `[out, in]`, embeddings `[vocab, dim]`.
/// A quantized parameter has a `quant` scheme; its `dtype` is then f32, the type it computes in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParamType {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub quant: Option<QuantScheme>,
}

impl ParamType {
    pub fn new(dtype: DType, shape: Vec<usize>) -> Self {
        ParamType {
            dtype,
            shape,
            quant: None,
        }
    }

    pub fn quantized(scheme: QuantScheme, shape: Vec<usize>) -> Self {
        ParamType {
            dtype: DType::F32,
            shape,
            quant: Some(scheme),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the stored data: packed size for quantized parameters.
    pub fn storage_bytes(&self) -> Result<usize, String> {
        match self.quant {
            Some(q) => q.packed_size(&self.shape),
            None => Ok(self.numel() * self.dtype.size()),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quant {
            Some(q) => write_typed(f, q, &self.shape),
            None => write_typed(f, self.dtype, &self.shape),
        }
    }
}
