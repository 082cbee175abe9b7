//! The architectures shrink knows, each defined once, one module per family: a normalised
//! config, the graph it builds (parameters named as in Hugging Face checkpoints), the config
//! read back from a graph, the `config.json` read and written back, and the family's GGUF
//! tensor names. Front ends (`shrink-import`) and back ends (`shrink-export`) only translate
//! their files into these; no other crate matches an architecture by its name.

mod builder;
pub mod gemma;
pub mod gpt2;
mod graph_read;
mod hf_json;
pub mod limits;
pub mod llama;

use std::fmt;

use serde_json::{Map, Value};
use shrink_formats::gguf::{GgufError, GgufFile};
use shrink_ir::Graph;

pub use gemma::GemmaConfig;
pub use gpt2::{gpt2_is_conv1d, Gpt2Config};
pub use graph_read::same_structure;
pub use llama::{
    gguf_name, permute_rows, rope_permuted_heads, unpermute_rows, LlamaConfig, LlamaLayer,
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

/// The module that defines an architecture: architectures of one family share a config type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma,
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

    pub fn family(self) -> Family {
        match self {
            ArchId::Llama | ArchId::Mistral | ArchId::Qwen2 | ArchId::Qwen3 | ArchId::Phi3 => {
                Family::Llama
            }
            ArchId::Gemma2 | ArchId::Gemma3 => Family::Gemma,
            ArchId::Gpt2 => Family::Gpt2,
        }
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

/// The normalised config of a model of any architecture.
#[derive(Clone, Debug, PartialEq)]
pub enum ArchConfig {
    Llama(LlamaConfig),
    Gemma(GemmaConfig),
    Gpt2(Gpt2Config),
}

impl ArchConfig {
    /// The config a Hugging Face `config.json` object describes, validated: sizes bounded by
    /// [`limits`], every field whose value shrink would not compute as transformers does refused.
    pub fn from_hf(json: &Map<String, Value>) -> Result<ArchConfig, ConfigError> {
        let c = hf_json::ConfigJson { json };
        let model_type = c
            .opt_str("model_type")?
            .ok_or_else(|| c.err("model_type", "missing"))?;
        let id = ArchId::from_name(model_type).ok_or_else(|| ConfigError::UnknownModelType {
            model_type: model_type.to_string(),
            supported: ArchId::list(|_| true),
        })?;
        let config = match id.family() {
            Family::Llama => ArchConfig::Llama(LlamaConfig::from_hf(id, &c)?),
            Family::Gemma => ArchConfig::Gemma(GemmaConfig::from_hf(id, &c)?),
            Family::Gpt2 => ArchConfig::Gpt2(Gpt2Config::from_hf(&c)?),
        };
        // The message starts with the field it is about, when it is one of the file's.
        config.validate().map_err(|m| {
            let field = m
                .split_whitespace()
                .next()
                .filter(|w| json.contains_key(*w))
                .unwrap_or("config")
                .to_string();
            c.err(&field, m)
        })?;
        Ok(config)
    }

    /// The config a GGUF file's metadata describes, validated, by `general.architecture`.
    pub fn from_gguf(file: &GgufFile) -> Result<ArchConfig, ConfigError> {
        let arch = file.get_str("general.architecture")?;
        if llama::GGUF_ARCHS.contains(&arch) {
            return Ok(ArchConfig::Llama(LlamaConfig::from_gguf(file)?));
        }
        if gemma::GGUF_ARCHS.contains(&arch) {
            return Ok(ArchConfig::Gemma(GemmaConfig::from_gguf(file)?));
        }
        let known: Vec<&str> = llama::GGUF_ARCHS
            .iter()
            .chain(&gemma::GGUF_ARCHS)
            .copied()
            .collect();
        Err(ConfigError::UnknownModelType {
            model_type: arch.to_string(),
            supported: known.join(", "),
        })
    }

    /// The config of a graph (the inverse of [`ArchConfig::build`]), by its `architecture`.
    pub fn from_graph(g: &Graph) -> Result<ArchConfig, String> {
        Ok(match ArchId::of_graph(g)?.family() {
            Family::Llama => ArchConfig::Llama(LlamaConfig::from_graph(g)?),
            Family::Gemma => ArchConfig::Gemma(GemmaConfig::from_graph(g)?),
            Family::Gpt2 => ArchConfig::Gpt2(Gpt2Config::from_graph(g)?),
        })
    }

    pub fn id(&self) -> ArchId {
        match self {
            ArchConfig::Llama(c) => c.arch,
            ArchConfig::Gemma(c) => c.arch,
            ArchConfig::Gpt2(_) => ArchId::Gpt2,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            ArchConfig::Llama(c) => c.validate(),
            ArchConfig::Gemma(c) => c.validate(),
            ArchConfig::Gpt2(c) => c.validate(),
        }
    }

    pub fn build(&self) -> Graph {
        match self {
            ArchConfig::Llama(c) => c.build(),
            ArchConfig::Gemma(c) => c.build(),
            ArchConfig::Gpt2(c) => c.build(),
        }
    }

    /// Parameters of the model, in checked arithmetic.
    pub fn param_count(&self) -> Result<u64, String> {
        match self {
            ArchConfig::Llama(c) => c.param_count(),
            ArchConfig::Gemma(c) => c.param_count(),
            ArchConfig::Gpt2(c) => c.param_count(),
        }
    }

    /// Decoder layers, and the `config.json` field that declares them.
    pub fn layers(&self) -> (usize, &'static str) {
        match self {
            ArchConfig::Llama(c) => (c.num_layers(), "num_hidden_layers"),
            ArchConfig::Gemma(c) => (c.num_layers(), "num_hidden_layers"),
            ArchConfig::Gpt2(c) => (c.n_layer, "n_layer"),
        }
    }

    /// What only a checkpoint's tensors say, given which tensors it `has` and whether the
    /// head shares the embedding's data (`head_shares_embedding(prefix)`): a missing `lm_head`
    /// ties the head (some configs omit `tie_word_embeddings`); GPT-2's key prefix and untied
    /// head.
    pub fn fit_checkpoint(
        &mut self,
        has: &dyn Fn(&str) -> bool,
        head_shares_embedding: &dyn Fn(&str) -> bool,
    ) {
        match self {
            ArchConfig::Llama(c) => {
                if !c.tie_word_embeddings && !has("lm_head.weight") {
                    c.tie_word_embeddings = true;
                }
            }
            ArchConfig::Gemma(c) => {
                if !c.tie_word_embeddings && !has("lm_head.weight") {
                    c.tie_word_embeddings = true;
                }
            }
            ArchConfig::Gpt2(c) => {
                if has("transformer.wte.weight") {
                    c.prefix = "transformer.".into();
                }
                c.untied_head = has("lm_head.weight") && !head_shares_embedding(&c.prefix);
            }
        }
    }

    /// Parameter names as transformers' `save_pretrained` writes them (GPT-2 under
    /// `transformer.`), for a model that has no checkpoint to follow.
    pub fn use_saved_names(&mut self) {
        if let ArchConfig::Gpt2(c) = self {
            c.prefix = "transformer.".into();
        }
    }

    /// Whether a parameter is stored transposed in Hugging Face checkpoints (GPT-2's `Conv1D`
    /// weights are `[in, out]`; the IR keeps every linear weight `[out, in]`).
    pub fn stored_transposed(&self, name: &str) -> bool {
        matches!(self, ArchConfig::Gpt2(_)) && gpt2_is_conv1d(name)
    }

    /// What is added to a parameter's checkpoint values to give the IR's (Gemma's norms store
    /// `w` of `1 + w`); 0 for the rest.
    pub fn stored_offset(&self, name: &str) -> f32 {
        match self {
            ArchConfig::Gemma(_) if GemmaConfig::is_offset_norm(name) => GemmaConfig::NORM_OFFSET,
            _ => 0.0,
        }
    }

    /// Checkpoint tensors that hold several IR parameters, their rows stacked in order
    /// (Phi-3's `qkv_proj` and `gate_up_proj`): split on import so every pass sees ordinary
    /// q/k/v and gate/up linears, stacked again on export.
    pub fn fused_tensors(&self) -> Vec<FusedTensor> {
        match self {
            ArchConfig::Llama(c) => c.fused_tensors(),
            ArchConfig::Gemma(_) | ArchConfig::Gpt2(_) => Vec::new(),
        }
    }

    /// `general.architecture` and the hyperparameters llama.cpp reads this model from.
    pub fn to_gguf(&self) -> Result<(&'static str, llama::GgufMetadata), ConfigError> {
        match self {
            ArchConfig::Llama(c) => c.to_gguf(),
            ArchConfig::Gemma(c) => c.to_gguf(),
            ArchConfig::Gpt2(_) => Err(ConfigError::Field {
                field: "architecture".into(),
                message: "gpt2 has no GGUF export".into(),
            }),
        }
    }

    /// The GGUF name of a parameter.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        match self {
            ArchConfig::Gemma(_) => gemma::gguf_name(hf),
            _ => llama::gguf_name(hf),
        }
    }

    /// For a Q or K parameter GGUF stores in llama.cpp's interleaved RoPE order, the heads its
    /// rows split into (only the LLaMA family's `llama`/`deci` files).
    pub fn gguf_permuted_heads(&self, hf: &str) -> Option<usize> {
        match self {
            ArchConfig::Llama(c) => rope_permuted_heads(hf, c),
            _ => None,
        }
    }

    /// GGUF tensors that are no IR parameter, as f32 values (Llama 3's `rope_freqs`).
    pub fn gguf_extra_tensors(&self) -> Vec<(String, Vec<f32>)> {
        match self {
            ArchConfig::Llama(c) => {
                llama::llama3_rope_factors(c.rope_theta, c.head_dim, c.rope_scaling)
                    .map(|f| vec![("rope_freqs.weight".to_string(), f)])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// GGUF tensors that hold several IR parameters, by their GGUF names.
    pub fn gguf_fused_tensors(&self) -> Vec<FusedTensor> {
        match self {
            ArchConfig::Llama(c) => c.gguf_fused_tensors(),
            _ => Vec::new(),
        }
    }

    pub fn head_dim(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.head_dim,
            ArchConfig::Gemma(c) => c.head_dim,
            ArchConfig::Gpt2(c) => c.n_embd / c.n_head.max(1),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Gemma(c) => c.vocab_size,
            ArchConfig::Gpt2(c) => c.vocab_size,
        }
    }

    /// The `config.json` transformers loads this model from.
    pub fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        match self {
            ArchConfig::Llama(c) => c.to_hf(torch_dtype),
            ArchConfig::Gemma(c) => c.to_hf(torch_dtype),
            ArchConfig::Gpt2(c) => c.to_hf(torch_dtype),
        }
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            ArchConfig::Llama(c) => c.bos_token_id,
            ArchConfig::Gemma(c) => c.bos_token_id,
            ArchConfig::Gpt2(c) => c.bos_token_id,
        }
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        match self {
            ArchConfig::Llama(c) => c.eos_token_id,
            ArchConfig::Gemma(c) => c.eos_token_id,
            ArchConfig::Gpt2(c) => c.eos_token_id,
        }
    }

    /// The context the model declares (`max_position_embeddings`, GPT-2's `n_positions`).
    pub fn context_length(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.max_position_embeddings,
            ArchConfig::Gemma(c) => c.max_position_embeddings,
            ArchConfig::Gpt2(c) => c.n_positions,
        }
    }
}

#[cfg(test)]
mod tests;
