//! Training over the interpreter: the same IR interpreter that serves inference runs on burn's
//! autodiff backend, so a model is defined once for both. [`train`] runs AdamW (burn's) on the
//! parameters a caller selects, with warmup then cosine decay, global-norm gradient clipping,
//! gradient accumulation and a seeded data order; the loss is cross-entropy on the next token,
//! or knowledge distillation against a frozen teacher ([`Loss`]). Checkpoints hold parameters,
//! optimizer moments and the loss curve, so a resumed run repeats an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, SimpleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData as BurnData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use shrink_ir::Model;

use crate::error::{Result, RuntimeError};
use crate::interp::{upload, ExecOptions, Interpreter, ParamTensor, QuantExec};
use crate::Device;

/// What the student learns from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Cross-entropy on the next token.
    CrossEntropy,
    /// `alpha·CE + (1−alpha)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`.
    Distill { alpha: f64, temperature: f64 },
}

/// How a hidden-state term compares a student value with a teacher value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenLoss {
    /// Mean squared difference over every element.
    Mse,
    /// Mean over positions of `1 − cos(student, teacher)`.
    Cosine,
}

/// A distillation term on intermediate values (Minitron): `weight · loss(student, teacher)`,
/// compared directly (the widths must match).
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenTerm {
    pub student: shrink_ir::ValueId,
    pub teacher: shrink_ir::ValueId,
    pub loss: HiddenLoss,
    pub weight: f64,
    /// How the term is named in errors (e.g. `layer 14 → layer 14`).
    pub label: String,
}

/// Checkpoints: one file per `every` steps in `dir`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub every: usize,
}

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence (each sequence reads one more token, the last target).
    pub seq_len: usize,
    /// Micro-batches whose gradients add up to one step.
    pub accumulate: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup from 0 to `lr`; then cosine decay to `lr · min_lr_ratio`.
    pub warmup: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; `None`: no clipping.
    pub max_grad_norm: Option<f64>,
    pub loss: Loss,
    /// Terms on intermediate values (distillation only).
    pub hidden: Vec<HiddenTerm>,
    /// Seeds the data order.
    pub seed: u64,
    /// Quantized parameters that train keep their codes and train only their group scales
    /// (`W = level(code) · scale`), so they stay in their scheme; otherwise they train
    /// dequantized to f32.
    pub quantized_scales: bool,
    pub checkpoint: Option<CheckpointConfig>,
    /// A checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Text a checkpoint must carry to be resumed here (the pass and its options), so that a
    /// checkpoint of another run is refused.
    pub fingerprint: String,
}

/// One optimizer step, as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// 1-based.
    pub step: usize,
    pub loss: f64,
    /// The cross-entropy part (the whole loss for [`Loss::CrossEntropy`]).
    pub ce: f64,
    /// `KL(teacher_T ‖ student_T)` (before the `T²` factor); `None` without a teacher.
    pub kl: Option<f64>,
    /// The hidden-state terms, weighted and summed; `None` without any.
    pub hidden: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub seconds: f64,
    pub tokens: usize,
}

/// What a run leaves.
pub struct TrainOutcome {
    /// Trained parameters, by name: shape and values (as stored in the model).
    pub params: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Quantized parameters whose group scales trained (`quantized_scales`): the new scales,
    /// `[rows, groups]` row-major, for [`shrink_ir::QuantScheme::set_scales`].
    pub scales: BTreeMap<String, Vec<f32>>,
    /// Every step, including those before a resume.
    pub curve: Vec<StepRecord>,
    /// The step a resumed run started after.
    pub resumed_at: Option<usize>,
    /// Checkpoints written.
    pub checkpoints: Vec<PathBuf>,
}

/// Learning rate at 0-based `step`: linear warmup, then cosine decay to `min_lr_ratio·lr`.
pub fn learning_rate(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup).max(1);
    let t = ((step - cfg.warmup) as f64 / span as f64).min(1.0);
    let min = cfg.lr * cfg.min_lr_ratio;
    min + 0.5 * (cfg.lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Sequences of `seq_len + 1` tokens from a token stream, in a seeded order that depends only
/// on the seed and the sample index (so a resumed run draws what an uninterrupted one would).
pub struct Batches {
    tokens: Vec<u32>,
    seq_len: usize,
    windows: usize,
    seed: u64,
    /// The permutation of the current epoch.
    epoch: Option<(usize, Vec<usize>)>,
}

impl Batches {
    /// Non-overlapping windows (each sharing its last token with the next one's first).
    pub fn new(tokens: Vec<u32>, seq_len: usize, seed: u64) -> Batches {
        let windows = tokens
            .len()
            .saturating_sub(1)
            .checked_div(seq_len)
            .unwrap_or(0);
        Batches {
            tokens,
            seq_len,
            windows,
            seed,
            epoch: None,
        }
    }

    /// Windows in the stream.
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Sample `k` of the run: epoch `k / windows` shuffles the windows with its own seed.
    fn sample(&mut self, k: usize) -> Vec<u32> {
        let (epoch, at) = (k / self.windows, k % self.windows);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.windows).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            order.shuffle(&mut rng);
            self.epoch = Some((epoch, order));
        }
        let w = self.epoch.as_ref().map_or(at, |(_, o)| o[at]);
        self.tokens[w * self.seq_len..w * self.seq_len + self.seq_len + 1].to_vec()
    }

    /// Micro-batch `micro` of 0-based optimizer step `step`.
    fn batch(&mut self, step: usize, micro: usize, cfg: &TrainConfig) -> Vec<Vec<u32>> {
        let first = (step * cfg.accumulate + micro) * cfg.batch;
        (first..first + cfg.batch).map(|k| self.sample(k)).collect()
    }
}

/// Trains the parameters of `student` that `trainable` selects, on `tokens`, and returns their
/// new values. With [`Loss::Distill`], `teacher` gives the target distribution.
#[allow(clippy::too_many_arguments)]
pub fn train(
    student: &Model,
    teacher: Option<&Model>,
    trainable: &dyn Fn(&str) -> bool,
    tokens: Vec<u32>,
    cfg: &TrainConfig,
    device: Device,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<TrainOutcome> {
    check_config(cfg, teacher.is_some())?;
    match device {
        Device::Cpu => train_on::<crate::Cpu>(
            student,
            teacher,
            trainable,
            tokens,
            cfg,
            &burn_ndarray::NdArrayDevice::Cpu,
            on_step,
        ),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => train_on::<crate::Gpu>(
            student,
            teacher,
            trainable,
            tokens,
            cfg,
            &crate::cuda_device(i)?,
            on_step,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(RuntimeError::Device(
            "this shrink was built without CUDA support; rebuild with `--features cuda`".into(),
        )),
    }
}

fn check_config(cfg: &TrainConfig, has_teacher: bool) -> Result<()> {
    let bad = |m: String| Err(RuntimeError::Input(m));
    if cfg.steps == 0 || cfg.batch == 0 || cfg.accumulate == 0 || cfg.seq_len == 0 {
        return bad("training needs steps, batch, accumulate and seq_len ≥ 1".into());
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && cfg.lr <= 1.0) {
        return bad(format!("learning rate {} is not in (0, 1]", cfg.lr));
    }
    if let Loss::Distill { alpha, temperature } = cfg.loss {
        if !has_teacher {
            return bad("distillation needs a teacher model".into());
        }
        if !(0.0..=1.0).contains(&alpha) {
            return bad(format!("alpha {alpha} is not in [0, 1]"));
        }
        if !(temperature.is_finite() && temperature > 0.0 && temperature <= 100.0) {
            return bad(format!("temperature {temperature} is not in (0, 100]"));
        }
    }
    if cfg.checkpoint.as_ref().is_some_and(|c| c.every == 0) {
        return bad("checkpoint.every must be at least 1".into());
    }
    Ok(())
}

/// Mean cross-entropy of `logits [b, s, v]` against `targets [b, s]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * s, v]), 1);
    logp.gather(1, targets.reshape([b * s, 1])).mean().neg()
}

/// `KL(softmax(teacher/T) ‖ softmax(student/T))` summed over the vocabulary and averaged over
/// positions (PyTorch's `kl_div(…, reduction="sum") / positions`). `teacher_logp` is the
/// teacher's `log_softmax(teacher/T)`, a constant.
pub fn kl_divergence<B: Backend>(
    student: Tensor<B, 3>,
    teacher_logp: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [b, s, _] = student.dims();
    let logq = log_softmax(student / temperature, 2);
    let p = teacher_logp.clone().exp();
    (p * (teacher_logp - logq)).sum().div_scalar((b * s) as f64)
}

/// The distillation loss and its parts (CE, KL before `T²`).
pub fn distill_loss<B: Backend>(
    student: Tensor<B, 3>,
    teacher_logp: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    alpha: f64,
    temperature: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let ce = cross_entropy(student.clone(), targets);
    let kl = kl_divergence(student, teacher_logp, temperature);
    let loss = ce.clone() * alpha + kl.clone() * ((1.0 - alpha) * temperature * temperature);
    (loss, ce, kl)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

/// The parts of a loss, as numbers.
pub(crate) struct Parts {
    pub(crate) ce: f64,
    pub(crate) kl: Option<f64>,
    pub(crate) hidden: Option<f64>,
}

/// A hidden-state term between `student` and the constant `teacher`, both `[b, s, d]`.
pub fn hidden_loss<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    loss: HiddenLoss,
) -> Tensor<B, 1> {
    match loss {
        HiddenLoss::Mse => (student - teacher).powi_scalar(2).mean(),
        HiddenLoss::Cosine => {
            let dot = (student.clone() * teacher.clone()).sum_dim(2);
            let ns = student.powi_scalar(2).sum_dim(2).sqrt();
            let nt = teacher.powi_scalar(2).sum_dim(2).sqrt();
            (dot / (ns * nt + 1e-8)).neg().add_scalar(1.0).mean()
        }
    }
}

/// A student on the autodiff backend: the interpreter and which of its parameters train.
pub(crate) struct Student<B: AutodiffBackend> {
    pub(crate) interp: Interpreter<B>,
    /// Indices into `interp.params` of the trainable parameters.
    pub(crate) trainable: Vec<usize>,
    /// For each trainable parameter, its fixed code levels when only its scales train.
    scaled: Vec<Option<ScaleTrained<B::InnerBackend>>>,
}

/// A quantized matrix that trains its group scales only: each group's scale is its stored
/// scale times a trained factor (one optimizer step then moves every scale by the same
/// fraction, whatever its size), and `W = W₀ ⊙ factor` group by group, `W₀` the stored values
/// (the codes fixed). The factor's gradient is the sum over its group of `∂L/∂W · W₀`.
struct ScaleTrained<B: Backend> {
    /// `W₀`, `[rows, groups, group]`.
    base: Tensor<B, 3>,
    /// The stored scales, `[rows · groups]`.
    stored: Vec<f32>,
    /// The trained factors, `[rows · groups]`, starting at 1.
    factors: Tensor<B, 1>,
}

impl<B: Backend> ScaleTrained<B> {
    fn new(name: &str, t: &shrink_ir::TensorData, device: &B::Device) -> Result<Self> {
        let bad = |message: String| RuntimeError::Param {
            name: name.into(),
            message,
        };
        let scheme =
            t.ty.quant
                .ok_or_else(|| bad("is not quantized, so it has no scales to train".into()))?;
        let shape = &t.ty.shape;
        let stored = scheme.scales(t.bytes(), shape).ok_or_else(|| {
            bad(format!(
                "{scheme} keeps no plain scale per group (q8_0, q4_0, symmetric INT and NF4 \
                 without double quantization do), so its scales cannot train alone"
            ))
        })?;
        let (rows, cols) = (shape[0], shape[1]);
        let groups = stored.len() / rows.max(1);
        let n = stored.len();
        Ok(ScaleTrained {
            base: upload::<B, 3>(t.to_f32(), [rows, groups, cols / groups.max(1)], device),
            stored,
            factors: Tensor::ones([n], device),
        })
    }

    fn matrix(&self, factors: Tensor<B, 1>) -> Tensor<B, 2> {
        let [rows, groups, g] = self.base.dims();
        (self.base.clone() * factors.reshape([rows, groups, 1])).reshape([rows, groups * g])
    }

    fn grad(&self, dw: Tensor<B, 2>) -> Tensor<B, 1> {
        let [rows, groups, g] = self.base.dims();
        (dw.reshape([rows, groups, g]) * self.base.clone())
            .sum_dim(2)
            .reshape([rows * groups])
    }

    /// The scales the trained factors give.
    fn scales(&self, factors: Vec<f32>) -> Vec<f32> {
        self.stored
            .iter()
            .zip(factors)
            .map(|(s, f)| s * f)
            .collect()
    }
}

impl<B: AutodiffBackend> Student<B> {
    pub(crate) fn new(
        model: &Model,
        device: &B::Device,
        trainable: &dyn Fn(&str) -> bool,
        quantized_scales: bool,
    ) -> Result<Self> {
        let mut interp = Interpreter::<B>::with_options(
            model,
            device,
            ExecOptions {
                quantized: QuantExec::Dequantize,
                trainable: true,
            },
        )?;
        let mut chosen = Vec::new();
        let mut scaled = Vec::new();
        for (i, p) in interp.params.iter_mut().enumerate() {
            if trainable(&p.name) {
                scaled.push(match model.weights.get(&p.name) {
                    Some(t) if quantized_scales && t.ty.quant.is_some() => {
                        Some(ScaleTrained::new(&p.name, t, device)?)
                    }
                    _ => None,
                });
                p.tensor = match &p.tensor {
                    ParamTensor::Vector(t) => ParamTensor::Vector(t.clone().require_grad()),
                    ParamTensor::Matrix(t) => ParamTensor::Matrix(t.clone().require_grad()),
                };
                chosen.push(i);
            }
        }
        if chosen.is_empty() {
            return Err(RuntimeError::Input(
                "no parameter of the model is selected for training".into(),
            ));
        }
        Ok(Student {
            interp,
            trainable: chosen,
            scaled,
        })
    }

    /// Loss of one micro-batch of sequences of `seq_len + 1` tokens (inputs and next-token
    /// targets), with its CE, KL and hidden-state parts as numbers.
    pub(crate) fn loss(
        &self,
        batch: &[Vec<u32>],
        teacher: Option<&Interpreter<B::InnerBackend>>,
        loss: Loss,
        hidden: &[HiddenTerm],
        dropout_seed: u64,
    ) -> Result<(Tensor<B, 1>, Parts)> {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
        let (b, s) = (inputs.len(), inputs.first().map_or(0, Vec::len));
        let targets: Vec<i64> = batch
            .iter()
            .flat_map(|s| s[1..].iter().map(|&t| t as i64))
            .collect();
        let device = self.interp.device().clone();
        let targets: Tensor<B, 2, Int> = Tensor::from_data(BurnData::new(targets, [b, s]), &device);
        let watch: Vec<_> = hidden.iter().map(|h| h.student).collect();
        let (logits, student_hidden) =
            self.interp
                .forward_training(&inputs, &watch, dropout_seed)?;
        let (Loss::Distill { alpha, temperature }, Some(t)) = (loss, teacher) else {
            let ce = cross_entropy(logits, targets);
            let v = scalar(ce.clone().inner());
            let parts = Parts {
                ce: v,
                kl: None,
                hidden: None,
            };
            return Ok((ce, parts));
        };
        let watch: Vec<_> = hidden.iter().map(|h| h.teacher).collect();
        let (tl, teacher_hidden) = t.forward_watching(&inputs, &watch)?;
        let logp = Tensor::<B, 3>::from_inner(log_softmax(tl / temperature, 2));
        let (mut total, ce, kl) = distill_loss(logits, logp, targets, alpha, temperature);
        let mut hidden_sum = None;
        for ((h, sv), tv) in hidden.iter().zip(student_hidden).zip(teacher_hidden) {
            let (ds, dt) = (sv.dims()[2], tv.dims()[2]);
            if ds != dt {
                return Err(RuntimeError::Input(format!(
                    "hidden term {}: the student's value is {ds} wide and the teacher's {dt}; \
                     only equal widths are compared (no learned projection)",
                    h.label
                )));
            }
            let term = hidden_loss(sv, Tensor::from_inner(tv), h.loss) * h.weight;
            hidden_sum = Some(hidden_sum.unwrap_or(0.0) + scalar(term.clone().inner()));
            total = total + term;
        }
        let parts = Parts {
            ce: scalar(ce.inner()),
            kl: Some(scalar(kl.inner())),
            hidden: hidden_sum,
        };
        Ok((total, parts))
    }

    /// Flat gradients of the trainable parameters (zeros for one the loss does not reach).
    pub(crate) fn grads(&self, loss: Tensor<B, 1>) -> Vec<Tensor<B::InnerBackend, 1>> {
        let grads = loss.backward();
        self.trainable
            .iter()
            .zip(&self.scaled)
            .map(|(&i, scaled)| {
                let p = &self.interp.params[i].tensor;
                let g = match (p, scaled) {
                    (ParamTensor::Matrix(t), Some(s)) => {
                        return t
                            .grad(&grads)
                            .map_or_else(|| s.factors.zeros_like(), |g| s.grad(g));
                    }
                    (ParamTensor::Vector(t), _) => t.grad(&grads),
                    (ParamTensor::Matrix(t), None) => t.grad(&grads).map(|g| g.flatten(0, 1)),
                };
                g.unwrap_or_else(|| p.vector().inner().zeros_like())
            })
            .collect()
    }

    /// Flat values of the trainable parameters.
    pub(crate) fn values(&self) -> Vec<Tensor<B::InnerBackend, 1>> {
        self.trainable
            .iter()
            .zip(&self.scaled)
            .map(|(&i, scaled)| match scaled {
                Some(s) => s.factors.clone(),
                None => self.interp.params[i].tensor.vector().inner(),
            })
            .collect()
    }

    /// Replaces the trainable parameters with new flat values.
    pub(crate) fn set_values(&mut self, values: Vec<Tensor<B::InnerBackend, 1>>) {
        for ((&i, v), scaled) in self.trainable.iter().zip(values).zip(&mut self.scaled) {
            let p = &mut self.interp.params[i].tensor;
            if let Some(s) = scaled {
                *p = ParamTensor::Matrix(Tensor::from_inner(s.matrix(v.clone())).require_grad());
                s.factors = v;
                continue;
            }
            // Reshaped before it becomes the leaf, so gradients land on it.
            *p = match p {
                ParamTensor::Vector(_) => ParamTensor::Vector(Tensor::from_inner(v).require_grad()),
                ParamTensor::Matrix(m) => {
                    ParamTensor::Matrix(Tensor::from_inner(v.reshape(m.dims())).require_grad())
                }
            };
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.trainable
            .iter()
            .map(|&i| self.interp.params[i].name.clone())
            .collect()
    }

    pub(crate) fn shapes(&self) -> Vec<Vec<usize>> {
        self.trainable
            .iter()
            .zip(&self.scaled)
            .map(|(&i, scaled)| match scaled {
                Some(s) => {
                    let [rows, groups, _] = s.base.dims();
                    vec![rows, groups]
                }
                None => self.interp.params[i].tensor.shape(),
            })
            .collect()
    }
}

fn train_on<B: Backend>(
    student: &Model,
    teacher: Option<&Model>,
    trainable: &dyn Fn(&str) -> bool,
    tokens: Vec<u32>,
    cfg: &TrainConfig,
    device: &B::Device,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<TrainOutcome> {
    let mut batches = Batches::new(tokens, cfg.seq_len, cfg.seed);
    if batches.windows() < cfg.batch {
        return Err(RuntimeError::Input(format!(
            "the training text holds {} sequences of {} tokens, fewer than one batch of {}",
            batches.windows(),
            cfg.seq_len + 1,
            cfg.batch
        )));
    }
    let mut st = Student::<Autodiff<B>>::new(student, device, trainable, cfg.quantized_scales)?;
    let teacher = match (cfg.loss, teacher) {
        (Loss::Distill { .. }, Some(t)) => Some(Interpreter::<B>::with_options(
            t,
            device,
            ExecOptions {
                quantized: QuantExec::Dequantize,
                trainable: false,
            },
        )?),
        _ => None,
    };
    if let Some(t) = &teacher {
        if t.vocab_size() != st.interp.vocab_size() {
            return Err(RuntimeError::Input(format!(
                "the teacher's vocabulary ({}) differs from the student's ({})",
                t.vocab_size(),
                st.interp.vocab_size()
            )));
        }
    }
    let masks = sparsity_masks::<B>(student, &st, device);
    let optim: AdamW = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(cfg.weight_decay as f32)
        .build();
    let mut states: Vec<Option<AdamWState<B, 1>>> = st.trainable.iter().map(|_| None).collect();
    let mut curve = Vec::new();
    let mut start = 0;
    let mut resumed_at = None;
    if let Some(path) = &cfg.resume {
        let ck = Checkpoint::read(path, cfg, &st.names(), &st.shapes())?;
        start = ck.step;
        resumed_at = Some(ck.step);
        curve = ck.curve;
        st.set_values(
            ck.values
                .into_iter()
                .map(|v| {
                    let n = v.len();
                    upload::<B, 1>(v, [n], device)
                })
                .collect(),
        );
        for (s, (m1, m2)) in states.iter_mut().zip(ck.moments) {
            let up = |v: Vec<f32>| {
                let n = v.len();
                upload::<B, 1>(v, [n], device)
            };
            *s = Some(AdamWState {
                momentum: AdaptiveMomentumState {
                    time: ck.adam_time,
                    moment_1: up(m1),
                    moment_2: up(m2),
                    max_moment_2: None,
                },
            });
        }
    }
    if start > cfg.steps {
        return Err(RuntimeError::Input(format!(
            "the checkpoint is at step {start}, past the run's {} steps",
            cfg.steps
        )));
    }
    let mut checkpoints = Vec::new();
    // The run resumed from is the last good checkpoint until this run writes one.
    let mut last_checkpoint: Option<PathBuf> = cfg.resume.clone();
    for step in start..cfg.steps {
        let t0 = Instant::now();
        let lr = learning_rate(cfg, step);
        let mut acc: Option<Vec<Tensor<B, 1>>> = None;
        let (mut loss_sum, mut ce_sum) = (0.0, 0.0);
        let (mut kl_sum, mut hidden_sum) = (None::<f64>, None::<f64>);
        for micro in 0..cfg.accumulate {
            let batch = batches.batch(step, micro, cfg);
            // LoRA dropout masks depend on the seed, step and micro-batch only (resumable).
            let dropout_seed = cfg
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((step * cfg.accumulate + micro) as u64);
            let (loss, parts) = st.loss(
                &batch,
                teacher.as_ref(),
                cfg.loss,
                &cfg.hidden,
                dropout_seed,
            )?;
            let loss = loss.div_scalar(cfg.accumulate as f64);
            let value = scalar(loss.clone().inner());
            if !value.is_finite() {
                let keep = last_checkpoint
                    .as_ref()
                    .map_or("no checkpoint was written".to_string(), |p| {
                        format!("the last good checkpoint is {}", p.display())
                    });
                return Err(RuntimeError::Input(format!(
                    "the loss is {value} at step {} (micro-batch {micro}); training stopped, {keep}",
                    step + 1
                )));
            }
            loss_sum += value;
            let share = 1.0 / cfg.accumulate as f64;
            ce_sum += parts.ce * share;
            if let Some(kl) = parts.kl {
                kl_sum = Some(kl_sum.unwrap_or(0.0) + kl * share);
            }
            if let Some(h) = parts.hidden {
                hidden_sum = Some(hidden_sum.unwrap_or(0.0) + h * share);
            }
            let g = st.grads(loss);
            acc = Some(match acc {
                None => g,
                Some(a) => a.into_iter().zip(g).map(|(a, g)| a + g).collect(),
            });
        }
        let mut grads = acc.unwrap_or_default();
        let sq: f64 = grads
            .iter()
            .map(|g| scalar(g.clone().powi_scalar(2).sum()))
            .sum();
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(RuntimeError::Input(format!(
                "the gradient norm is {grad_norm} at step {}; training stopped",
                step + 1
            )));
        }
        if let Some(max) = cfg.max_grad_norm {
            if grad_norm > max {
                let k = max / (grad_norm + 1e-6);
                grads = grads.into_iter().map(|g| g.mul_scalar(k)).collect();
            }
        }
        let values = st.values();
        let mut updated = Vec::with_capacity(values.len());
        for (i, (v, g)) in values.into_iter().zip(grads).enumerate() {
            let (v, s) = optim.step(lr, v, g, states[i].take());
            states[i] = s;
            updated.push(match &masks[i] {
                Some(keep) => v * keep.clone(),
                None => v,
            });
        }
        st.set_values(updated);
        let record = StepRecord {
            step: step + 1,
            loss: loss_sum,
            ce: ce_sum,
            kl: kl_sum,
            hidden: hidden_sum,
            lr,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
            tokens: cfg.batch * cfg.accumulate * cfg.seq_len,
        };
        on_step(&record);
        curve.push(record);
        if let Some(c) = &cfg.checkpoint {
            if (step + 1) % c.every == 0 || step + 1 == cfg.steps {
                let path = c.dir.join(format!("step-{:06}.safetensors", step + 1));
                Checkpoint::write(&path, cfg, step + 1, &st, &states, &curve)?;
                last_checkpoint = Some(path.clone());
                checkpoints.push(path);
            }
        }
    }
    let mut params = BTreeMap::new();
    let mut scales = BTreeMap::new();
    let names = st.names().into_iter().zip(st.shapes());
    for (((name, shape), v), scaled) in names.zip(st.values()).zip(&st.scaled) {
        if let Some(s) = scaled {
            scales.insert(name, s.scales(to_vec(v)?));
        } else {
            params.insert(name, (shape, to_vec(v)?));
        }
    }
    Ok(TrainOutcome {
        params,
        scales,
        curve,
        resumed_at,
        checkpoints,
    })
}

/// 0/1 keep-masks of trainable parameters that carry a sparsity mask, so training keeps the
/// pruned weights at zero.
fn sparsity_masks<B: Backend>(
    model: &Model,
    st: &Student<Autodiff<B>>,
    device: &B::Device,
) -> Vec<Option<Tensor<B, 1>>> {
    st.names()
        .iter()
        .zip(&st.scaled)
        .map(|(name, scaled)| {
            // Scale training keeps the codes, so pruned weights stay zero by themselves.
            if scaled.is_some() {
                return None;
            }
            model.weights.mask(name).map(|m| {
                let n = m.rows() * m.cols();
                let mut keep = vec![1.0f32; n];
                m.apply(&mut keep);
                upload::<B, 1>(keep, [n], device)
            })
        })
        .collect()
}

fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| RuntimeError::Input(format!("reading parameters back: {e:?}")))
}

/// A checkpoint file mapped into memory (they hold three floats per trained parameter).
fn map(path: &Path) -> std::result::Result<memmap2::Mmap, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: read-only; shrink writes checkpoints under a temporary name and renames them.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())
}

/// The fingerprint a checkpoint was written with (see [`TrainConfig::fingerprint`]).
pub fn checkpoint_fingerprint(path: &Path) -> Result<String> {
    let (_, meta) = checkpoint_metadata(path)?;
    meta.get("fingerprint")
        .cloned()
        .ok_or_else(|| checkpoint_error(path, "not a shrink training checkpoint".into()))
}

fn checkpoint_error(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Input(format!("checkpoint {}: {message}", path.display()))
}

/// A checkpoint file mapped, and the metadata of its header.
fn checkpoint_metadata(
    path: &Path,
) -> Result<(memmap2::Mmap, std::collections::HashMap<String, String>)> {
    let bytes = map(path).map_err(|e| checkpoint_error(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| checkpoint_error(path, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    Ok((bytes, meta))
}

/// A training checkpoint: parameters, AdamW moments, the step and the curve so far.
struct Checkpoint {
    step: usize,
    adam_time: usize,
    values: Vec<Vec<f32>>,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    curve: Vec<StepRecord>,
}

const CHECKPOINT_FORMAT: &str = "shrink-train-checkpoint-1";

impl Checkpoint {
    fn write<B: Backend>(
        path: &Path,
        cfg: &TrainConfig,
        step: usize,
        st: &Student<Autodiff<B>>,
        states: &[Option<AdamWState<B, 1>>],
        curve: &[StepRecord],
    ) -> Result<()> {
        let io = |e: String| checkpoint_error(path, e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut adam_time = 0;
        for ((name, v), s) in st.names().into_iter().zip(st.values()).zip(states) {
            let s = s
                .as_ref()
                .ok_or_else(|| io("no optimizer state yet".into()))?;
            adam_time = s.momentum.time;
            for (prefix, t) in [
                ("param", v),
                ("adam_m1", s.momentum.moment_1.clone()),
                ("adam_m2", s.momentum.moment_2.clone()),
            ] {
                let values = to_vec(t)?;
                let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.push((format!("{prefix}/{name}"), vec![values.len()], bytes));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| io(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
        meta.insert("fingerprint".to_string(), cfg.fingerprint.clone());
        meta.insert("step".to_string(), step.to_string());
        meta.insert("adam_time".to_string(), adam_time.to_string());
        meta.insert("curve".to_string(), curve_json(curve));
        let tmp = path.with_extension("safetensors.part");
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e.to_string()))
    }

    fn read(
        path: &Path,
        cfg: &TrainConfig,
        names: &[String],
        shapes: &[Vec<usize>],
    ) -> Result<Checkpoint> {
        let bad = |e: String| checkpoint_error(path, e);
        let (bytes, meta) = checkpoint_metadata(path)?;
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("no '{k}' in its metadata")))
        };
        if field("format")? != CHECKPOINT_FORMAT {
            return Err(bad("not a shrink training checkpoint".into()));
        }
        if field("fingerprint")? != cfg.fingerprint {
            return Err(bad(format!(
                "it was written by another training run:\n  checkpoint: {}\n  this run:   {}",
                field("fingerprint")?,
                cfg.fingerprint
            )));
        }
        let number = |k: &str| -> Result<usize> {
            field(k)?
                .parse()
                .map_err(|_| bad(format!("'{k}' is not a number")))
        };
        let (step, adam_time) = (number("step")?, number("adam_time")?);
        let curve = parse_curve(&field("curve")?).ok_or_else(|| bad("unreadable curve".into()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let read = |key: String, n: usize| -> Result<Vec<f32>> {
            let t = st
                .tensor(&key)
                .map_err(|_| bad(format!("no tensor '{key}'")))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != [n] {
                return Err(bad(format!("tensor '{key}' is not f32[{n}]")));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let mut values = Vec::new();
        let mut moments = Vec::new();
        for (name, shape) in names.iter().zip(shapes) {
            let n = shape.iter().product();
            values.push(read(format!("param/{name}"), n)?);
            moments.push((
                read(format!("adam_m1/{name}"), n)?,
                read(format!("adam_m2/{name}"), n)?,
            ));
        }
        Ok(Checkpoint {
            step,
            adam_time,
            values,
            moments,
            curve,
        })
    }
}

/// The curve as compact JSON-like text: one `[step, loss, ce, kl, hidden, lr, grad_norm,
/// seconds, tokens]` row per step (`null` for a part the loss lacks). Floats print in full
/// precision.
fn curve_json(curve: &[StepRecord]) -> String {
    let rows: Vec<String> = curve
        .iter()
        .map(|r| {
            let opt = |v: Option<f64>| v.map_or("null".to_string(), |k| format!("{k:e}"));
            format!(
                "[{},{:e},{:e},{},{},{:e},{:e},{:e},{}]",
                r.step,
                r.loss,
                r.ce,
                opt(r.kl),
                opt(r.hidden),
                r.lr,
                r.grad_norm,
                r.seconds,
                r.tokens
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

fn parse_curve(text: &str) -> Option<Vec<StepRecord>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner
        .split("],")
        .map(|row| {
            let row = row.trim().trim_start_matches('[').trim_end_matches(']');
            let f: Vec<&str> = row.split(',').collect();
            if f.len() != 9 {
                return None;
            }
            let opt = |s: &str| -> Option<Option<f64>> {
                match s {
                    "null" => Some(None),
                    v => v.parse().ok().map(Some),
                }
            };
            Some(StepRecord {
                step: f[0].parse().ok()?,
                loss: f[1].parse().ok()?,
                ce: f[2].parse().ok()?,
                kl: opt(f[3])?,
                hidden: opt(f[4])?,
                lr: f[5].parse().ok()?,
                grad_norm: f[6].parse().ok()?,
                seconds: f[7].parse().ok()?,
                tokens: f[8].parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;
    use rand::Rng;
    use shrink_ir::weights::{TensorData, WeightStore};
    use shrink_ir::DType;

    type F64 = NdArray<f64>;

    /// A tiny model: embedding, position embedding, layer and RMS norm, linear with and
    /// without bias, split, grouped-query attention with full or partial RoPE, `act` in a gated
    /// MLP, add, mul and a tied head.
    fn tiny(act: &str, rope_dim: usize, seed: u64) -> Model {
        tiny_with(act, rope_dim, "", false, seed)
    }

    /// `tiny`, optionally with extra attention attributes (`window`, `scale`) and with a scaled
    /// embedding and per-head RMS norms on q and k (grouped norms): every op the interpreter
    /// differentiates.
    fn tiny_with(act: &str, rope_dim: usize, window: &str, qk_norm: bool, seed: u64) -> Model {
        let (q, k) = if qk_norm {
            ("%21", "%22")
        } else {
            ("%6", "%7")
        };
        let (logits, out) = if qk_norm {
            ("%24: f32[b, s, 11] = softcap(%20) cap=3.0\n", "%24")
        } else {
            ("", "%20")
        };
        let (norm_params, norms, emb, scaled) = if qk_norm {
            (
                "param qn.weight: f32[4]\nparam kn.weight: f32[4]\n",
                "%21: f32[b, s, 8] = rms_norm(%6) eps=1e-5 weight=qn.weight group=4\n\
                 %22: f32[b, s, 4] = rms_norm(%7) eps=1e-5 weight=kn.weight group=4\n",
                "%23",
                "%23: f32[b, s, 8] = scale(%1) factor=1.5\n",
            )
        } else {
            ("", "", "%1", "")
        };
        let text = format!(
            "shrink-ir 1
meta context_length = \"16\"
param emb: f32[11, 8]
param pos: f32[16, 8]
param ln.weight: f32[8]
param ln.bias: f32[8]
param qkv.weight: f32[16, 8]
param qkv.bias: f32[16]
{norm_params}param o.weight: f32[8, 8]
param rms.weight: f32[8]
param gate.weight: f32[12, 8]
param up.weight: f32[12, 8]
param down.weight: f32[8, 12]
param final.weight: f32[8]
%0: i64[b, s] = input() name=\"tokens\"
%1: f32[b, s, 8] = embedding(%0) weight=emb
%2: f32[b, s, 8] = position_embedding(%0) weight=pos
{scaled}%3: f32[b, s, 8] = add({emb}, %2)
%4: f32[b, s, 8] = layer_norm(%3) eps=1e-5 weight=ln.weight bias=ln.bias
%5: f32[b, s, 16] = linear(%4) weight=qkv.weight bias=qkv.bias
%6: f32[b, s, 8], %7: f32[b, s, 4], %8: f32[b, s, 4] = split(%5) sizes=[8, 4, 4]
{norms}%9: f32[b, s, 8] = attention({q}, {k}, %8) heads=2 kv_heads=1 head_dim=4 rope_theta=10000.0 rope_dim={rope_dim} causal=true{window}
%10: f32[b, s, 8] = linear(%9) weight=o.weight
%11: f32[b, s, 8] = add(%3, %10)
%12: f32[b, s, 8] = rms_norm(%11) eps=1e-5 weight=rms.weight
%13: f32[b, s, 12] = linear(%12) weight=gate.weight
%14: f32[b, s, 12] = {act}(%13)
%15: f32[b, s, 12] = linear(%12) weight=up.weight
%16: f32[b, s, 12] = mul(%14, %15)
%17: f32[b, s, 8] = linear(%16) weight=down.weight
%18: f32[b, s, 8] = add(%11, %17)
%19: f32[b, s, 8] = rms_norm(%18) eps=1e-5 weight=final.weight
%20: f32[b, s, 11] = linear(%19) weight=emb
{logits}output({out}) name=\"logits\"
"
        );
        let graph = shrink_ir::text::parse(&text).expect("tiny IR parses");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut weights = WeightStore::new();
        for (name, ty) in graph.params() {
            let n: usize = ty.shape.iter().product();
            let norm = name.ends_with(".weight") && ty.shape.len() == 1;
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let x: f32 = rng.random_range(-0.5..0.5);
                    if norm {
                        1.0 + x
                    } else {
                        x
                    }
                })
                .collect();
            let t = TensorData::from_f32(DType::F32, ty.shape.clone(), &v).expect("tensor");
            weights.insert(name.clone(), t);
        }
        let model = Model { graph, weights };
        model.verify().expect("tiny model verifies");
        model
    }

    fn batch(seed: u64, b: usize, s: usize) -> Vec<Vec<u32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..b)
            .map(|_| (0..=s).map(|_| rng.random_range(0..11u32)).collect())
            .collect()
    }

    /// An f64 tensor whatever the device's default float type.
    fn f64_tensor<const D: usize>(v: Vec<f64>, shape: [usize; D]) -> Tensor<F64, D> {
        let opts = burn::tensor::TensorCreationOptions::new(Default::default())
            .with_dtype(burn::tensor::DType::F64);
        Tensor::from_data(BurnData::new(v, shape), opts)
    }

    fn f64s<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64 values")
    }

    /// `(f(v + h·e) − f(v − h·e)) / 2h` for element `j` of trainable parameter `i`, the others
    /// at `base`.
    fn central_difference(
        st: &mut Student<Autodiff<F64>>,
        base: &[Vec<f64>],
        i: usize,
        j: usize,
        h: f64,
        value: &dyn Fn(&Student<Autodiff<F64>>) -> f64,
    ) -> f64 {
        let mut at = |delta: f64| {
            let values = base
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    if k == i {
                        v[j] += delta;
                    }
                    let len = v.len();
                    f64_tensor(v, [len])
                })
                .collect();
            st.set_values(values);
            value(st)
        };
        (at(h) - at(-h)) / (2.0 * h)
    }

    #[test]
    fn gradients_match_finite_differences_for_every_op() {
        let device = Default::default();
        let loss = Loss::Distill {
            alpha: 0.3,
            temperature: 2.0,
        };
        // Two cases with a sliding window shorter than the batch's 5 positions.
        for (case, (act, rope_dim, window)) in [
            ("silu", 4, ""),
            ("gelu", 2, " window=2 scale=0.4 softcap=1.5"),
            ("gelu_tanh", 4, " window=3"),
            ("relu", 2, ""),
        ]
        .into_iter()
        .enumerate()
        {
            let model = tiny_with(act, rope_dim, window, true, case as u64);
            let teacher = tiny_with(act, rope_dim, window, true, 100 + case as u64);
            let teacher = Interpreter::<F64>::new(&teacher, &device).expect("teacher");
            let mut st =
                Student::<Autodiff<F64>>::new(&model, &device, &|_| true, false).expect("st");
            let data = batch(7, 2, 5);
            // Both hidden-state losses, on the residual stream after each block.
            let adds: Vec<shrink_ir::ValueId> = model
                .graph
                .order()
                .expect("order")
                .into_iter()
                .filter_map(|id| model.graph.node(id))
                .filter(|n| matches!(n.op, shrink_ir::Op::Add))
                .map(|n| n.outputs[0])
                .collect();
            let hidden = [(1, HiddenLoss::Mse, 0.7), (2, HiddenLoss::Cosine, 1.3)].map(
                |(k, loss, weight)| HiddenTerm {
                    student: adds[k],
                    teacher: adds[k],
                    loss,
                    weight,
                    label: format!("add {k}"),
                },
            );
            let value = |st: &Student<Autodiff<F64>>| {
                scalar(
                    st.loss(&data, Some(&teacher), loss, &hidden, 0)
                        .expect("loss")
                        .0
                        .inner(),
                )
            };
            let (l, _) = st
                .loss(&data, Some(&teacher), loss, &hidden, 0)
                .expect("loss");
            let grads: Vec<Vec<f64>> = st.grads(l).into_iter().map(f64s).collect();
            let names = st.names();
            let base: Vec<Vec<f64>> = st.values().into_iter().map(f64s).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(case as u64);
            let h = 1e-5;
            for (i, name) in names.iter().enumerate() {
                let n = base[i].len();
                assert!(
                    grads[i].iter().any(|g| g.abs() > 1e-9),
                    "{act}: no gradient reaches {name}"
                );
                for _ in 0..4 {
                    let j = rng.random_range(0..n);
                    let numeric = central_difference(&mut st, &base, i, j, h, &value);
                    let analytic = grads[i][j];
                    assert!(
                        (numeric - analytic).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                        "{act}, rope_dim {rope_dim}: d loss / d {name}[{j}]: finite differences {numeric}, autodiff {analytic}"
                    );
                }
            }
        }
    }

    /// Scale training: the factors' gradients equal finite differences of the loss, and factors
    /// of 1 give back the stored values.
    #[test]
    fn scale_factor_gradients_match_finite_differences() {
        let device = Default::default();
        let mut model = tiny("silu", 4, 3);
        let teacher = Interpreter::<F64>::new(&tiny("silu", 4, 103), &device).expect("teacher");
        let scheme: shrink_ir::QuantScheme = "int4_g4".parse().expect("scheme");
        let matrices: Vec<String> = model
            .graph
            .params()
            .iter()
            .filter(|(n, t)| t.shape.len() == 2 && n.as_str() != "pos")
            .map(|(n, _)| n.clone())
            .collect();
        for name in &matrices {
            let t = model.weights.get(name).expect("data");
            let shape = t.ty.shape.clone();
            let packed = scheme.quantize(&shape, &t.to_f32()).expect("quantize");
            let q = TensorData::quantized(scheme, shape.clone(), packed).expect("packed");
            model.weights.insert(name.clone(), q);
            *model.graph.param_mut(name).expect("declared") =
                shrink_ir::ParamType::quantized(scheme, shape);
        }
        let st = Student::<Autodiff<F64>>::new(&model, &device, &|n| n != "pos", true);
        let mut st = st.expect("student");
        let scaled: Vec<String> = st
            .names()
            .into_iter()
            .zip(&st.scaled)
            .filter(|(_, s)| s.is_some())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(scaled.len(), matrices.len(), "{scaled:?}");
        assert!(matrices.iter().all(|m| scaled.contains(m)), "{scaled:?}");
        let data = batch(9, 2, 5);
        let loss = Loss::Distill {
            alpha: 0.5,
            temperature: 1.0,
        };
        let value = |st: &Student<Autodiff<F64>>| {
            scalar(
                st.loss(&data, Some(&teacher), loss, &[], 0)
                    .expect("loss")
                    .0
                    .inner(),
            )
        };
        let (l, _) = st.loss(&data, Some(&teacher), loss, &[], 0).expect("loss");
        let grads: Vec<Vec<f64>> = st.grads(l).into_iter().map(f64s).collect();
        let base: Vec<Vec<f64>> = st.values().into_iter().map(f64s).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let h = 1e-5;
        for (i, name) in st.names().into_iter().enumerate() {
            if st.scaled[i].is_none() {
                continue;
            }
            assert!(
                base[i].iter().all(|&f| f == 1.0),
                "{name}: factors start at 1"
            );
            for _ in 0..4 {
                let j = rng.random_range(0..base[i].len());
                let numeric = central_difference(&mut st, &base, i, j, h, &value);
                let analytic = grads[i][j];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "d loss / d {name} factor {j}: finite differences {numeric}, autodiff {analytic}"
                );
            }
        }
    }

    #[test]
    fn distillation_losses_equal_a_direct_computation() {
        let device = Default::default();
        let (b, s, v) = (2, 3, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut logits = |scale: f64| -> Vec<f64> {
            (0..b * s * v)
                .map(|_| rng.random_range(-1.0..1.0) * scale)
                .collect()
        };
        let (zs, zt) = (logits(3.0), logits(2.0));
        let targets: Vec<i64> = (0..b * s).map(|i| (i * 3 % v) as i64).collect();
        let (alpha, temp) = (0.25, 2.5);
        let student = f64_tensor(zs.clone(), [b, s, v]);
        let teacher = f64_tensor(zt.clone(), [b, s, v]);
        let t = Tensor::<F64, 2, Int>::from_data(BurnData::new(targets.clone(), [b, s]), &device);
        let (loss, ce, kl) = distill_loss(student, log_softmax(teacher / temp, 2), t, alpha, temp);
        // Direct: per position, softmaxes in f64 from their definitions.
        let softmax = |z: &[f64], t: f64| -> Vec<f64> {
            let e: Vec<f64> = z.iter().map(|x| (x / t).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        };
        let (mut want_ce, mut want_kl) = (0.0, 0.0);
        for p in 0..b * s {
            let (zs, zt) = (&zs[p * v..(p + 1) * v], &zt[p * v..(p + 1) * v]);
            want_ce -= softmax(zs, 1.0)[targets[p] as usize].ln();
            let (q, pt) = (softmax(zs, temp), softmax(zt, temp));
            want_kl += pt
                .iter()
                .zip(&q)
                .map(|(p, q)| p * (p / q).ln())
                .sum::<f64>();
        }
        let n = (b * s) as f64;
        let (want_ce, want_kl) = (want_ce / n, want_kl / n);
        let want = alpha * want_ce + (1.0 - alpha) * temp * temp * want_kl;
        for (got, want, what) in [
            (scalar(ce), want_ce, "CE"),
            (scalar(kl), want_kl, "KL"),
            (scalar(loss), want, "loss"),
        ] {
            assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}");
        }
        assert!(want_kl > 0.01, "the test's distributions differ");
        // Hidden-state terms, the logits standing in for hidden states.
        let (a, t) = (
            f64_tensor(zs.clone(), [b, s, v]),
            f64_tensor(zt.clone(), [b, s, v]),
        );
        let mse = scalar(hidden_loss(a.clone(), t.clone(), HiddenLoss::Mse));
        let want_mse = zs
            .iter()
            .zip(&zt)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            / zs.len() as f64;
        assert!((mse - want_mse).abs() < 1e-12, "MSE {mse} vs {want_mse}");
        let cos = scalar(hidden_loss(a, t, HiddenLoss::Cosine));
        let want_cos = (0..b * s)
            .map(|p| {
                let (x, y) = (&zs[p * v..(p + 1) * v], &zt[p * v..(p + 1) * v]);
                let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
                let n = |z: &[f64]| z.iter().map(|a| a * a).sum::<f64>().sqrt();
                1.0 - dot / (n(x) * n(y))
            })
            .sum::<f64>()
            / n;
        assert!((cos - want_cos).abs() < 1e-7, "cosine {cos} vs {want_cos}");
    }

    /// `fixtures/distill/golden.safetensors` (PyTorch; `make_kd_golden.py`): values as f64.
    fn torch_golden(name: &str) -> (Vec<usize>, Vec<f64>) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/distill/golden.safetensors"
        );
        let bytes = std::fs::read(path).expect("golden file");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor(name).expect(name);
        let values = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            safetensors::Dtype::F64 | safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| {
                    let b: [u8; 8] = c.try_into().expect("8 bytes");
                    match t.dtype() {
                        safetensors::Dtype::F64 => f64::from_le_bytes(b),
                        _ => i64::from_le_bytes(b) as f64,
                    }
                })
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        (t.shape().to_vec(), values)
    }

    #[test]
    fn distillation_losses_match_pytorch() {
        let device = Default::default();
        let t3 = |name: &str| {
            let (shape, v) = torch_golden(name);
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            upload::<crate::Cpu, 3>(v, [shape[0], shape[1], shape[2]], &device)
        };
        let (shape, targets) = torch_golden("targets");
        let targets: Vec<i64> = targets.into_iter().map(|x| x as i64).collect();
        let targets = Tensor::<crate::Cpu, 2, Int>::from_data(
            BurnData::new(targets, [shape[0], shape[1]]),
            &device,
        );
        let (_, at) = torch_golden("alpha_t");
        let (alpha, temp) = (at[0], at[1]);
        let teacher_logp = log_softmax(t3("teacher") / temp, 2);
        let (loss, ce, kl) = distill_loss(t3("student"), teacher_logp, targets, alpha, temp);
        let mse = hidden_loss(t3("hidden_student"), t3("hidden_teacher"), HiddenLoss::Mse);
        let cos = hidden_loss(
            t3("hidden_student"),
            t3("hidden_teacher"),
            HiddenLoss::Cosine,
        );
        let (_, want) = torch_golden("loss");
        let got = [
            scalar(loss),
            scalar(ce),
            scalar(kl),
            scalar(mse),
            scalar(cos),
        ];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "term {i}: shrink {g}, PyTorch {w}"
            );
        }
    }

    /// The error of a training run that must fail.
    fn train_error(
        student: &Model,
        teacher: &Model,
        trainable: &dyn Fn(&str) -> bool,
        n_tokens: usize,
        cfg: &TrainConfig,
    ) -> String {
        train(
            student,
            Some(teacher),
            trainable,
            tokens(n_tokens),
            cfg,
            Device::Cpu,
            &mut |_| {},
        )
        .err()
        .expect("the run fails")
        .to_string()
    }

    fn config(steps: usize) -> TrainConfig {
        TrainConfig {
            steps,
            batch: 4,
            seq_len: 8,
            accumulate: 2,
            lr: 1e-2,
            warmup: 2,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            loss: Loss::Distill {
                alpha: 0.5,
                temperature: 2.0,
            },
            hidden: Vec::new(),
            seed: 5,
            quantized_scales: false,
            checkpoint: None,
            resume: None,
            fingerprint: "test".into(),
        }
    }

    fn tokens(n: usize) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        (0..n).map(|_| rng.random_range(0..11u32)).collect()
    }

    fn with_params(model: &Model, params: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Model {
        let mut m = model.clone();
        for (name, (shape, v)) in params {
            let t = TensorData::from_f32(DType::F32, shape.clone(), v).expect("tensor");
            m.weights.insert(name.clone(), t);
        }
        m
    }

    /// KL(teacher_T ‖ student_T) on a fixed batch.
    fn kl_to(teacher: &Model, student: &Model) -> f64 {
        let device = Default::default();
        let t = Interpreter::<crate::Cpu>::new(teacher, &device).expect("teacher");
        let st =
            Student::<Autodiff<crate::Cpu>>::new(student, &device, &|_| true, false).expect("st");
        let loss = Loss::Distill {
            alpha: 0.0,
            temperature: 1.0,
        };
        st.loss(&batch(99, 8, 8), Some(&t), loss, &[], 0)
            .expect("loss")
            .1
            .kl
            .expect("kl")
    }

    #[test]
    fn distillation_lowers_the_kl_to_the_teacher() {
        let teacher = tiny("silu", 4, 1);
        let student = tiny("silu", 4, 2);
        let before = kl_to(&teacher, &student);
        let cfg = config(40);
        let mut losses = Vec::new();
        let out = train(
            &student,
            Some(&teacher),
            &|_| true,
            tokens(2000),
            &cfg,
            Device::Cpu,
            &mut |r| losses.push(r.loss),
        )
        .expect("training runs");
        assert_eq!(out.curve.len(), 40);
        let after = kl_to(&teacher, &with_params(&student, &out.params));
        assert!(
            after < 0.5 * before,
            "KL to the teacher: {before} → {after}"
        );
        assert!(
            losses[39] < losses[0],
            "loss {} → {}",
            losses[0],
            losses[39]
        );
    }

    #[test]
    fn a_resumed_run_equals_an_uninterrupted_one() {
        let teacher = tiny("gelu", 2, 1);
        let student = tiny("gelu", 2, 2);
        let dir = std::env::temp_dir().join(format!("shrink-resume-{}", std::process::id()));
        let run = |cfg: &TrainConfig| {
            train(
                &student,
                Some(&teacher),
                &|n: &str| n != "pos",
                tokens(600),
                cfg,
                Device::Cpu,
                &mut |_| {},
            )
            .expect("training runs")
        };
        let whole = run(&config(6));
        let mut first = config(3);
        first.checkpoint = Some(CheckpointConfig {
            dir: dir.clone(),
            every: 3,
        });
        let interrupted = run(&first);
        assert_eq!(interrupted.checkpoints.len(), 1);
        let mut resumed_cfg = config(6);
        resumed_cfg.resume = Some(dir.join("step-000003.safetensors"));
        let resumed = run(&resumed_cfg);
        assert_eq!(resumed.resumed_at, Some(3));
        // The first steps come back from the checkpoint as they were recorded.
        assert_eq!(resumed.curve[..3], interrupted.curve[..]);
        // On the CPU, repeated f32 backward passes over one batch differ in the last digits
        // (division's backward uses burn-ndarray's approximate SIMD reciprocal; f64 ones are
        // bit-identical), so two uninterrupted runs already differ: compare outputs to that.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(1.0);
        for (r, w) in resumed.curve.iter().zip(&whole.curve) {
            assert!(
                r.step == w.step && close(r.loss, w.loss) && close(r.lr, w.lr),
                "{r:?} vs {w:?}"
            );
        }
        assert_eq!(
            resumed.params.keys().collect::<Vec<_>>(),
            whole.params.keys().collect::<Vec<_>>()
        );
        let logits = |params| {
            let m = with_params(&student, params);
            let i = Interpreter::<crate::Cpu>::new(&m, &Default::default()).expect("model");
            let t = i
                .forward(&batch(5, 2, 8), None)
                .expect("forward")
                .flatten::<1>(0, 2);
            to_vec(t).expect("logits")
        };
        let (a, b, c) = (
            logits(&resumed.params),
            logits(&whole.params),
            logits(&interrupted.params),
        );
        let diff = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(
            diff(&a, &b) < 1e-4,
            "resumed and uninterrupted logits differ by {}",
            diff(&a, &b)
        );
        // Far below what the three steps after the checkpoint changed.
        assert!(
            diff(&a, &c) > 100.0 * diff(&a, &b),
            "{} vs {}",
            diff(&a, &c),
            diff(&a, &b)
        );
        assert!(
            !resumed.params.contains_key("pos"),
            "a frozen parameter trained"
        );
        // A checkpoint of another run is refused, naming the file.
        let mut other = config(6);
        other.fingerprint = "other".into();
        other.resume = resumed_cfg.resume.clone();
        let e = train_error(&student, &teacher, &|_| true, 600, &other);
        assert!(
            e.contains("step-000003.safetensors") && e.contains("another training run"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_are_refused_before_training() {
        let model = tiny("relu", 4, 1);
        let refused = |cfg: &TrainConfig, n: usize, trainable: bool| {
            train_error(&model, &model, &|_| trainable, n, cfg)
        };
        let mut cfg = config(2);
        cfg.lr = 0.0;
        assert!(refused(&cfg, 600, true).contains("learning rate"));
        let mut cfg = config(2);
        cfg.loss = Loss::Distill {
            alpha: 0.5,
            temperature: 0.0,
        };
        assert!(refused(&cfg, 600, true).contains("temperature"));
        assert!(refused(&config(2), 20, true).contains("fewer than one batch"));
        assert!(refused(&config(2), 600, false).contains("no parameter"));
    }

    #[test]
    fn a_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint() {
        let teacher = tiny("silu", 4, 1);
        let student = tiny("silu", 4, 2);
        let dir = std::env::temp_dir().join(format!("shrink-nan-{}", std::process::id()));
        let frozen_pos = |n: &str| n != "pos";
        let mut cfg = config(2);
        cfg.checkpoint = Some(CheckpointConfig {
            dir: dir.clone(),
            every: 1,
        });
        train(
            &student,
            Some(&teacher),
            &frozen_pos,
            tokens(600),
            &cfg,
            Device::Cpu,
            &mut |_| {},
        )
        .expect("two good steps");
        // A frozen parameter turns NaN: the resumed run's first step fails.
        let mut broken = student.clone();
        let n = broken.weights.get("pos").expect("pos").ty.shape.clone();
        let nan = vec![f32::NAN; n.iter().product()];
        let t = TensorData::from_f32(DType::F32, n, &nan).expect("tensor");
        broken.weights.insert("pos", t);
        let mut cfg = config(4);
        let last = dir.join("step-000002.safetensors");
        cfg.resume = Some(last.clone());
        let e = train_error(&broken, &teacher, &frozen_pos, 600, &cfg);
        assert!(e.contains("NaN at step 3"), "{e}");
        assert!(e.contains(&last.display().to_string()), "{e}");
        assert!(last.is_file(), "the good checkpoint is kept");
        // Without any checkpoint, the message says so.
        let e = train_error(&broken, &teacher, &frozen_pos, 600, &config(2));
        assert!(
            e.contains("NaN at step 1") && e.contains("no checkpoint was written"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = config(10);
        let lr: Vec<f64> = (0..10).map(|s| learning_rate(&cfg, s)).collect();
        assert!(
            (lr[0] - 5e-3).abs() < 1e-12 && (lr[1] - 1e-2).abs() < 1e-12,
            "{lr:?}"
        );
        assert!((lr[2] - 1e-2).abs() < 1e-12, "{lr:?}");
        assert!(lr[2..].windows(2).all(|w| w[1] < w[0]), "{lr:?}");
        // Cosine from step 2 to step 10, where it reaches 0.1 · lr.
        let t = 7.0 / 8.0;
        let want = 1e-3 + 0.5 * 9e-3 * (1.0 + (std::f64::consts::PI * t).cos());
        assert!((lr[9] - want).abs() < 1e-12, "{lr:?}");
    }
}
