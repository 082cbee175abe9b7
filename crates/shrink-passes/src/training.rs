//! What the training passes (`distill`, `finetune`, later LoRA) share: the options of the loop
//! (`train: (...)` in a pipeline), the training text, held-out perplexity before and after,
//! and writing trained parameters back into the model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shrink_ir::Model;
use shrink_runtime::train::{self, CheckpointConfig, Loss, StepRecord, TrainConfig};
use shrink_runtime::{Engine, PerplexityOptions, Scoring};

use crate::calibration::TextFiles;
use crate::{json_f64, PassContext, Patterns};

/// Options of the training loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    /// Micro-batches whose gradients make one step.
    pub accumulate: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// A checkpoint every `every` steps (and after the last) in `dir`, relative to the
    /// pipeline file; `shrink run --resume FILE` continues from one.
    pub checkpoint: Option<CheckpointOptions>,
    /// The training text (UTF-8), relative to the pipeline file: one file, or a list read in
    /// order as one text (sequences are drawn from all of it, so each file weighs by its
    /// length).
    pub data: Option<TextFiles>,
    /// Perplexity on held-out text before and after training, reported.
    pub heldout: Option<HeldoutOptions>,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// The cosine decay ends at `lr · min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Which parameters train (by name). With LoRA adapters attached, only adapter
    /// parameters can train (the base is frozen).
    pub params: Patterns,
    /// How selected quantized parameters train: `widen` (dequantized to f32, and stored as
    /// f32 after) or `scales` (their codes stay, their group scales train, and they stay in
    /// their scheme: q8_0, q4_0, symmetric INT, NF4 without double quantization).
    pub quantized: QuantizedTraining,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Optimizer steps; or give `tokens`.
    pub steps: Option<usize>,
    /// Training tokens in all (steps = tokens / (batch · seq_len · accumulate), rounded up).
    pub tokens: Option<usize>,
    /// Warmup steps (default: a tenth of the steps).
    pub warmup: Option<usize>,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
}

/// See [`TrainOptions::quantized`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizedTraining {
    #[default]
    Widen,
    Scales,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            accumulate: 1,
            batch: 4,
            checkpoint: None,
            data: None,
            heldout: None,
            lr: 1e-4,
            max_grad_norm: Some(1.0),
            min_lr_ratio: 0.1,
            params: Patterns {
                include: vec!["*".into()],
                exclude: vec![],
            },
            quantized: QuantizedTraining::Widen,
            seq_len: 256,
            steps: Some(100),
            tokens: None,
            warmup: None,
            weight_decay: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointOptions {
    pub dir: String,
    pub every: usize,
}

/// Held-out perplexity, computed as `shrink eval` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldoutOptions {
    pub chunks: Option<usize>,
    pub ctx: usize,
    pub data: String,
    /// `true`: score the second half of each chunk (llama.cpp's default).
    pub second_half: bool,
}

/// A training run of a pass, ready to go: everything checked, the text tokenized.
pub(crate) struct Prepared {
    pub config: TrainConfig,
    pub tokens: Vec<u32>,
    heldout: Option<(Vec<u32>, PerplexityOptions)>,
}

/// Whether a parameter trains: `params` selects it and, with LoRA adapters attached (the base
/// is then frozen), it is one of theirs.
fn trained_params<'p>(model: &Model, params: &'p Patterns) -> impl Fn(&str) -> bool + 'p {
    let adapters: std::collections::BTreeSet<String> = shrink_ir::lora::adapters(model)
        .into_iter()
        .flat_map(|a| [a.lora.a, a.lora.b])
        .collect();
    move |name: &str| params.selects(name) && (adapters.is_empty() || adapters.contains(name))
}

impl TrainOptions {
    /// Shapes after training: with no adapters attached, the quantized parameters that train
    /// come back as f32 (adapters train alone otherwise), unless only their scales train
    /// (`quantized: scales`: they keep their scheme, which must store plain scales).
    pub fn plan(&self, model: &mut Model) -> Result<(), String> {
        if !shrink_ir::lora::adapters(model).is_empty() {
            return Ok(());
        }
        if self.quantized == QuantizedTraining::Scales {
            let bad = model.graph.params().iter().find_map(|(n, t)| {
                let q = t.quant.filter(|q| !q.has_plain_scales())?;
                self.params.selects(n).then_some((n, q))
            });
            return match bad {
                Some((n, q)) => Err(format!(
                    "train.quantized: scales selects {n}, stored as {q}, which keeps no plain \
                     scale per group (q8_0, q4_0, symmetric INT and NF4 without double \
                     quantization do); exclude it in train.params or use quantized: widen"
                )),
                None => Ok(()),
            };
        }
        let names: Vec<String> = model
            .graph
            .params()
            .iter()
            .filter(|(n, t)| t.quant.is_some() && self.params.selects(n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            if let Some(p) = model.graph.param_mut(&n) {
                *p = shrink_ir::ParamType::new(shrink_ir::DType::F32, p.shape.clone());
            }
        }
        Ok(())
    }

    /// The parameters that train ([`trained_params`]).
    fn trained(&self, model: &Model) -> Vec<String> {
        let select = trained_params(model, &self.params);
        model
            .graph
            .params()
            .keys()
            .filter(|n| select(n))
            .cloned()
            .collect()
    }

    /// Base parameters the loop rewrites in place (none when adapters train alone).
    pub fn rewrites(&self, model: &Model) -> Vec<String> {
        if shrink_ir::lora::adapters(model).is_empty() {
            self.trained(model)
        } else {
            Vec::new()
        }
    }

    /// Bytes the loop holds beside the stored weights, predicted from shapes: every parameter
    /// widened to f32 for the engine, a gradient and Adam's two moments per trained one, and
    /// for one micro-batch every hidden value of the graph kept for backward and its gradient,
    /// with each attention's scores and probabilities; `teacher`: the teacher's own f32 copy
    /// of the same shapes.
    pub fn working_set(&self, model: &Model, teacher: bool) -> u64 {
        // In f64, so that no pipeline's sizes overflow; `as` saturates.
        let g = &model.graph;
        let numel = |n: &String| g.param(n).map_or(0.0, |p| p.numel() as f64);
        let all: f64 = g.params().keys().map(numel).sum();
        let trained: f64 = self.trained(model).iter().map(numel).sum();
        let (batch, len) = (self.batch as f64, self.seq_len as f64);
        let mut activations = 0f64;
        for id in g.node_ids() {
            let Some(n) = g.node(id) else { continue };
            for v in &n.outputs {
                let f = g.value_type(*v).and_then(|t| t.features()).unwrap_or(0);
                activations += 2.0 * batch * len * f as f64 * 4.0;
            }
            if let shrink_ir::Op::Attention(spec) = &n.op {
                activations += 2.0 * 2.0 * batch * spec.heads as f64 * len * len * 4.0;
            }
        }
        let teacher = if teacher {
            all * 4.0 + activations / 2.0
        } else {
            0.0
        };
        (all * 4.0 + trained * 12.0 + activations + teacher) as u64
    }

    /// What the pass needs of its input: training a quantized weight widens it, unless only
    /// its scales train.
    pub fn needs(&self) -> crate::Needs {
        match self.quantized {
            QuantizedTraining::Scales => crate::Needs::Any,
            QuantizedTraining::Widen => crate::Needs::DenseWeightsOrAdapters,
        }
    }

    /// The files the loop reads.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = self
            .data
            .iter()
            .flat_map(|d| d.paths())
            .map(|d| ("train.data", d.to_string()))
            .collect();
        if let Some(h) = &self.heldout {
            f.push(("train.heldout.data", h.data.clone()));
        }
        f
    }

    /// Range checks, before anything runs.
    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.seq_len < 2 || self.accumulate == 0 {
            return Err("train: batch and accumulate must be ≥ 1 and seq_len ≥ 2".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return Err(format!("train.lr {} is out of range (0, 1]", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!(
                "train.min_lr_ratio {} is not in [0, 1]",
                self.min_lr_ratio
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay < 1.0) {
            return Err(format!(
                "train.weight_decay {} is not in [0, 1)",
                self.weight_decay
            ));
        }
        if self.max_grad_norm.is_some_and(|m| m.is_nan() || m <= 0.0) {
            return Err("train.max_grad_norm must be positive".into());
        }
        if self.checkpoint.as_ref().is_some_and(|c| c.every == 0) {
            return Err("train.checkpoint.every must be at least 1".into());
        }
        if self.data.as_ref().is_none_or(TextFiles::is_empty) {
            return Err("train.data is not set: name a training text file".into());
        }
        self.budget().map(|_| ())
    }

    /// Steps and warmup steps.
    fn budget(&self) -> Result<(usize, usize), String> {
        let per_step = self.batch * self.seq_len * self.accumulate;
        let steps = match (self.steps, self.tokens) {
            (Some(_), Some(_)) => return Err("train: give steps or tokens, not both".into()),
            (Some(s), None) => s,
            (None, Some(t)) => t.div_ceil(per_step.max(1)),
            (None, None) => return Err("train: give steps or tokens".into()),
        };
        if steps == 0 {
            return Err("train: the budget is zero steps".into());
        }
        let warmup = self.warmup.unwrap_or(steps / 10);
        if warmup >= steps {
            return Err(format!(
                "train.warmup {warmup} is not below the {steps} steps"
            ));
        }
        Ok((steps, warmup))
    }

    /// Checks the options and reads the texts, before any training. `fingerprint` names the
    /// pass and its options (a checkpoint must match it to be resumed).
    pub(crate) fn prepare(
        &self,
        loss: Loss,
        cx: &mut PassContext<'_>,
        fingerprint: String,
    ) -> Result<Prepared, String> {
        self.check()?;
        let (steps, warmup) = self.budget()?;
        let data = self.data.as_ref().ok_or("train.data is not set")?;
        let tokens = data.tokens(cx.base_dir, cx.tokenizer, "train.data", "training")?;
        let windows = tokens.len().saturating_sub(1) / self.seq_len;
        if windows < self.batch {
            return Err(format!(
                "train.data {data} holds {} tokens: {windows} sequences of {}, fewer than one batch of {}",
                tokens.len(),
                self.seq_len,
                self.batch
            ));
        }
        let heldout = match &self.heldout {
            None => None,
            Some(h) => {
                if h.ctx < 2 || h.chunks == Some(0) {
                    return Err("train.heldout needs ctx ≥ 2 and chunks ≥ 1".into());
                }
                let t = read_tokens(cx, &h.data, "train.heldout.data")?;
                if t.len() < h.ctx {
                    return Err(format!(
                        "train.heldout.data {} has {} tokens, fewer than one chunk of {}",
                        h.data,
                        t.len(),
                        h.ctx
                    ));
                }
                let opts = PerplexityOptions {
                    ctx: h.ctx,
                    chunks: h.chunks,
                    scoring: if h.second_half {
                        Scoring::SecondHalf
                    } else {
                        Scoring::All
                    },
                };
                Some((t, opts))
            }
        };
        let resume = match cx.resume {
            // Only a checkpoint of this very pass (index, name, options) resumes it.
            Some(path) => {
                let f = train::checkpoint_fingerprint(path).map_err(|e| e.to_string())?;
                (f == fingerprint).then(|| path.to_path_buf())
            }
            None => None,
        };
        let seed = {
            use rand::Rng;
            cx.rng.random::<u64>()
        };
        let config = TrainConfig {
            steps,
            batch: self.batch,
            seq_len: self.seq_len,
            accumulate: self.accumulate,
            lr: self.lr,
            warmup,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            loss,
            hidden: Vec::new(),
            seed,
            quantized_scales: self.quantized == QuantizedTraining::Scales,
            checkpoint: self.checkpoint.as_ref().map(|c| CheckpointConfig {
                dir: cx.base_dir.join(&c.dir),
                every: c.every,
            }),
            resume,
            fingerprint,
        };
        Ok(Prepared {
            config,
            tokens,
            heldout,
        })
    }
}

fn read_tokens(cx: &PassContext<'_>, data: &str, field: &str) -> Result<Vec<u32>, String> {
    crate::calibration::tokenize_file(&cx.base_dir.join(data), cx.tokenizer, field, "training")
}

impl Prepared {
    /// Held-out perplexity of `model`, if the options ask for it.
    pub(crate) fn heldout_ppl(
        &self,
        model: &Model,
        cx: &mut PassContext<'_>,
        when: &str,
    ) -> Result<Option<f64>, String> {
        let Some((tokens, opts)) = &self.heldout else {
            return Ok(None);
        };
        let engine = Engine::new(model, cx.device).map_err(|e| e.to_string())?;
        let what = format!("held-out perplexity {when}");
        let r = crate::perplexity_with_progress(&engine, tokens, *opts, &what, cx.progress);
        Ok(Some(r.map_err(|e| e.to_string())?.ppl))
    }

    /// Trains `model`'s selected parameters in place; returns the report figures.
    pub(crate) fn run(
        &self,
        model: &mut Model,
        teacher: Option<&Model>,
        params: &Patterns,
        cx: &mut PassContext<'_>,
        what: &str,
    ) -> Result<BTreeMap<String, Value>, String> {
        let mut stats = BTreeMap::new();
        if let Some(p) = self.heldout_ppl(model, cx, "before")? {
            stats.insert("heldout_ppl_before".into(), json_f64(p));
        }
        let select = trained_params(model, params);
        let cfg = &self.config;
        cx.progress.start(what, cfg.steps as u64);
        let progress = &mut *cx.progress;
        let outcome = train::train(
            model,
            teacher,
            &select,
            self.tokens.clone(),
            cfg,
            cx.device,
            &mut |r: &StepRecord| {
                progress.advance(r.step as u64);
                let kl = r.kl.map_or(String::new(), |k| format!(" · kl {k:.4}"));
                progress.note(&format!(
                    "loss {:.4} (ce {:.4}{kl}) · lr {:.2e} · {:.0} tok/s",
                    r.loss,
                    r.ce,
                    r.lr,
                    r.tokens as f64 / r.seconds.max(1e-9)
                ));
            },
        );
        cx.progress.finish();
        let outcome = outcome.map_err(|e| e.to_string())?;
        let mut trained = 0usize;
        let mut widened = 0usize;
        for (name, (shape, values)) in &outcome.params {
            if model.graph.param(name).is_some_and(|t| t.quant.is_some()) {
                widened += 1;
            }
            crate::tensors::store_f32(model, name, shape.clone(), values)?;
            trained += values.len();
        }
        for (name, scales) in &outcome.scales {
            crate::tensors::store_scales(model, name, scales)?;
            trained += scales.len();
        }
        let curve: Vec<Value> = outcome.curve.iter().map(curve_point).collect();
        let timed: Vec<&StepRecord> = outcome
            .curve
            .iter()
            .filter(|r| outcome.resumed_at.is_none_or(|s| r.step > s))
            .collect();
        let secs: f64 = timed.iter().map(|r| r.seconds).sum();
        let toks: usize = timed.iter().map(|r| r.tokens).sum();
        stats.insert("steps".into(), json!(cfg.steps));
        stats.insert(
            "tokens".into(),
            json!(cfg.steps * cfg.batch * cfg.seq_len * cfg.accumulate),
        );
        stats.insert("trained_params".into(), json!(trained));
        // Quantized tensors that trained come back as f32 (quantize again afterwards).
        stats.insert("tensors_widened_to_f32".into(), json!(widened));
        if !outcome.scales.is_empty() {
            stats.insert("tensors_scales_trained".into(), json!(outcome.scales.len()));
        }
        if let (Some(f), Some(l)) = (outcome.curve.first(), outcome.curve.last()) {
            stats.insert("loss_first".into(), json_f64(f.loss));
            stats.insert("loss_last".into(), json_f64(l.loss));
        }
        stats.insert("curve".into(), Value::Array(curve));
        if !timed.is_empty() {
            stats.insert(
                "seconds_per_step".into(),
                json_f64(secs / timed.len() as f64),
            );
            stats.insert(
                "tokens_per_second".into(),
                json_f64(toks as f64 / secs.max(1e-9)),
            );
        }
        if let Some(s) = outcome.resumed_at {
            stats.insert("resumed_at_step".into(), json!(s));
        }
        if !outcome.checkpoints.is_empty() {
            let c: Vec<Value> = outcome
                .checkpoints
                .iter()
                .map(|p| json!(p.display().to_string()))
                .collect();
            stats.insert("checkpoints".into(), Value::Array(c));
        }
        if let Some(p) = self.heldout_ppl(model, cx, "after")? {
            stats.insert("heldout_ppl_after".into(), json_f64(p));
        }
        Ok(stats)
    }
}

fn curve_point(r: &StepRecord) -> Value {
    let mut v = json!({
        "step": r.step,
        "loss": json_f64(r.loss),
        "ce": json_f64(r.ce),
        "lr": json_f64(r.lr),
        "grad_norm": json_f64(r.grad_norm),
        "seconds": json_f64(r.seconds),
    });
    if let Some(m) = v.as_object_mut() {
        if let Some(k) = r.kl {
            m.insert("kl".into(), json_f64(k));
        }
        if let Some(h) = r.hidden {
            m.insert("hidden".into(), json_f64(h));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainOptions, ron::error::SpannedError> {
        let raw = ron::value::RawValue::from_ron(text).unwrap();
        crate::options::parse_options(Some(raw))
    }

    #[test]
    fn data_is_one_file_or_a_list() {
        let one = parse(r#"(data: "a.txt")"#).unwrap();
        assert_eq!(one.files(), vec![("train.data", "a.txt".to_string())]);
        let two = parse(r#"(data: ["a.txt", "b.txt"])"#).unwrap();
        assert_eq!(
            two.files(),
            vec![
                ("train.data", "a.txt".to_string()),
                ("train.data", "b.txt".to_string())
            ]
        );
        assert_eq!(two.data.as_ref().unwrap().to_string(), "a.txt + b.txt");
        let text = crate::options::canonical_ron(&two);
        assert_eq!(parse(&text).unwrap(), two, "{text}");
        let empty = parse(r#"(data: [])"#).unwrap();
        assert!(empty.check().unwrap_err().contains("train.data is not set"));
        assert!(parse(r#"(data: 3)"#).is_err());
    }
}
