//! Conventions of safetensors checkpoints shared by the reader and the writer.
//!
//! shrink's format for quantized models is a Hugging Face directory whose quantized parameters
//! are 1-D `U8` tensors of their packed bytes (`docs/quantization.md`), listed in the
//! safetensors `__metadata__` under [`QUANT_METADATA_KEY`] as a JSON object
//! `{name: {"scheme": "q4_0", "shape": [out, in]}}`.

use shrink_ir::DType;

/// The safetensors `__metadata__` key listing the quantized tensors of shrink's format.
pub const QUANT_METADATA_KEY: &str = "shrink.quant";

/// `quantization_config.quant_method` of shrink's format in `config.json`.
pub const QUANT_METHOD: &str = "shrink";

/// The IR dtype of a safetensors float dtype name.
pub fn dtype_of(st: &str) -> Option<DType> {
    match st {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

/// Transposes a row-major `[rows, cols]` matrix of `elem`-byte elements.
pub fn transpose_bytes(bytes: &[u8], rows: usize, cols: usize, elem: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        for c in 0..cols {
            let src = (r * cols + c) * elem;
            let dst = (c * rows + r) * elem;
            out[dst..dst + elem].copy_from_slice(&bytes[src..src + elem]);
        }
    }
    out
}
