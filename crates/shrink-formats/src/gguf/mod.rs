//! GGUF (v2/v3, little-endian): reader, writer and ggml dequantizers.
//!
//! [`GgufFile::open`] memory-maps a file and validates its layout; [`dequantize`] turns the raw
//! bytes of a tensor of any common ggml type into `f32`, bit-exact with ggml's reference code;
//! [`GgufWriter`] writes v3 files.

mod dequant;
mod reader;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};

pub use dequant::{dequantize, dequantize_into};
pub use reader::{GgufFile, MAX_ARRAY_DEPTH};
pub use writer::{GgufTensor, GgufWriter, ALIGNMENT};

/// A ggml tensor element type, by ggml's numeric id.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// Known to ggml but only used for activations; it has no dequantizer.
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// Any other id (IQ*, I8…I64, F64, TQ*, MXFP4, …); this crate cannot dequantize it.
    Unsupported(u32),
}

impl GgmlType {
    /// Maps ggml's numeric type id; ids without a variant become [`GgmlType::Unsupported`].
    pub fn from_u32(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Unsupported(other),
        }
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Unsupported(id) => id,
        }
    }

    /// ggml's name, e.g. `"Q4_1"`; `"unknown"` for ids ggml does not define.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
            GgmlType::Unsupported(id) => match id {
                4 => "Q4_2",
                5 => "Q4_3",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                31 => "Q4_0_4_4",
                32 => "Q4_0_4_8",
                33 => "Q4_0_8_8",
                34 => "TQ1_0",
                35 => "TQ2_0",
                36 => "IQ4_NL_4_4",
                37 => "IQ4_NL_4_8",
                38 => "IQ4_NL_8_8",
                39 => "MXFP4",
                40 => "NVFP4",
                41 => "Q1_0",
                _ => "unknown",
            },
        }
    }

    /// Elements per block (1 for the float types); 0 for `Unsupported`.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => 256,
            GgmlType::Unsupported(_) => 0,
        }
    }

    /// Bytes per block, as ggml's `type_size`; 0 for `Unsupported`.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::Q8_K => 292,
            GgmlType::Unsupported(_) => 0,
        }
    }

    /// Whether [`dequantize`] handles this type (everything but `Q8_1` and `Unsupported`).
    pub fn can_dequantize(self) -> bool {
        !matches!(self, GgmlType::Q8_1 | GgmlType::Unsupported(_))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Unsupported(id) => write!(f, "{} (type id {id})", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Short type name used in error messages: `"u32"`, `"string"`, `"array"`, ….
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer variant, widened.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// `F32`, or `F64` narrowed to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the file's tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is `ne[0]`, the row length (fastest-varying).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the dims (saturating; the reader rejects shapes that overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Bytes of data: blocks × type size (saturating; 0 for an unsupported type).
    pub fn n_bytes(&self) -> u64 {
        let bs = self.ggml_type.block_size() as u64;
        if bs == 0 {
            return 0;
        }
        (self.n_elements() / bs).saturating_mul(self.ggml_type.type_size() as u64)
    }
}

fn prefix(path: &Option<PathBuf>, tensor: &Option<String>) -> String {
    match (path, tensor) {
        (Some(p), Some(t)) => format!("{}: tensor '{}'", p.display(), t.escape_debug()),
        (Some(p), None) => format!("{}: tensor data", p.display()),
        (None, Some(t)) => format!("tensor '{}'", t.escape_debug()),
        (None, None) => "tensor data".to_string(),
    }
}

fn big_endian_hint(version: &u32) -> &'static str {
    if matches!(version.swap_bytes(), 2 | 3) {
        " (a big-endian file?)"
    } else {
        ""
    }
}

/// Everything that can go wrong reading a GGUF file or dequantizing tensor data.
///
/// Display is one line, starting with the file path where it is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file (magic \"{}\" at byte 0, expected \"GGUF\")", .path.display(), .found.escape_ascii())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{}: unsupported GGUF version {version} at byte 4 (supported: 2, 3){}", .path.display(), big_endian_hint(.version))]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: file truncated at byte {offset} reading {what} (needs {needed} bytes, {left} left)", .path.display())]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: String,
        needed: u64,
        left: u64,
    },
    #[error("{}: {what} at byte {offset} is {value}, more than the {left} bytes left in the file can hold", .path.display())]
    Oversized {
        path: PathBuf,
        offset: u64,
        what: String,
        value: u64,
        left: u64,
    },
    #[error("{}: {what} at byte {offset} is not valid UTF-8", .path.display())]
    InvalidUtf8 {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{}: metadata key '{}' has unknown value type {value_type} at byte {offset}", .path.display(), .key.escape_debug())]
    UnknownValueType {
        path: PathBuf,
        key: String,
        offset: u64,
        value_type: u32,
    },
    #[error("{}: metadata key '{}' nests arrays more than {max_depth} deep at byte {offset}", .path.display(), .key.escape_debug())]
    NestingTooDeep {
        path: PathBuf,
        key: String,
        offset: u64,
        max_depth: usize,
    },
    #[error("{}: duplicate metadata key '{}' at byte {offset}", .path.display(), .key.escape_debug())]
    DuplicateKey {
        path: PathBuf,
        key: String,
        offset: u64,
    },
    #[error("{}: general.alignment = {value} is not a power of two in 1..=2^31", .path.display())]
    BadAlignment { path: PathBuf, value: i128 },
    #[error("{}: duplicate tensor name '{}' at byte {offset}", .path.display(), .tensor.escape_debug())]
    DuplicateTensor {
        path: PathBuf,
        tensor: String,
        offset: u64,
    },
    #[error("{}: tensor '{}' has {n_dims} dimensions at byte {offset} (at most {max} allowed)", .path.display(), .tensor.escape_debug())]
    TooManyDims {
        path: PathBuf,
        tensor: String,
        offset: u64,
        n_dims: u32,
        max: u32,
    },
    #[error("{}: tensor '{}' has shape {dims:?} (at byte {offset}) whose element count overflows", .path.display(), .tensor.escape_debug())]
    ShapeOverflow {
        path: PathBuf,
        tensor: String,
        offset: u64,
        dims: Vec<u64>,
    },
    #[error("{} has ggml type {ggml_type}, which cannot be dequantized", prefix(.path, .tensor))]
    UnsupportedType {
        path: Option<PathBuf>,
        tensor: Option<String>,
        ggml_type: GgmlType,
    },
    #[error("{}: {what} {len} is not a multiple of the {ggml_type} block size {block_size}", prefix(.path, .tensor))]
    BlockMismatch {
        path: Option<PathBuf>,
        tensor: Option<String>,
        ggml_type: GgmlType,
        /// `"row length"` (from a file's `ne[0]`) or `"element count"`.
        what: &'static str,
        len: u64,
        block_size: usize,
    },
    #[error("{}: {ggml_type} data for {n_elements} elements needs {expected} bytes, got {got}", prefix(.path, .tensor))]
    DataLength {
        path: Option<PathBuf>,
        tensor: Option<String>,
        ggml_type: GgmlType,
        n_elements: u64,
        expected: u64,
        got: u64,
    },
    #[error("{}: tensor '{}' offset {offset} is not a multiple of the alignment {alignment}", .path.display(), .tensor.escape_debug())]
    MisalignedOffset {
        path: PathBuf,
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("{}: tensor '{}' data [{start}..{end}) lies past the end of the file ({file_len} bytes)", .path.display(), .tensor.escape_debug())]
    OutOfBounds {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("{}: tensor '{}' data [{start}..{end}) overlaps tensor '{}' data [{other_start}..{other_end})", .path.display(), .tensor.escape_debug(), .other.escape_debug())]
    Overlap {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },
    #[error("{}: metadata key '{}' is missing", .path.display(), .key.escape_debug())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key '{}' should be {expected}, found {found}", .path.display(), .key.escape_debug())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// A metadata key that may be absent: `Ok(None)` when it is, the error when it is present with
/// the wrong type (which must not fall back to a default silently).
pub trait OptionalKey<T> {
    fn optional(self) -> Result<Option<T>, GgufError>;
}

impl<T> OptionalKey<T> for Result<T, GgufError> {
    fn optional(self) -> Result<Option<T>, GgufError> {
        match self {
            Err(GgufError::MissingKey { .. }) => Ok(None),
            r => r.map(Some),
        }
    }
}

impl GgufError {
    /// Fills in the file path and tensor name of a dequantization error that lacks them.
    pub(crate) fn in_tensor(mut self, file: &Path, name: &str) -> GgufError {
        match &mut self {
            GgufError::UnsupportedType { path, tensor, .. }
            | GgufError::BlockMismatch { path, tensor, .. }
            | GgufError::DataLength { path, tensor, .. } => {
                path.get_or_insert_with(|| file.to_path_buf());
                tensor.get_or_insert_with(|| name.to_string());
            }
            _ => {}
        }
        self
    }
}
