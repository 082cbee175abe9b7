//! Front ends of shrink: model files into the graph IR, with their tokenizer.
//!
//! - [`hf`]: Hugging Face directories (LLaMA family, GPT-2), safetensors memory-mapped
//! - [`gguf_import`]: GGUF files of the `llama`, `deci` and `qwen2` architectures
//! - [`peft`]: PEFT LoRA adapter directories applied onto a loaded model
//!
//! The file formats (GGUF, safetensors conventions, tokenizers) are `shrink-formats`'; what each
//! architecture is (its config, graph and names) is `shrink-arch`'s.
//!
//! Every model that leaves this crate has passed the verifier.

pub mod error;
pub mod gguf_import;
pub mod hf;
pub mod peft;

use std::path::{Path, PathBuf};

pub use error::{ImportError, Result};

use shrink_formats::tokenizer::SentencePieceModel;
use shrink_formats::Tokenizer;
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

/// How [`load_with`] loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Check every imported float tensor for NaN and infinity (on by default; off only to
    /// measure what the checks cost, as `examples/bench_load.rs` does).
    pub check_finite: bool,
    /// For a `config.json` alone: the graph and its parameter types without building the random
    /// weights (what `shrink run --dry-run` needs, whatever the model's size); the store is
    /// empty and only the graph is verified. Files with weights load as always.
    pub shapes_only: bool,
}

impl LoadOptions {
    /// Shapes without weights for a `config.json` alone ([`LoadOptions::shapes_only`]).
    pub fn shapes() -> Self {
        LoadOptions {
            shapes_only: true,
            ..Default::default()
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            check_finite: true,
            shapes_only: false,
        }
    }
}

/// Loads a GGUF file, a Hugging Face model directory, or a `config.json` alone (random
/// weights, see [`hf::load_config_random`]), every check on.
pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with options. The tokenizer is built on a second thread while the weights load.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_config = meta.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // A Hugging Face model, with the `tokenizer.json` in `dir` if there is one.
    let hf = |dir: &Path, model: &dyn Fn() -> Result<Model>| -> Result<Loaded> {
        let tj = dir.join("tokenizer.json");
        // A SentencePiece `tokenizer.model` beside it is kept: GGUF export writes its scores.
        let sp = dir.join("tokenizer.model");
        let (model, tokenizer) = concurrently(model, || {
            tj.exists()
                .then(|| {
                    let tok = Tokenizer::from_file(&tj)?;
                    Ok::<_, shrink_formats::TokenizerError>(if sp.is_file() {
                        tok.with_sentencepiece(SentencePieceModel::read(&sp)?)
                    } else {
                        tok
                    })
                })
                .transpose()
        });
        Ok(Loaded {
            model: model?,
            tokenizer: tokenizer?,
            format: SourceFormat::HuggingFace,
            path: path.to_path_buf(),
        })
    };
    let loaded = if is_config {
        // A `config.json` alone: the architecture with seeded random weights (seed 0).
        hf(path.parent().unwrap_or(Path::new("")), &|| {
            hf::load_config_random(path, 0, opts.shapes_only)
        })?
    } else if meta.is_dir() {
        if !path.join("config.json").exists() {
            return Err(ImportError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
        hf(path, &|| hf::load_model(path, opts))?
    } else {
        let file = gguf_import::open(path)?;
        let (model, tokenizer) = concurrently(
            || gguf_import::load_model(&file, opts),
            || Tokenizer::from_gguf(&file),
        );
        Loaded {
            model: model?,
            tokenizer: Some(tokenizer?),
            format: SourceFormat::Gguf,
            path: path.to_path_buf(),
        }
    };
    let verified = if loaded.model.weights.is_empty() && opts.shapes_only {
        shrink_ir::verify::verify_graph(&loaded.model.graph)
    } else {
        loaded.model.verify()
    };
    verified.map_err(|errors| ImportError::Verify {
        path: path.to_path_buf(),
        errors,
    })?;
    Ok(loaded)
}

/// Runs `a` on this thread and `b` on a scoped second one (the checks of a model's weights then
/// overlap the tokenizer's build). A panic in `b` is resumed here.
fn concurrently<A: Send, B: Send>(a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let b = s.spawn(b);
        let a = a();
        let b = b.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (a, b)
    })
}
