//! The architectures shrink knows, each defined once, one module per family: a normalised
//! config, the graph it builds (parameters named as in Hugging Face checkpoints), the config
//! read back from a graph, and the family's GGUF tensor names. Front ends (`shrink-import`) and
//! back ends (`shrink-export`) only translate their files' configs and names into these.

mod builder;
pub mod gpt2;
mod graph_read;
pub mod limits;
pub mod llama;

pub use gpt2::{gpt2_is_conv1d, Gpt2Config};
pub use graph_read::same_structure;
pub use llama::{
    gguf_name, permute_rows, rope_permuted_heads, unpermute_rows, LlamaConfig, LlamaLayer,
};

#[cfg(test)]
mod tests;
