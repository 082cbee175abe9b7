//! The pass manager: runs passes in order, verifies the model after each pass that changed it,
//! times each, and reports sizes. Instrumentation (IR dumps, printing, reproducers) hooks
//! around it through [`Instrumentation`]; none of it is in the core.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;
use shrink_ir::{Graph, Model};
use shrink_passes::{Pass, PassContext, PassError, ProgressSink};
use shrink_runtime::Device;

use crate::file::PassEntry;

/// What one pass did, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct PassRecord {
    pub name: String,
    pub options: String,
    pub seconds: f64,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    /// Pruned entries as a fraction of all parameters.
    pub sparsity: f64,
    /// Perplexity after the pass, when the pipeline evaluates after every pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl: Option<f64>,
    pub changed: bool,
    pub stats: BTreeMap<String, serde_json::Value>,
}

/// Hooks around each pass.
pub trait Instrumentation {
    /// Before the first pass, with the model as loaded.
    fn start(&mut self, _model: &Model, _ppl: Option<f64>) -> Result<(), String> {
        Ok(())
    }
    /// After a pass succeeded and (if it changed the model) verified.
    fn after_pass(
        &mut self,
        _index: usize,
        _pass: &dyn Pass,
        _model: &Model,
        _record: &PassRecord,
    ) -> Result<(), String> {
        Ok(())
    }
    /// After a pass failed, or left a model that does not verify; `before` is the graph as it
    /// was before the pass.
    fn pass_failed(&mut self, _index: usize, _pass: &dyn Pass, _before: &Graph, _error: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("pass {index} ({pass}) failed: {source}")]
    Pass {
        index: usize,
        pass: &'static str,
        #[source]
        source: PassError,
    },
    #[error("pass {index} ({pass}) left a model that does not verify:\n{errors}")]
    Verify {
        index: usize,
        pass: &'static str,
        errors: shrink_ir::VerifyErrors,
    },
    #[error("instrumentation after pass {index} ({pass}): {message}")]
    Instrumentation {
        index: usize,
        pass: &'static str,
        message: String,
    },
}

/// Everything passes share during one run.
pub struct RunContext<'a> {
    pub device: Device,
    pub original: &'a Model,
    pub tokenizer: Option<&'a shrink_formats::Tokenizer>,
    pub seed: u64,
    pub base_dir: &'a std::path::Path,
    /// A training checkpoint to continue from (`--resume`).
    pub resume: Option<&'a std::path::Path>,
    /// How passes load a model file they name (`None`: they may not).
    pub load_model: Option<&'a shrink_passes::ModelLoader>,
    pub progress: &'a mut dyn ProgressSink,
    /// Perplexity of the input (when the pipeline evaluates after every pass), for the hooks.
    pub input_ppl: Option<f64>,
    /// Perplexity of a model, when the pipeline evaluates after every pass.
    pub evaluate: Option<Evaluate<'a>>,
}

/// Scores a model (its perplexity), showing progress.
pub type Evaluate<'a> = &'a mut dyn FnMut(&Model, &mut dyn ProgressSink) -> Result<f64, String>;

/// Runs `passes` over `model`.
pub fn run_passes(
    passes: &[PassEntry],
    model: &mut Model,
    rc: &mut RunContext<'_>,
    hooks: &mut [&mut dyn Instrumentation],
) -> Result<Vec<PassRecord>, ManagerError> {
    for h in hooks.iter_mut() {
        h.start(model, rc.input_ppl)
            .map_err(|message| ManagerError::Instrumentation {
                index: 0,
                pass: "(start)",
                message,
            })?;
    }
    let mut records = Vec::with_capacity(passes.len());
    // Models before passes that a later pass reads (distillation teachers), by pass name.
    let wanted: Vec<&str> = passes
        .iter()
        .filter_map(|e| e.pass.model_before())
        .collect();
    let mut kept: BTreeMap<String, Model> = BTreeMap::new();
    for (index, entry) in passes.iter().enumerate() {
        let pass = entry.pass.as_ref();
        if wanted.contains(&pass.name()) {
            kept.insert(pass.name().to_string(), model.clone());
        }
        let before = model.graph.clone();
        let mut cx = PassContext {
            device: rc.device,
            original: rc.original,
            before: &kept,
            index,
            resume: rc.resume,
            tokenizer: rc.tokenizer,
            // Each pass its own stream, so adding a pass does not change the others' draws.
            rng: rand::rngs::StdRng::seed_from_u64(
                rc.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            base_dir: rc.base_dir,
            load_model: rc.load_model,
            progress: &mut *rc.progress,
        };
        let start = Instant::now();
        let result = pass.run(model, &mut cx);
        let seconds = start.elapsed().as_secs_f64();
        let report = match result {
            Ok(r) => r,
            Err(source) => {
                for h in hooks.iter_mut() {
                    h.pass_failed(index, pass, &before, &source.to_string());
                }
                return Err(ManagerError::Pass {
                    index,
                    pass: pass.name(),
                    source,
                });
            }
        };
        if report.changed {
            if let Err(errors) = model.verify() {
                for h in hooks.iter_mut() {
                    h.pass_failed(index, pass, &before, &errors.to_string());
                }
                return Err(ManagerError::Verify {
                    index,
                    pass: pass.name(),
                    errors,
                });
            }
        }
        let size = model.size();
        let ppl = match rc.evaluate.as_mut() {
            Some(f) => Some(f(model, &mut *rc.progress).map_err(|message| {
                ManagerError::Instrumentation {
                    index,
                    pass: pass.name(),
                    message: format!("evaluating after the pass: {message}"),
                }
            })?),
            None => None,
        };
        let record = PassRecord {
            name: pass.name().to_string(),
            options: pass.options(),
            seconds,
            params: size.params,
            bytes: size.bytes,
            bits_per_weight: size.bits_per_weight(),
            sparsity: size.sparsity(),
            ppl,
            changed: report.changed,
            stats: report.stats,
        };
        for h in hooks.iter_mut() {
            h.after_pass(index, pass, model, &record)
                .map_err(|message| ManagerError::Instrumentation {
                    index,
                    pass: pass.name(),
                    message,
                })?;
        }
        records.push(record);
    }
    Ok(records)
}
