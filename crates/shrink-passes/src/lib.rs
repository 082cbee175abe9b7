//! The passes of shrink. A pass is a small type with a kebab-case name, a one-line summary and
//! typed options (serde, unknown fields rejected); it rewrites a [`Model`] in place and says what
//! it did in a [`PassReport`]. The [`Registry`] is an explicit value mapping names to passes.
//!
//! Passes: [`cast`] (change the storage dtype of parameters), [`dead_code`] (drop what no
//! output depends on), [`prune`] (unstructured and N:M sparsity by magnitude, Wanda or
//! SparseGPT), [`prune_structured`] (MLP channels, heads, layers), [`quantize`] (rtn, GPTQ,
//! AWQ), [`distill`] and [`finetune`] (training), [`lora`] and [`lora_fold`] (attach LoRA
//! adapters, merge them into the base). Shared machinery: [`calibration`]
//! (calibration sequences from text), [`linalg`] (Cholesky factors and the steps GPTQ and
//! SparseGPT share), [`training`] (the options and reports of the training loop).

pub mod calibration;
pub mod cast;
pub mod dead_code;
pub mod distill;
pub mod finetune;
pub mod linalg;
pub mod lora;
pub mod lora_fold;
mod options;
mod pattern;
pub mod prune;
pub mod prune_structured;
pub mod quantize;
mod tensors;
pub mod training;

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use ron::value::RawValue;
use shrink_import::Tokenizer;
use shrink_ir::Model;
use shrink_runtime::Device;

pub use options::{canonical_ron, parse_options};
pub use pattern::Patterns;

/// One pass, with its options already parsed.
pub trait Pass {
    fn name(&self) -> &'static str;
    /// The options in canonical RON: every option explicit, fields sorted, e.g.
    /// `(exclude: [], include: ["*"], to: f16, vectors: false)`.
    fn options(&self) -> String;
    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError>;
    /// The name of an earlier pass whose input model this pass reads (a distillation
    /// teacher): the pass manager keeps that model, and refuses a pipeline without the pass.
    fn model_before(&self) -> Option<&str> {
        None
    }
    /// Checks of the options that need no model, run when the pipeline is read (so a bad
    /// value fails before earlier passes spend their time).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What a training checkpoint of pass `index` must carry to resume it: the pass and its
/// canonical options.
pub fn checkpoint_fingerprint(index: usize, pass: &dyn Pass) -> String {
    format!("pass {index} {} {}", pass.name(), pass.options())
}

/// Progress of long work inside a pass.
pub trait ProgressSink {
    fn start(&mut self, what: &str, total: u64);
    fn advance(&mut self, done: u64);
    /// A short status beside the progress (e.g. the running perplexity).
    fn note(&mut self, _message: &str) {}
    /// A line for the user to keep (e.g. LoRA's trainable-parameter count).
    fn message(&mut self, _line: &str) {}
    fn finish(&mut self);
}

/// A sink that shows nothing.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// What a pass gets besides the model it rewrites.
pub struct PassContext<'a> {
    /// Where to run the model (`shrink_runtime::Engine::new(model, cx.device)`).
    pub device: Device,
    /// The model as it was before the pipeline's first pass (the teacher for distillation).
    pub original: &'a Model,
    /// Models as they were before earlier passes that a later pass asked for
    /// ([`Pass::model_before`]), by pass name.
    pub before: &'a BTreeMap<String, Model>,
    /// This pass's position in the pipeline (0-based).
    pub index: usize,
    /// A training checkpoint to continue from (`shrink run --resume`); the training pass that
    /// wrote it resumes, the others ignore it.
    pub resume: Option<&'a Path>,
    /// The model's tokenizer, for calibration and training text.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Seeded from the pipeline's seed and the pass's position, so runs repeat.
    pub rng: StdRng,
    /// Relative paths in options resolve against this (the pipeline file's directory).
    pub base_dir: &'a Path,
    pub progress: &'a mut dyn ProgressSink,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Whether the model changed (the pass manager verifies it then).
    pub changed: bool,
    /// Pass-specific figures, by name.
    pub stats: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{pass}: {message}")]
    Failed { pass: &'static str, message: String },
    #[error("{pass}: {source}")]
    Runtime {
        pass: &'static str,
        #[source]
        source: shrink_runtime::RuntimeError,
    },
}

/// A float as JSON (`null` when it is not finite), for report figures.
pub(crate) fn json_f64(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Builds a pass from its RON options (`None`: every option at its default).
pub type PassBuilder = fn(Option<&RawValue>) -> Result<Box<dyn Pass>, ron::error::SpannedError>;

/// A pass as the registry knows it.
#[derive(Clone, Copy)]
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: PassBuilder,
}

/// Passes by name. Built explicitly (`Registry::builtin()`, then `register` for a tool's own).
#[derive(Clone, Default)]
pub struct Registry {
    passes: BTreeMap<&'static str, PassInfo>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every pass shipped with shrink.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        r.register(cast::INFO);
        r.register(dead_code::INFO);
        r.register(distill::INFO);
        r.register(finetune::INFO);
        r.register(lora::INFO);
        r.register(lora_fold::INFO);
        r.register(prune::INFO);
        r.register(prune_structured::INFO);
        r.register(quantize::INFO);
        r
    }

    pub fn register(&mut self, info: PassInfo) {
        self.passes.insert(info.name, info);
    }

    pub fn get(&self, name: &str) -> Option<&PassInfo> {
        self.passes.get(name)
    }

    /// Registered passes in name order.
    pub fn iter(&self) -> impl Iterator<Item = &PassInfo> {
        self.passes.values()
    }
}
