//! The file formats shrink reads and writes, knowing nothing of architectures: GGUF (reader,
//! writer, ggml types and their one dequantizer), the safetensors conventions of Hugging Face
//! and of shrink's quantized format, and tokenizers (`tokenizer.json` or GGUF metadata, both
//! ways). Front ends (`shrink-import`) and back ends (`shrink-export`) are built on this crate
//! and on `shrink-arch`, never on each other.

pub mod gguf;
pub mod safetensors;
pub mod tokenizer;

pub use tokenizer::{Tokenizer, TokenizerError};
