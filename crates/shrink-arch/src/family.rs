//! The one trait every architecture module implements, and the registry of families: adding a
//! family is its module (a config type implementing [`Architecture`] and a `static FAMILY:
//! FamilyDef`) and its [`ArchId`]s, mapped to the family by [`ArchId::family`]; [`families`]
//! derives the list from that map.

use std::any::Any;
use std::fmt;

use serde_json::{Map, Value};
use shrink_formats::gguf::GgufFile;
use shrink_ir::Graph;

use crate::llama::GgufMetadata;
use crate::{ArchId, ConfigError, FusedTensor};

/// A normalised model config of one family: what it builds, how its checkpoints and GGUF files
/// name and store its parameters, and the `config.json` it is written back as.
pub trait Architecture: fmt::Debug + Send + Sync + DynConfig {
    fn id(&self) -> ArchId;
    /// Why the config cannot be built, naming the field, if it cannot.
    fn validate(&self) -> Result<(), String>;
    fn build(&self) -> Graph;
    /// Parameters of the model, in checked arithmetic.
    fn param_count(&self) -> Result<u64, String>;
    /// Decoder layers, and the `config.json` field that declares them.
    fn layers(&self) -> (usize, &'static str);
    fn head_dim(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// The context the model declares.
    fn context_length(&self) -> usize;
    fn bos_token_id(&self) -> Option<u32>;
    fn eos_token_id(&self) -> Option<u32>;
    /// The `config.json` transformers loads this model from.
    fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String>;

    /// What only a checkpoint's tensors say (see [`crate::ArchConfig::fit_checkpoint`]).
    fn fit_checkpoint(
        &mut self,
        has: &dyn Fn(&str) -> bool,
        head_shares_embedding: &dyn Fn(&str) -> bool,
    );
    /// Parameter names as `save_pretrained` writes them, for a model with no checkpoint.
    fn use_saved_names(&mut self) {}
    /// Whether a parameter is stored transposed in Hugging Face checkpoints.
    fn stored_transposed(&self, _name: &str) -> bool {
        false
    }
    /// What is added to a parameter's checkpoint values to give the IR's.
    fn stored_offset(&self, _name: &str) -> f32 {
        0.0
    }
    /// Checkpoint tensors that hold several IR parameters.
    fn fused_tensors(&self) -> Vec<FusedTensor> {
        Vec::new()
    }

    /// `general.architecture` and the hyperparameters llama.cpp reads this model from.
    fn to_gguf(&self) -> Result<(&'static str, GgufMetadata), ConfigError> {
        Err(ConfigError::Field {
            field: "architecture".into(),
            message: format!("{} has no GGUF export", self.id()),
        })
    }
    /// The GGUF name of a parameter.
    fn gguf_name(&self, _hf: &str) -> Option<String> {
        None
    }
    /// For a Q or K parameter GGUF stores in llama.cpp's interleaved RoPE order, its heads.
    fn gguf_permuted_heads(&self, _hf: &str) -> Option<usize> {
        None
    }
    /// GGUF tensors that are no IR parameter, as f32 values.
    fn gguf_extra_tensors(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }
    /// GGUF tensors that hold several IR parameters, by their GGUF names.
    fn gguf_fused_tensors(&self) -> Vec<FusedTensor> {
        Vec::new()
    }
}

/// Cloning, comparison and downcasting of a boxed [`Architecture`], given to every config type
/// that is `Clone + PartialEq`.
pub trait DynConfig {
    fn clone_box(&self) -> Box<dyn Architecture>;
    fn eq_dyn(&self, other: &dyn Architecture) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Architecture + Clone + PartialEq + 'static> DynConfig for T {
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &dyn Architecture) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The [`Architecture`] accessors of a config whose fields are named as transformers' decoder
/// configs name them (`head_dim`, `vocab_size`, `max_position_embeddings`, the token ids,
/// `tie_word_embeddings`), and its checkpoint rule: a missing `lm_head` ties the head (some
/// configs omit `tie_word_embeddings`).
macro_rules! decoder_config_fields {
    () => {
        fn head_dim(&self) -> usize {
            self.head_dim
        }
        fn vocab_size(&self) -> usize {
            self.vocab_size
        }
        fn context_length(&self) -> usize {
            self.max_position_embeddings
        }
        fn bos_token_id(&self) -> Option<u32> {
            self.bos_token_id
        }
        fn eos_token_id(&self) -> Option<u32> {
            self.eos_token_id
        }
        fn fit_checkpoint(&mut self, has: &dyn Fn(&str) -> bool, _: &dyn Fn(&str) -> bool) {
            if !self.tie_word_embeddings && !has("lm_head.weight") {
                self.tie_word_embeddings = true;
            }
        }
    };
}
pub(crate) use decoder_config_fields;

/// A family's config, read from a file.
pub(crate) type ReadConfig = Result<Box<dyn Architecture>, ConfigError>;

/// A family's GGUF form: the `general.architecture` values it reads and writes, and its reader.
pub struct GgufForm {
    pub archs: &'static [&'static str],
    pub(crate) read: fn(&GgufFile) -> ReadConfig,
}

/// How a family's configs are read: from `config.json`, from a graph, and from GGUF metadata
/// when it has a GGUF form.
pub struct FamilyDef {
    pub gguf: Option<GgufForm>,
    pub(crate) from_hf: fn(ArchId, &Map<String, Value>) -> ReadConfig,
    pub(crate) from_graph: fn(&Graph) -> Result<Box<dyn Architecture>, String>,
}

impl FamilyDef {
    /// Whether the family reads architecture `id`.
    pub fn reads(&'static self, id: ArchId) -> bool {
        std::ptr::eq(id.family(), self)
    }

    /// The architectures of this family, comma-separated (for error messages).
    pub fn arch_list(&'static self) -> String {
        ArchId::list(|a| self.reads(a))
    }
}

/// Every family, once each, in the order of [`ArchId::ALL`].
pub fn families() -> Vec<&'static FamilyDef> {
    let mut out: Vec<&'static FamilyDef> = Vec::new();
    for id in ArchId::ALL {
        let f = id.family();
        if !out.iter().any(|g| std::ptr::eq(*g, f)) {
            out.push(f);
        }
    }
    out
}

/// The GGUF form that reads `general.architecture` `arch`, if any family has it.
pub(crate) fn gguf_form(arch: &str) -> Option<&'static GgufForm> {
    families()
        .into_iter()
        .filter_map(|f| f.gguf.as_ref())
        .find(|g| g.archs.contains(&arch))
}

/// Every GGUF architecture shrink reads, comma-separated.
pub(crate) fn gguf_arch_list() -> String {
    let known: Vec<&str> = families()
        .into_iter()
        .filter_map(|f| f.gguf.as_ref())
        .flat_map(|g| g.archs.iter().copied())
        .collect();
    known.join(", ")
}
