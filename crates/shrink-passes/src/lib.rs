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
use shrink_formats::Tokenizer;
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
    /// Files the pass reads, as `(option, path relative to the pipeline file)`: checked to
    /// exist before any pass runs.
    fn files(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The pass's effect on parameter shapes and storage types, applied to a model whose
    /// weight store may be empty (`shrink run --dry-run` predicts sizes from it, by
    /// [`Model::size`]). The default is no change (passes that only rewrite values).
    fn plan(&self, _model: &mut Model) -> Result<(), String> {
        Ok(())
    }
    /// Whether [`Pass::plan`] is exact, or depends on what the data decides (which layers a
    /// measured allocation leaves untouched, and so stored as they were).
    fn plan_is_exact(&self) -> bool {
        true
    }
    /// Bytes the pass holds beside the model's stored weights at its peak, predicted from the
    /// shapes of `model` (before the pass; its store may be empty): the memory budget's
    /// working set. The default is one parameter widened to f32 and rewritten (the largest).
    fn working_set(&self, model: &Model) -> Result<u64, String> {
        Ok(2 * largest_f32_bytes(model))
    }
    /// Parameters the pass rewrites in place without changing their shape or type (those it
    /// changes, [`Pass::plan`] shows): a rewritten parameter is held in memory, no longer read
    /// from the file it was mapped from.
    fn rewrites(&self, _model: &Model) -> Vec<String> {
        Vec::new()
    }
    /// What the pass needs of the model it gets, for ordering checks when a pipeline is read.
    fn needs(&self) -> Needs {
        Needs::Any
    }
    /// What the pass does that later passes' needs depend on, for the same checks.
    fn effect(&self) -> Option<Effect> {
        None
    }
}

/// Bytes of the largest parameter of `model` widened to f32.
pub(crate) fn largest_f32_bytes(model: &Model) -> u64 {
    model
        .graph
        .params()
        .values()
        .map(|t| t.numel() as u64 * 4)
        .max()
        .unwrap_or(0)
}

/// What a pass leaves that the ordering checks track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Weights stored quantized.
    Quantizes,
    /// LoRA adapters attached.
    AttachesAdapters,
    /// LoRA adapters merged away.
    FoldsAdapters,
}

/// What a pass needs of its input model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Any,
    /// Float weights: the pass rewrites weights in f32, so a quantized input would come back
    /// widened to f32, undoing an earlier `quantize`.
    DenseWeights,
    /// Float weights, unless LoRA adapters are attached (then only they train: QLoRA).
    DenseWeightsOrAdapters,
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

/// `engine.perplexity` with its chunks shown on `progress` under `what`: the one loop behind
/// `eval`, a pipeline's evaluations and the training passes' held-out perplexity.
pub fn perplexity_with_progress(
    engine: &shrink_runtime::Engine,
    tokens: &[u32],
    opts: shrink_runtime::PerplexityOptions,
    what: &str,
    progress: &mut dyn ProgressSink,
) -> Result<shrink_runtime::Perplexity, shrink_runtime::RuntimeError> {
    let fit = tokens.len() / opts.ctx.max(1);
    let total = opts.chunks.map_or(fit, |c| c.min(fit));
    progress.start(what, total as u64);
    let r = engine.perplexity(tokens, opts, &mut |done, _, ppl| {
        progress.advance(done as u64);
        progress.note(&format!("perplexity {ppl:.4}"));
    });
    progress.finish();
    r
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
    /// Loads a model file a pass names (a distillation teacher); `None` where the caller
    /// offers none. Passes never read model files themselves: the front ends are the caller's.
    pub load_model: Option<&'a ModelLoader>,
    pub progress: &'a mut dyn ProgressSink,
}

/// Loads a model file into a verified model, or says why not in one line.
pub type ModelLoader = dyn Fn(&Path) -> Result<Model, String>;

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

    /// The pass reference (`docs/passes.md`): every pass with its summary and every option
    /// with its default, read from the passes themselves.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "# Passes\n\nGenerated from the pass registry by `shrink passes --markdown` (a test fails \
             when this file is stale). Options left out of a pipeline take the defaults below; \
             `None` means unset. Details: [quantization.md](quantization.md), \
             [pruning.md](pruning.md), [distillation.md](distillation.md), [lora.md](lora.md).\n",
        );
        for info in self.iter() {
            s += &format!("\n## `{}`\n\n{}\n\n", info.name, info.summary);
            let options = match (info.build)(None) {
                Ok(p) => p.options(),
                Err(e) => format!("<no defaults: {e}>"),
            };
            let fields = top_level_fields(&options);
            if fields.is_empty() {
                s += "No options.\n";
                continue;
            }
            s += "| option | default |\n| --- | --- |\n";
            let mut rows = Vec::new();
            flatten_fields("", fields, &mut rows);
            for (k, v) in rows {
                s += &format!("| `{k}` | `{}` |\n", v.replace('|', "\\|"));
            }
        }
        s
    }
}

/// Nested option structs as `outer.inner` rows.
fn flatten_fields(prefix: &str, fields: Vec<(String, String)>, rows: &mut Vec<(String, String)>) {
    for (k, v) in fields {
        let key = format!("{prefix}{k}");
        let nested = if v.starts_with('(') {
            top_level_fields(&v)
        } else {
            Vec::new()
        };
        if nested.is_empty() {
            rows.push((key, v));
        } else {
            flatten_fields(&format!("{key}."), nested, rows);
        }
    }
}

/// `(a: 1, b: (c: [2, 3]))` → `[("a", "1"), ("b", "(c: [2, 3])")]`: the fields of a canonical
/// options text, split at top-level commas (strings and brackets respected).
fn top_level_fields(ron: &str) -> Vec<(String, String)> {
    let inner = ron
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or("");
    let (mut parts, mut cur, mut depth, mut in_str, mut esc) =
        (Vec::new(), String::new(), 0i32, false, false);
    for c in inner.chars() {
        if in_str {
            cur.push(c);
            match (esc, c) {
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => esc = false,
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts
        .into_iter()
        .filter_map(|p| {
            let (k, v) = p.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}
