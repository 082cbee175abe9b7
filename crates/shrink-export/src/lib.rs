//! Back ends of shrink: the inverse of `shrink-import`, built like it on `shrink-formats` (the
//! file formats) and `shrink-arch` (what each architecture is), never on the front end.
//!
//! - [`hf::write`]: a Hugging Face directory (`config.json`, `model.safetensors`,
//!   `tokenizer.json`, `tokenizer_config.json`) that transformers and `shrink_import::load` read
//! - [`gguf::write`]: a GGUF v3 file of the `llama` architecture (`deci` when layers differ in
//!   size) that llama.cpp and `shrink_import::load` read; `shrink_formats::gguf::GgufWriter` is the
//!   format writer underneath, taking tensors as `(name, ggml type, dims, bytes)`
//! - [`peft::write_adapter`]: the model's LoRA adapters as a PEFT adapter directory
//!
//! Sizes are read back from the graph by `LlamaConfig::from_graph` / `Gpt2Config::from_graph`
//! (in `shrink-arch`, beside `build`), so a graph that is not the shape its architecture
//! builds is refused with the layer and size at fault. Every output is written under a temporary
//! name beside the target and renamed into place when complete ([`atomic`]).

pub mod atomic;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod peft;

pub use error::{ExportError, Result};

#[cfg(test)]
mod tests;
