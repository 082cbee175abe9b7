//! Front ends of shrink: model files into the graph IR, with their tokenizer.
//!
//! - [`hf`]: Hugging Face directories (LLaMA family, GPT-2), safetensors memory-mapped
//! - [`gguf`]: the GGUF v3 reader and ggml dequantizers; [`gguf_import`] maps `llama` files
//! - [`arch`]: each architecture defined once, as a config and the graph it builds
//! - [`peft`]: PEFT LoRA adapter directories applied onto a loaded model
//! - [`limits`]: the bounds on every size a file declares, checked before allocation
//! - [`tokenizer`]: `tokenizer.json`, or byte-level BPE rebuilt from GGUF metadata
//!
//! Every model that leaves this crate has passed the verifier.

pub mod arch;
pub mod error;
pub mod gguf;
pub mod gguf_import;
pub mod hf;
pub mod limits;
pub mod peft;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use error::{ImportError, Result};
pub use tokenizer::Tokenizer;

use shrink_ir::Model;

/// Where a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    HuggingFace,
    Gguf,
}

/// A model loaded from a file or directory, verified, with its tokenizer.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    /// `None` for a Hugging Face directory without `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    pub format: SourceFormat,
    pub path: PathBuf,
}

/// Loads a GGUF file, a Hugging Face model directory, or a `config.json` alone (random
/// weights, see [`hf::load_config_random`]).
pub fn load(path: &Path) -> Result<Loaded> {
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_config = meta.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // A Hugging Face model with the `tokenizer.json` in `dir`, if there is one.
    let hf = |model: Model, dir: &Path| -> Result<Loaded> {
        let tj = dir.join("tokenizer.json");
        let tokenizer = if tj.exists() {
            Some(Tokenizer::from_file(&tj)?)
        } else {
            None
        };
        Ok(Loaded {
            model,
            tokenizer,
            format: SourceFormat::HuggingFace,
            path: path.to_path_buf(),
        })
    };
    let loaded = if is_config {
        // A `config.json` alone: the architecture with seeded random weights (seed 0).
        hf(
            hf::load_config_random(path, 0)?,
            path.parent().unwrap_or(Path::new("")),
        )?
    } else if meta.is_dir() {
        if !path.join("config.json").exists() {
            return Err(ImportError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
        hf(hf::load_model(path)?, path)?
    } else {
        let file = gguf_import::open(path)?;
        let model = gguf_import::load_model(&file)?;
        let tokenizer = Some(Tokenizer::from_gguf(&file)?);
        Loaded {
            model,
            tokenizer,
            format: SourceFormat::Gguf,
            path: path.to_path_buf(),
        }
    };
    loaded
        .model
        .verify()
        .map_err(|errors| ImportError::Verify {
            path: path.to_path_buf(),
            errors,
        })?;
    Ok(loaded)
}
