//! The architectures shrink knows, each defined once, one module per family behind one trait
//! ([`Architecture`]): a normalised config, the graph it builds (parameters named as in Hugging
//! Face checkpoints), the config read back from a graph, the `config.json` read and written
//! back, and the family's GGUF tensor names and metadata. Front ends (`shrink-import`) and back
//! ends (`shrink-export`) only translate their files into these; no other crate matches an
//! architecture by its name.

mod builder;
mod family;
pub mod gemma;
pub mod gpt2;
mod graph_read;
mod hf_json;
pub mod limits;
pub mod llama;

use std::any::Any;
use std::fmt;

use serde_json::{Map, Value};
use shrink_formats::gguf::{GgufError, GgufFile};
use shrink_ir::Graph;

pub use family::{families, Architecture, DynConfig, FamilyDef, GgufForm};
pub use gemma::GemmaConfig;
pub use gpt2::{gpt2_is_conv1d, Gpt2Config};
pub use graph_read::same_structure;
pub use llama::{
    gguf_name, permute_rows, permuted_row_sources, rope_permuted_heads, unpermute_rows,
    LlamaConfig, LlamaLayer,
};

/// An architecture, by the name Hugging Face's `model_type` and the IR's `architecture`
/// metadata give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArchId {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma2,
    Gemma3,
    Gpt2,
}

impl ArchId {
    /// Every architecture, in the order error messages list them.
    pub const ALL: [ArchId; 8] = [
        ArchId::Llama,
        ArchId::Mistral,
        ArchId::Qwen2,
        ArchId::Qwen3,
        ArchId::Phi3,
        ArchId::Gemma2,
        ArchId::Gemma3,
        ArchId::Gpt2,
    ];

    /// `model_type` in `config.json`, and the IR's `architecture`.
    pub fn name(self) -> &'static str {
        match self {
            ArchId::Llama => "llama",
            ArchId::Mistral => "mistral",
            ArchId::Qwen2 => "qwen2",
            ArchId::Qwen3 => "qwen3",
            ArchId::Phi3 => "phi3",
            ArchId::Gemma2 => "gemma2",
            ArchId::Gemma3 => "gemma3_text",
            ArchId::Gpt2 => "gpt2",
        }
    }

    pub fn from_name(name: &str) -> Option<ArchId> {
        ArchId::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The family (module) that defines the architecture.
    pub fn family(self) -> &'static FamilyDef {
        match self {
            ArchId::Llama | ArchId::Mistral | ArchId::Qwen2 | ArchId::Qwen3 | ArchId::Phi3 => {
                &llama::FAMILY
            }
            ArchId::Gemma2 | ArchId::Gemma3 => &gemma::FAMILY,
            ArchId::Gpt2 => &gpt2::FAMILY,
        }
    }

    /// Whether the architecture has a GGUF form (llama.cpp's names and metadata).
    pub fn has_gguf(self) -> bool {
        self.family().gguf.is_some()
    }

    /// The names of the architectures `keep` accepts, comma-separated (for error messages).
    pub fn list(keep: impl Fn(ArchId) -> bool) -> String {
        let names: Vec<&str> = ArchId::ALL
            .into_iter()
            .filter(|a| keep(*a))
            .map(ArchId::name)
            .collect();
        names.join(", ")
    }

    /// The architecture a graph's `architecture` metadata names.
    pub fn of_graph(g: &Graph) -> Result<ArchId, String> {
        let name = g
            .meta
            .get("architecture")
            .ok_or("meta 'architecture' is missing")?;
        ArchId::from_name(name).ok_or_else(|| {
            format!(
                "unknown architecture '{name}' (known: {})",
                ArchId::list(|_| true)
            )
        })
    }
}

impl fmt::Display for ArchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `config.json` shrink does not read, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("field '{field}': {message}")]
    Field { field: String, message: String },
    #[error("unsupported architecture '{model_type}' (supported: {supported})")]
    UnknownModelType {
        model_type: String,
        supported: String,
    },
    /// A GGUF key missing or of the wrong type (the error names the file and the key).
    #[error(transparent)]
    Gguf(Box<GgufError>),
}

impl From<GgufError> for ConfigError {
    fn from(e: GgufError) -> Self {
        ConfigError::Gguf(Box::new(e))
    }
}

/// A checkpoint tensor made of IR parameters' rows, stacked in the order of `parts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusedTensor {
    pub name: String,
    pub parts: Vec<String>,
}

impl FusedTensor {
    /// Each part with the first of its rows in the fused tensor, and the fused tensor's rows in
    /// all, given each part's rows.
    pub fn layout(&self, rows: impl Fn(&str) -> usize) -> (Vec<(&str, usize)>, usize) {
        let mut first = 0;
        let parts = self
            .parts
            .iter()
            .map(|p| {
                let at = first;
                first += rows(p);
                (p.as_str(), at)
            })
            .collect();
        (parts, first)
    }
}

/// The normalised config of a model of any architecture: one family's config behind
/// [`Architecture`].
pub struct ArchConfig(Box<dyn Architecture>);

impl Clone for ArchConfig {
    fn clone(&self) -> Self {
        ArchConfig(self.0.clone_box())
    }
}

impl PartialEq for ArchConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_dyn(other.0.as_ref())
    }
}

impl fmt::Debug for ArchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<A: Architecture + 'static> From<A> for ArchConfig {
    fn from(a: A) -> Self {
        ArchConfig(Box::new(a))
    }
}

impl std::ops::Deref for ArchConfig {
    type Target = dyn Architecture;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl std::ops::DerefMut for ArchConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut()
    }
}

impl ArchConfig {
    /// The config a Hugging Face `config.json` object describes, validated: sizes bounded by
    /// [`limits`], every field whose value shrink would not compute as transformers does refused.
    pub fn from_hf(json: &Map<String, Value>) -> Result<ArchConfig, ConfigError> {
        #[derive(serde::Deserialize)]
        struct ModelType {
            model_type: String,
        }
        let model_type = hf_json::read::<ModelType>(json)?.model_type;
        let id = ArchId::from_name(&model_type).ok_or_else(|| ConfigError::UnknownModelType {
            model_type: model_type.clone(),
            supported: ArchId::list(|_| true),
        })?;
        let config = ArchConfig((id.family().from_hf)(id, json)?);
        // The message starts with the field it is about, when it is one of the file's.
        config.validate().map_err(|m| {
            let field = m
                .split_whitespace()
                .next()
                .filter(|w| json.contains_key(*w))
                .unwrap_or("config")
                .to_string();
            hf_json::field_err(field, m)
        })?;
        Ok(config)
    }

    /// The config a GGUF file's metadata describes, validated, by `general.architecture`.
    pub fn from_gguf(file: &GgufFile) -> Result<ArchConfig, ConfigError> {
        let arch = file.get_str("general.architecture")?;
        match family::gguf_form(arch) {
            Some(g) => (g.read)(file).map(ArchConfig),
            None => Err(ConfigError::UnknownModelType {
                model_type: arch.to_string(),
                supported: family::gguf_arch_list(),
            }),
        }
    }

    /// The config of a graph (the inverse of [`Architecture::build`]), by its `architecture`.
    pub fn from_graph(g: &Graph) -> Result<ArchConfig, String> {
        (ArchId::of_graph(g)?.family().from_graph)(g).map(ArchConfig)
    }

    /// The family's own config type, when it is `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

#[cfg(test)]
mod tests;
