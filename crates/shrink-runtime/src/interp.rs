//! The interpreter: the IR compiled to a list of steps over burn tensors. Parameters are
//! uploaded once, in the layout each step wants (linear weights transposed to `[in, out]`).
//!
//! Matrices of linears and embeddings stored quantized or in half precision (f16, bf16) either
//! stay as stored on the host and are widened to f32 at each use ([`QuantExec::Stream`]: memory
//! stays near the stored size, memory-mapped files are not copied), or are widened once at load
//! like any other parameter ([`QuantExec::Dequantize`]: fastest).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Element, Int, Tensor, TensorCreationOptions, TensorData as BurnData};
use shrink_ir::weights::TensorData;
use shrink_ir::{Activation, AttentionSpec, DType, Model, NodeId, NormKind, Op, ValueId};

use crate::error::{Result, RuntimeError};

/// How matrices stored quantized or in half precision run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuantExec {
    /// Keep the stored bytes; at each forward, widen a linear's matrix to f32 (in blocks of rows
    /// when it is large, each dropped after its matmul) and an embedding's rows of the tokens
    /// asked for. Memory: the model as stored plus one block.
    #[default]
    Stream,
    /// Widen every parameter to f32 at load: fastest, but takes f32 memory.
    Dequantize,
}

/// Options of an [`Interpreter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub quantized: QuantExec,
    /// One tensor per parameter, in its stored layout (a tied embedding and LM head share it),
    /// quantized ones dequantized: what training needs, so that every use of a parameter
    /// meets in one gradient. Inference keeps a transposed copy for linears instead.
    pub trainable: bool,
}

/// A `[rows, cols]` matrix kept as stored on the host (quantized, f16 or bf16; memory-mapped when
/// the file was), shared by every step that reads it (a tied embedding and LM head hold one).
struct Stored {
    rows: usize,
    cols: usize,
    data: TensorData,
}

impl Stored {
    fn new(name: &str, t: &TensorData) -> Result<Self> {
        let bad = |message: String| RuntimeError::Param {
            name: name.into(),
            message,
        };
        let &[rows, cols] = t.ty.shape.as_slice() else {
            return Err(bad(format!("{} is not a matrix", t.ty)));
        };
        // Its byte length matches its type: `TensorData` checks it when made.
        Ok(Stored {
            rows,
            cols,
            // The one copy of the stored bytes (none when they are memory-mapped).
            data: t.clone(),
        })
    }

    fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Rows `ids` (each `< rows`), one after the other: `[ids.len(), cols]`.
    fn gather_rows(&self, ids: &[usize]) -> Vec<f32> {
        let c = self.cols;
        let mut out = vec![0.0; ids.len() * c];
        for (dst, &r) in out.chunks_exact_mut(c).zip(ids) {
            self.data.rows_f32_into(r..r + 1, dst);
        }
        out
    }

    /// Rows `rows` of the matrix, `[rows.len(), cols]`.
    fn dequantize(&self, rows: Range<usize>) -> Vec<f32> {
        let mut out = vec![0.0f32; rows.len() * self.cols];
        self.dequantize_into(rows, &mut out);
        out
    }

    /// Rows `rows` of the matrix into `out` (`rows.len() · cols` values), a large block split
    /// among the cores (the widening is otherwise the one serial part of a streamed linear).
    fn dequantize_into(&self, rows: Range<usize>, out: &mut [f32]) {
        use rayon::prelude::*;
        const PER_TASK: usize = 1 << 16;
        let per_task = (PER_TASK / self.cols.max(1)).max(1);
        if rows.len() <= per_task || self.cols == 0 {
            return self.data.rows_f32_into(rows, out);
        }
        out.par_chunks_mut(per_task * self.cols)
            .enumerate()
            .for_each(|(k, chunk)| {
                let r0 = rows.start + k * per_task;
                self.data
                    .rows_f32_into(r0..r0 + chunk.len() / self.cols, chunk);
            });
    }

    /// Rows per block of at most `max_elems` values (at least one row).
    fn block_rows(&self, max_elems: usize) -> usize {
        (max_elems / self.cols.max(1)).max(1)
    }

    /// `x · Wᵀ (+ bias)`, the matrix dequantized in row blocks of at most `max_elems` values:
    /// on the CPU one sgemm per block on the host, elsewhere burn's matmul per uploaded block.
    fn linear<B: Backend>(
        &self,
        x: Tensor<B, 3>,
        bias: Option<&Tensor<B, 1>>,
        max_elems: usize,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let step = self.block_rows(max_elems);
        let fill = |r: Range<usize>, out: &mut [f32]| self.dequantize_into(r, out);
        if let Some(y) = crate::cpu::linear_row_blocks(&x, self.shape(), step, fill, bias) {
            return y;
        }
        linear_row_blocks(x, self.row_blocks(max_elems, device), bias)
    }

    /// The matrix in slices of whole rows of at most `max_elems` values (at least one row),
    /// each dequantized and uploaded when the iterator reaches it.
    fn row_blocks<'a, B: Backend>(
        &'a self,
        max_elems: usize,
        device: &'a B::Device,
    ) -> impl Iterator<Item = Tensor<B, 2>> + 'a {
        let step = self.block_rows(max_elems);
        // An empty matrix still gives one (empty) block.
        (0..self.rows.max(1)).step_by(step).map(move |r0| {
            let n = step.min(self.rows - r0);
            upload::<B, 2>(self.dequantize(r0..r0 + n), [n, self.cols], device)
        })
    }
}

/// Values of a streamed weight dequantized at once (16 MiB of f32): a larger matrix, such as
/// an LM head, runs in slices of output rows, so its f32 form never exists whole.
const STREAM_BLOCK: usize = 1 << 22;

/// A float parameter as the kernels read it.
#[derive(Clone)]
pub(crate) enum ParamTensor<B: Backend> {
    Vector(Tensor<B, 1>),
    Matrix(Tensor<B, 2>),
}

impl<B: Backend> ParamTensor<B> {
    /// The values as one vector (a matrix flattened, a view where the backend allows).
    pub(crate) fn vector(&self) -> Tensor<B, 1> {
        match self {
            ParamTensor::Vector(t) => t.clone(),
            ParamTensor::Matrix(t) => t.clone().flatten(0, 1),
        }
    }

    fn matrix(&self) -> Tensor<B, 2> {
        match self {
            ParamTensor::Matrix(t) => t.clone(),
            ParamTensor::Vector(t) => t.clone().unsqueeze(),
        }
    }

    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            ParamTensor::Vector(t) => t.dims().to_vec(),
            ParamTensor::Matrix(t) => t.dims().to_vec(),
        }
    }
}

/// One float parameter of the interpreter.
pub(crate) struct ParamEntry<B: Backend> {
    pub(crate) name: String,
    pub(crate) tensor: ParamTensor<B>,
    /// A linear weight uploaded as `[in, out]` (inference), rather than as stored.
    transposed: bool,
}

enum Kernel {
    Input,
    /// Index into the interpreter's parameters, as are the other `usize` operands here.
    Embedding(usize),
    /// An embedding kept as stored: only the rows of the tokens asked for are widened.
    StoredEmbedding(Arc<Stored>),
    PositionEmbedding(usize),
    Norm {
        kind: NormKind,
        eps: f32,
        weight: usize,
        bias: Option<usize>,
        group: Option<usize>,
    },
    Linear {
        weight: usize,
        bias: Option<usize>,
        lora: Option<LoraKernel>,
    },
    /// A linear whose `[out, in]` weight is kept as stored and widened at each forward.
    StoredLinear {
        weight: Arc<Stored>,
        bias: Option<usize>,
        lora: Option<LoraKernel>,
    },
    Split(Vec<usize>),
    Attention {
        spec: AttentionSpec,
        /// Index into the KV cache.
        layer: usize,
    },
    Activation(Activation),
    Add,
    Scale(f32),
    SoftCap(f32),
    Mul,
    Output,
}

/// A LoRA adapter of a linear: parameter indices of `A` and `B` (transposed like linear weights
/// at inference, as stored when training).
#[derive(Clone, Copy)]
struct LoraKernel {
    a: usize,
    b: usize,
    scale: f32,
    dropout: f32,
}

struct Step {
    node: NodeId,
    kernel: Kernel,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    /// Slots whose last use is this step: freed after it runs.
    release: Vec<usize>,
    /// A linear whose result only feeds outputs (the LM head): when the caller wants some
    /// positions only, it runs on those rows.
    feeds_output_only: bool,
}

enum Val<B: Backend> {
    Tokens(Tensor<B, 2, Int>),
    Hidden(Tensor<B, 3>),
}

/// Keys and values of every attention layer for the positions seen so far, `[b, kv_heads, t, d]`.
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A model ready to run on one backend.
pub struct Interpreter<B: Backend> {
    device: B::Device,
    steps: Vec<Step>,
    /// Float parameters the steps read, by index.
    pub(crate) params: Vec<ParamEntry<B>>,
    /// The slot holding each value while it lives.
    slot_of: HashMap<ValueId, usize>,
    n_slots: usize,
    attention_layers: usize,
    vocab: usize,
    max_positions: usize,
    /// The distinct RoPEs; their tables are made per call for the positions it uses, never
    /// for the declared context (a config may claim billions of positions).
    rope: Vec<shrink_ir::Rope>,
}

/// RoPE's `cos` and `sin` tables, `[positions, rope_dim/2]`.
pub(crate) type RopeTables<B> = (Tensor<B, 2>, Tensor<B, 2>);

pub(crate) fn upload<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    // In the backend's own float type: burn otherwise uses the device's default, which one
    // backend sets for every backend sharing the device (f32 on the CPU).
    let opts = TensorCreationOptions::new(device.clone()).with_dtype(B::FloatElem::dtype());
    Tensor::from_data(BurnData::new(values, shape), opts)
}

pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    // Blocked for cache locality (these are the largest copies at load time), each output run
    // written contiguously from a tile of input rows that stays in L1.
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        let r1 = (r0 + T).min(rows);
        let tile = &values[r0 * cols..r1 * cols];
        for c in 0..cols {
            let dst = &mut out[c * rows + r0..c * rows + r1];
            for (d, src) in dst.iter_mut().zip(tile.chunks_exact(cols)) {
                *d = src[c];
            }
        }
    }
    out
}

impl<B: Backend> Interpreter<B> {
    /// Verifies the model and uploads its parameters, with the default [`ExecOptions`]
    /// (quantized weights streamed).
    pub fn new(model: &Model, device: &B::Device) -> Result<Self> {
        Self::with_options(model, device, ExecOptions::default())
    }

    /// Verifies the model and uploads its parameters; quantized weights of linears and
    /// embeddings stay packed unless `opts` asks to dequantize them.
    pub fn with_options(model: &Model, device: &B::Device, opts: ExecOptions) -> Result<Self> {
        model.verify()?;
        let graph = &model.graph;
        let order = graph
            .order()
            .map_err(|_| RuntimeError::Input("the graph has a cycle".into()))?;
        let param = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = model.weights.get(name).ok_or_else(|| RuntimeError::Param {
                name: name.into(),
                message: "no data".into(),
            })?;
            Ok((t.to_f32(), t.ty.shape.clone()))
        };
        // Float parameters, one entry per (name, layout).
        let mut params: Vec<ParamEntry<B>> = Vec::new();
        let mut index_of: HashMap<(String, bool), usize> = HashMap::new();
        let mut entry = |name: &str, transposed: bool, vector: bool| -> Result<usize> {
            // Training reads every parameter as stored.
            let transposed = transposed && !opts.trainable;
            if let Some(&i) = index_of.get(&(name.to_string(), transposed)) {
                return Ok(i);
            }
            let (v, s) = param(name)?;
            let tensor = match (vector, s.as_slice()) {
                (true, &[n]) => ParamTensor::Vector(upload::<B, 1>(v, [n], device)),
                (false, &[r, c]) if transposed => {
                    ParamTensor::Matrix(upload::<B, 2>(transpose(&v, r, c), [c, r], device))
                }
                (false, &[r, c]) => ParamTensor::Matrix(upload::<B, 2>(v, [r, c], device)),
                _ => {
                    return Err(RuntimeError::Param {
                        name: name.into(),
                        message: format!("unexpected shape {s:?}"),
                    })
                }
            };
            params.push(ParamEntry {
                name: name.to_string(),
                tensor,
                transposed,
            });
            index_of.insert((name.to_string(), transposed), params.len() - 1);
            Ok(params.len() - 1)
        };
        // Rows of a parameter already read by `entry`.
        let rows_of = |name: &str| model.weights.get(name).map_or(0, |t| t.ty.shape[0]);
        // Matrices kept as stored (Stream): quantized, f16 and bf16 ones, one per parameter name.
        let mut stored_cache: HashMap<String, Arc<Stored>> = HashMap::new();
        let mut stored = |name: &str| -> Result<Option<Arc<Stored>>> {
            if opts.quantized != QuantExec::Stream || opts.trainable {
                return Ok(None);
            }
            let t = model.weights.get(name).ok_or_else(|| RuntimeError::Param {
                name: name.into(),
                message: "no data".into(),
            })?;
            let as_stored = t.ty.quant.is_some() || matches!(t.ty.dtype, DType::F16 | DType::BF16);
            if !as_stored || t.ty.shape.len() != 2 {
                return Ok(None);
            }
            if let Some(p) = stored_cache.get(name) {
                return Ok(Some(p.clone()));
            }
            let p = Arc::new(Stored::new(name, t)?);
            stored_cache.insert(name.to_string(), p.clone());
            Ok(Some(p))
        };

        let mut slot_of: HashMap<ValueId, usize> = HashMap::new();
        let mut steps = Vec::with_capacity(order.len());
        let mut attention_layers = 0;
        let mut vocab = 0;
        let mut max_positions = graph
            .meta
            .get("context_length")
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        let mut rope: Vec<shrink_ir::Rope> = Vec::new();
        for id in order {
            let Some(node) = graph.node(id) else { continue };
            let kernel = match &node.op {
                Op::Input { .. } => Kernel::Input,
                Op::Embedding { weight } => match stored(weight)? {
                    Some(p) => {
                        vocab = p.rows;
                        Kernel::StoredEmbedding(p)
                    }
                    None => {
                        let w = entry(weight, false, false)?;
                        vocab = rows_of(weight);
                        Kernel::Embedding(w)
                    }
                },
                Op::PositionEmbedding { weight } => {
                    let w = entry(weight, false, false)?;
                    max_positions = max_positions.min(rows_of(weight));
                    Kernel::PositionEmbedding(w)
                }
                Op::Norm {
                    kind,
                    eps,
                    weight,
                    bias,
                    group,
                } => Kernel::Norm {
                    kind: *kind,
                    eps: *eps,
                    group: *group,
                    weight: entry(weight, false, true)?,
                    bias: bias.as_deref().map(|b| entry(b, false, true)).transpose()?,
                },
                Op::Linear { weight, bias, lora } => {
                    let bias = bias.as_deref().map(|b| entry(b, false, true)).transpose()?;
                    let lora = match lora {
                        Some(l) => Some(LoraKernel {
                            a: entry(&l.a, true, false)?,
                            b: entry(&l.b, true, false)?,
                            scale: l.scale,
                            dropout: l.dropout,
                        }),
                        None => None,
                    };
                    match stored(weight)? {
                        Some(weight) => Kernel::StoredLinear { weight, bias, lora },
                        None => Kernel::Linear {
                            weight: entry(weight, true, false)?,
                            bias,
                            lora,
                        },
                    }
                }
                Op::Split { sizes } => Kernel::Split(sizes.clone()),
                Op::Attention(spec) => {
                    if let Some(r) = spec.rope {
                        if !rope.contains(&r) {
                            rope.push(r);
                        }
                    }
                    attention_layers += 1;
                    Kernel::Attention {
                        spec: *spec,
                        layer: attention_layers - 1,
                    }
                }
                Op::Activation(a) => Kernel::Activation(*a),
                Op::Add => Kernel::Add,
                Op::Mul => Kernel::Mul,
                Op::Scale { factor } => Kernel::Scale(*factor),
                Op::SoftCap { cap } => Kernel::SoftCap(*cap),
                Op::Output { .. } => Kernel::Output,
            };
            let inputs = node.inputs.iter().map(|v| slot_of[v]).collect();
            let outputs = node
                .outputs
                .iter()
                .map(|v| {
                    let s = slot_of.len();
                    slot_of.insert(*v, s);
                    s
                })
                .collect();
            steps.push(Step {
                node: id,
                kernel,
                inputs,
                outputs,
                release: Vec::new(),
                feeds_output_only: matches!(node.op, Op::Linear { .. })
                    && graph.feeds_only_outputs(id),
            });
        }
        if !rope.is_empty() && max_positions == usize::MAX {
            return Err(RuntimeError::Input(
                "the model uses RoPE but declares no context_length".into(),
            ));
        }
        // Free each slot after its last use.
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            for &slot in &s.inputs {
                last_use.insert(slot, i);
            }
        }
        for (slot, i) in last_use {
            steps[i].release.push(slot);
        }
        Ok(Interpreter {
            device: device.clone(),
            params,
            n_slots: slot_of.len(),
            slot_of,
            steps,
            attention_layers,
            vocab,
            max_positions,
            rope,
        })
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    fn matrix(&self, index: usize) -> Tensor<B, 2> {
        self.params[index].tensor.matrix()
    }

    /// Parameter `index` as the right operand of `x · wᵀ` (`[in, out]`).
    fn matrix_t(&self, index: usize) -> Tensor<B, 2> {
        let w = &self.params[index];
        match w.transposed {
            true => w.tensor.matrix(),
            false => w.tensor.matrix().transpose(),
        }
    }

    /// `y + scale · (dropout(x) Aᵀ) Bᵀ`; dropout only when training (`dropout_on`).
    fn add_lora(
        &self,
        y: Tensor<B, 3>,
        x: Tensor<B, 3>,
        lora: Option<&LoraKernel>,
        dropout_on: bool,
    ) -> Tensor<B, 3> {
        let Some(l) = lora else { return y };
        let x = if dropout_on && l.dropout > 0.0 {
            let keep = 1.0 - l.dropout as f64;
            let mask = Tensor::<B, 3>::random(
                x.dims(),
                burn::tensor::Distribution::Bernoulli(keep),
                &self.device,
            );
            x * mask / keep
        } else {
            x
        };
        y + lora_update(x, &self.matrix_t(l.a), &self.matrix_t(l.b), l.scale)
    }

    fn vector(&self, index: usize) -> Tensor<B, 1> {
        self.params[index].tensor.vector()
    }

    /// Bytes of the matrices held as stored ([`QuantExec::Stream`]), each counted once however
    /// many steps share it.
    pub fn stored_bytes(&self) -> usize {
        let mut seen: Vec<*const Stored> = Vec::new();
        let mut total = 0;
        for step in &self.steps {
            let p = match &step.kernel {
                Kernel::StoredEmbedding(p) | Kernel::StoredLinear { weight: p, .. } => p,
                _ => continue,
            };
            if !seen.contains(&Arc::as_ptr(p)) {
                seen.push(Arc::as_ptr(p));
                total += p.data.nbytes();
            }
        }
        total
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Positions the model can attend over.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache {
            layers: (0..self.attention_layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Logits `[b, s, vocab]` for a batch of equally long token sequences. With a cache, the
    /// tokens continue the cached positions and the cache is extended.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        self.forward_rows(tokens, cache, None)
    }

    /// Like [`Interpreter::forward`], but returns only the logits of positions `rows` (of the
    /// tokens given), `[b, rows.len(), vocab]`; the output head runs on those rows alone.
    pub fn forward_rows(
        &self,
        tokens: &[Vec<u32>],
        cache: Option<&mut KvCache<B>>,
        rows: Option<std::ops::Range<usize>>,
    ) -> Result<Tensor<B, 3>> {
        self.run(tokens, cache, rows, &[], None)
            .map(|(logits, _)| logits)
    }

    /// Logits and the values `watch` (hidden states `[b, s, width]`, in that order), for
    /// losses on intermediate layers.
    pub fn forward_watching(
        &self,
        tokens: &[Vec<u32>],
        watch: &[ValueId],
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>)> {
        self.run(tokens, None, None, watch, None)
    }

    /// As [`Interpreter::forward_watching`], in training mode: LoRA dropout is applied, its
    /// masks drawn from the backend's generator seeded with `seed` (so a step repeats).
    pub(crate) fn forward_training(
        &self,
        tokens: &[Vec<u32>],
        watch: &[ValueId],
        seed: u64,
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>)> {
        self.run(tokens, None, None, watch, Some(seed))
    }

    fn run(
        &self,
        tokens: &[Vec<u32>],
        mut cache: Option<&mut KvCache<B>>,
        rows: Option<std::ops::Range<usize>>,
        watch: &[ValueId],
        dropout_seed: Option<u64>,
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>)> {
        if let Some(seed) = dropout_seed {
            B::seed(&self.device, seed);
        }
        let dropout_on = dropout_seed.is_some();
        let watch_slots: Vec<usize> = watch
            .iter()
            .map(|v| {
                self.slot_of.get(v).copied().ok_or_else(|| {
                    RuntimeError::Input(format!("value {v:?} is not computed by this model"))
                })
            })
            .collect::<Result<_>>()?;
        let mut watched: Vec<Option<Tensor<B, 3>>> = vec![None; watch.len()];
        let b = tokens.len();
        let s = tokens.first().map_or(0, Vec::len);
        if b == 0 || s == 0 || tokens.iter().any(|t| t.len() != s) {
            return Err(RuntimeError::Input(
                "forward needs a non-empty batch of equally long sequences".into(),
            ));
        }
        if let Some(r) = &rows {
            if r.is_empty() || r.end > s {
                return Err(RuntimeError::Input(format!(
                    "rows {r:?} are not within the {s} positions given"
                )));
            }
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        if past + s > self.max_positions {
            return Err(RuntimeError::TooLong {
                len: past + s,
                max: self.max_positions,
            });
        }
        let mut flat = Vec::with_capacity(b * s);
        for &id in tokens.iter().flatten() {
            if id as usize >= self.vocab {
                return Err(RuntimeError::TokenOutOfRange {
                    id,
                    vocab: self.vocab,
                });
            }
            flat.push(id as i64);
        }
        let tokens_t: Tensor<B, 2, Int> =
            Tensor::from_data(BurnData::new(flat, [b, s]), &self.device);
        // One causal mask for every attention layer: -inf where key j lies after query i.
        let mask = (s > 1).then(|| {
            let t = past + s;
            let mut bias = vec![0.0f32; s * t];
            for i in 0..s {
                for j in (past + i + 1)..t {
                    bias[i * t + j] = f32::NEG_INFINITY;
                }
            }
            upload::<B, 2>(bias, [s, t], &self.device)
        });
        // RoPE tables for positions `past..past + s` alone.
        let rope_now: Vec<(shrink_ir::Rope, RopeTables<B>)> = self
            .rope
            .iter()
            .map(|r| (*r, rope_tables(r, past, s, &self.device)))
            .collect();
        let mut slots: Vec<Option<Val<B>>> = (0..self.n_slots).map(|_| None).collect();
        let mut out = None;
        for step in &self.steps {
            // An elementwise kernel's operand at its last use leaves its slot, so that the
            // kernel can work in place (`cpu::par_map`).
            let in_place = matches!(step.kernel, Kernel::Activation(_) | Kernel::SoftCap(_))
                && step.release.contains(&step.inputs[0]);
            let mut owned = None;
            if in_place {
                if let Some(Val::Hidden(t)) = slots[step.inputs[0]].take() {
                    owned = Some(t);
                }
            }
            let hidden = |i: usize| -> Result<Tensor<B, 3>> {
                match slots[step.inputs[i]].as_ref() {
                    Some(Val::Hidden(t)) => Ok(t.clone()),
                    _ => Err(RuntimeError::Node {
                        node: step.node,
                        message: format!("operand {i} is not a hidden state"),
                    }),
                }
            };
            let toks = |i: usize| -> Result<Tensor<B, 2, Int>> {
                match slots[step.inputs[i]].as_ref() {
                    Some(Val::Tokens(t)) => Ok(t.clone()),
                    _ => Err(RuntimeError::Node {
                        node: step.node,
                        message: format!("operand {i} is not token ids"),
                    }),
                }
            };
            let results: Vec<Val<B>> = match &step.kernel {
                Kernel::Input => vec![Val::Tokens(tokens_t.clone())],
                Kernel::Embedding(w) => {
                    vec![Val::Hidden(embedding(self.matrix(*w), toks(0)?))]
                }
                Kernel::StoredEmbedding(p) => {
                    // The ids were checked against the vocabulary above.
                    let ids: Vec<usize> = tokens.iter().flatten().map(|&t| t as usize).collect();
                    let rows = p.gather_rows(&ids);
                    vec![Val::Hidden(upload::<B, 3>(
                        rows,
                        [b, s, p.cols],
                        &self.device,
                    ))]
                }
                Kernel::PositionEmbedding(w) => {
                    let w = self.matrix(*w);
                    let d = w.dims()[1];
                    let rows = w.narrow(0, past, s);
                    vec![Val::Hidden(rows.unsqueeze::<3>().expand([b, s, d]))]
                }
                Kernel::Norm {
                    kind,
                    eps,
                    weight,
                    bias,
                    group,
                } => vec![Val::Hidden(norm(
                    hidden(0)?,
                    *kind,
                    *eps,
                    &self.vector(*weight),
                    bias.map(|b| self.vector(b)).as_ref(),
                    *group,
                ))],
                Kernel::Linear { weight, bias, lora } => {
                    let x = match &rows {
                        Some(r) if step.feeds_output_only => hidden(0)?.narrow(1, r.start, r.len()),
                        _ => hidden(0)?,
                    };
                    let bias = bias.map(|b| self.vector(b));
                    let y = linear(x.clone(), &self.matrix_t(*weight), bias.as_ref());
                    vec![Val::Hidden(self.add_lora(y, x, lora.as_ref(), dropout_on))]
                }
                Kernel::StoredLinear { weight, bias, lora } => {
                    let x = match &rows {
                        Some(r) if step.feeds_output_only => hidden(0)?.narrow(1, r.start, r.len()),
                        _ => hidden(0)?,
                    };
                    let bias = bias.map(|b| self.vector(b));
                    let y = weight.linear(x.clone(), bias.as_ref(), STREAM_BLOCK, &self.device);
                    vec![Val::Hidden(self.add_lora(y, x, lora.as_ref(), dropout_on))]
                }
                Kernel::Split(sizes) => {
                    let x = hidden(0)?;
                    let mut start = 0;
                    sizes
                        .iter()
                        .map(|&n| {
                            let part = x.clone().narrow(2, start, n);
                            start += n;
                            Val::Hidden(part)
                        })
                        .collect()
                }
                Kernel::Attention { spec, layer } => {
                    let kv = cache.as_deref_mut().map(|c| &mut c.layers[*layer]);
                    let rope = spec
                        .rope
                        .and_then(|r| rope_now.iter().find(|(k, _)| *k == r).map(|(_, t)| t));
                    vec![Val::Hidden(attention(
                        hidden(0)?,
                        hidden(1)?,
                        hidden(2)?,
                        spec,
                        rope,
                        past,
                        kv,
                        mask.as_ref(),
                    ))]
                }
                Kernel::Activation(a) => {
                    let x = owned.map_or_else(|| hidden(0), Ok)?;
                    vec![Val::Hidden(activate(x, *a))]
                }
                Kernel::Add => vec![Val::Hidden(hidden(0)? + hidden(1)?)],
                Kernel::Mul => vec![Val::Hidden(hidden(0)? * hidden(1)?)],
                Kernel::Scale(f) => vec![Val::Hidden(hidden(0)?.mul_scalar(*f))],
                Kernel::SoftCap(c) => {
                    let x = owned.map_or_else(|| hidden(0), Ok)?;
                    vec![Val::Hidden(soft_cap(x, *c))]
                }
                Kernel::Output => {
                    let y = hidden(0)?;
                    out = Some(match &rows {
                        Some(r) if y.dims()[1] == s => y.narrow(1, r.start, r.len()),
                        _ => y,
                    });
                    vec![]
                }
            };
            for (slot, v) in step.outputs.iter().zip(results) {
                for (k, w) in watch_slots.iter().enumerate() {
                    if w == slot {
                        if let Val::Hidden(t) = &v {
                            watched[k] = Some(t.clone());
                        }
                    }
                }
                slots[*slot] = Some(v);
            }
            for &slot in &step.release {
                slots[slot] = None;
            }
        }
        if let Some(c) = cache {
            c.len += s;
        }
        let out = out.ok_or_else(|| RuntimeError::Input("the graph has no output".into()))?;
        let watched = watched
            .into_iter()
            .zip(watch)
            .map(|(t, v)| {
                t.ok_or_else(|| RuntimeError::Input(format!("value {v:?} is not a hidden state")))
            })
            .collect::<Result<_>>()?;
        Ok((out, watched))
    }
}

pub(crate) fn rope_tables<B: Backend>(
    rope: &shrink_ir::Rope,
    first: usize,
    positions: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (cos, sin) = rope_cos_sin(rope, first, positions);
    let half = rope.dim / 2;
    (
        upload::<B, 2>(cos, [positions, half], device),
        upload::<B, 2>(sin, [positions, half], device),
    )
}

/// RoPE's `cos` and `sin` of positions `first..first + n`, `[n, dim/2]` row-major: the one
/// definition the tensor-op and the host attention share.
pub(crate) fn rope_cos_sin(rope: &shrink_ir::Rope, first: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let inv_freqs = rope.inv_freqs();
    // YaRN's attention factor scales both tables after the cosine, as transformers does (1 for
    // the other scalings, which leaves every value as it is).
    let scale = rope.attention_factor();
    let half = inv_freqs.len();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in first..first + n {
        for &inv_freq in &inv_freqs {
            // As transformers: the angle in f32.
            let angle = p as f32 * inv_freq;
            cos.push(angle.cos() * scale);
            sin.push(angle.sin() * scale);
        }
    }
    (cos, sin)
}

/// A LoRA adapter's update `scale · (x Aᵀ) Bᵀ`, given `Aᵀ [in, r]` and `Bᵀ [r, out]`: the one
/// definition the interpreter and the calibration executor share.
pub(crate) fn lora_update<B: Backend>(
    x: Tensor<B, 3>,
    a_t: &Tensor<B, 2>,
    b_t: &Tensor<B, 2>,
    scale: f32,
) -> Tensor<B, 3> {
    linear(linear(x, a_t, None), b_t, None) * scale
}

pub(crate) fn linear<B: Backend>(
    x: Tensor<B, 3>,
    weight_t: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Tensor<B, 3> {
    if let Some(y) = crate::cpu::linear(&x, weight_t, bias) {
        return y;
    }
    let [b, s, d] = x.dims();
    let out = weight_t.dims()[1];
    let y = x.reshape([b * s, d]).matmul(weight_t.clone());
    let y = match bias {
        Some(bias) => y + bias.clone().unsqueeze::<2>(),
        None => y,
    };
    y.reshape([b, s, out])
}

/// `x · wᵀ` for a weight `[out, in]` given as it is stored, in blocks of rows taken one at a
/// time (each dropped after use), computed as `(w · xᵀ)ᵀ` with burn's ops (the CPU backend
/// takes `cpu::linear_row_blocks` instead). burn-ndarray's matmul copies a
/// transposed (strided) operand into row-major order first, so this copies the activations
/// rather than the weight (measured on a 1536×576 matrix, 2 cores: 1.5 ms per token and 24 ms
/// for 512 positions, against 3.7 and 47 ms with `wᵀ` as a view; dequantizing the weight
/// transposed on the host took 4.0 and 49 ms).
pub(crate) fn linear_row_blocks<B: Backend>(
    x: Tensor<B, 3>,
    blocks: impl Iterator<Item = Tensor<B, 2>>,
    bias: Option<&Tensor<B, 1>>,
) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let xt = x.reshape([b * s, d]).transpose();
    let mut parts: Vec<Tensor<B, 2>> = blocks.map(|w| w.matmul(xt.clone())).collect();
    let y = match parts.len() {
        1 => parts.remove(0),
        _ => Tensor::cat(parts, 0),
    };
    let out = y.dims()[0];
    let y = y.transpose();
    let y = match bias {
        Some(bias) => y + bias.clone().unsqueeze::<2>(),
        None => y,
    };
    y.reshape([b, s, out])
}

pub(crate) fn norm<B: Backend>(
    x: Tensor<B, 3>,
    kind: NormKind,
    eps: f32,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
    group: Option<usize>,
) -> Tensor<B, 3> {
    // A grouped norm is the plain one over rows of `group` features (the verifier checked
    // that the group divides the width).
    let [b, s, d] = x.dims();
    if let Some(g) = group.filter(|&g| g != d && g > 0) {
        let rows = x.reshape([b, s * (d / g), g]);
        return norm(rows, kind, eps, weight, bias, None).reshape([b, s, d]);
    }
    if let Some(y) = crate::cpu::norm(&x, kind, eps, weight, bias) {
        return y;
    }
    let w = weight.clone().unsqueeze::<3>();
    // Divide rather than multiply by `recip()`: burn-ndarray's SIMD reciprocal is approximate
    // (about 1e-4 relative), which alone put logits 3e-4 away from transformers.
    let y = match kind {
        NormKind::Rms => {
            let ms = x.clone().powi_scalar(2).mean_dim(2);
            x / (ms + eps).sqrt()
        }
        NormKind::Layer => {
            let mean = x.clone().mean_dim(2);
            let centered = x - mean;
            let var = centered.clone().powi_scalar(2).mean_dim(2);
            centered / (var + eps).sqrt()
        }
    } * w;
    match bias {
        Some(b) => y + b.clone().unsqueeze::<3>(),
        None => y,
    }
}

pub(crate) fn activate<B: Backend>(x: Tensor<B, 3>, a: Activation) -> Tensor<B, 3> {
    match a {
        // x·sigmoid(x) with one exp: burn's default sigmoid takes three transcendental passes.
        Activation::Silu => match crate::cpu::silu(x) {
            Ok(y) => y,
            Err(x) => x.clone() / (x.neg().exp() + 1.0),
        },
        Activation::GeluTanh => match crate::cpu::gelu_tanh(x) {
            Ok(y) => y,
            Err(x) => activation::gelu_approximate(x),
        },
        // From erf: burn 0.21's own gelu differentiates the tanh approximation instead.
        Activation::Gelu => x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5,
        Activation::Relu => activation::relu(x),
    }
}

/// Applies rotary embedding to `x [b, h, s, d]`; `tables` start at the position of x's first
/// row.
pub(crate) fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    tables: &(Tensor<B, 2>, Tensor<B, 2>),
) -> Tensor<B, 4> {
    let [_, _, s, d] = x.dims();
    let half = tables.0.dims()[1];
    let rot = 2 * half;
    let cos = tables.0.clone().narrow(0, 0, s).unsqueeze::<4>();
    let sin = tables.1.clone().narrow(0, 0, s).unsqueeze::<4>();
    let (xr, pass) = if rot < d {
        (x.clone().narrow(3, 0, rot), Some(x.narrow(3, rot, d - rot)))
    } else {
        (x, None)
    };
    let x1 = xr.clone().narrow(3, 0, half);
    let x2 = xr.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    let mut parts = vec![r1, r2];
    parts.extend(pass);
    Tensor::cat(parts, 3)
}

/// `cap · tanh(x / cap)`: on the host for the CPU backend.
pub(crate) fn soft_cap<B: Backend>(x: Tensor<B, 3>, cap: f32) -> Tensor<B, 3> {
    match crate::cpu::soft_cap(x, cap) {
        Ok(y) => y,
        Err(x) => x.div_scalar(cap).tanh().mul_scalar(cap),
    }
}

/// Query rows per block of causal attention: each block scores only the keys it can see, which
/// skips about 40% of the work at 512 positions.
const QUERY_BLOCK: usize = 128;

/// Attention of `q [b, s, heads·d]` over `k`, `v [b, t, kv_heads·d]`: on the host for the CPU
/// backend without a cache (`host_attention`), else from tensor ops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    spec: &AttentionSpec,
    rope: Option<&(Tensor<B, 2>, Tensor<B, 2>)>,
    past: usize,
    cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    mask: Option<&Tensor<B, 2>>,
) -> Tensor<B, 3> {
    if cache.is_none() {
        let causal = spec.causal && mask.is_some();
        if let Some(out) = crate::host_attention::attention(&q, &k, &v, spec, rope, past, causal) {
            return out;
        }
    }
    attention_ops(q, k, v, spec, rope, past, cache, mask)
}

/// Attention from burn tensor ops: any backend, differentiable, with a KV cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_ops<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    spec: &AttentionSpec,
    rope: Option<&(Tensor<B, 2>, Tensor<B, 2>)>,
    past: usize,
    cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    mask: Option<&Tensor<B, 2>>,
) -> Tensor<B, 3> {
    let [b, s, _] = q.dims();
    let (h, kvh, d) = (spec.heads, spec.kv_heads, spec.head_dim);
    let g = h / kvh;
    let mut q = q.reshape([b, s, h, d]).swap_dims(1, 2);
    let mut k = k.reshape([b, s, kvh, d]).swap_dims(1, 2);
    let mut v = v.reshape([b, s, kvh, d]).swap_dims(1, 2);
    if let Some(t) = rope {
        q = apply_rope(q, t);
        k = apply_rope(k, t);
    }
    if let Some(slot) = cache {
        if let Some((pk, pv)) = slot.take() {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        *slot = Some((k.clone(), v.clone()));
    }
    let t = k.dims()[2];
    let scale = f64::from(spec.score_scale());
    // Query heads of one KV group side by side: [b, kvh, g, s, d] against [b, kvh, t, d].
    let q = q.reshape([b, kvh, g, s, d]);
    let causal_mask = mask.filter(|_| spec.causal);
    let window = spec.window.filter(|_| spec.causal);
    let blocks: Vec<(usize, usize)> = match causal_mask {
        Some(_) => (0..s)
            .step_by(QUERY_BLOCK)
            .map(|i0| (i0, (i0 + QUERY_BLOCK).min(s)))
            .collect(),
        None => vec![(0, s)],
    };
    let mut outs = Vec::with_capacity(blocks.len());
    for (i0, i1) in blocks {
        let n = i1 - i0;
        // Keys after the block's last query are masked for every row of it, and with a sliding
        // window so are those before its first query's window: skip them.
        let tb = if causal_mask.is_some() { past + i1 } else { t };
        let lo = window.map_or(0, |w| (past + i0 + 1).saturating_sub(w));
        let qb = q.clone().narrow(3, i0, n).reshape([b, kvh, g * n, d]);
        let kb = k.clone().narrow(2, lo, tb - lo);
        let vb = v.clone().narrow(2, lo, tb - lo);
        let mut scores = qb.matmul(kb.swap_dims(2, 3)) * scale;
        if let Some(c) = spec.softcap {
            scores = scores.div_scalar(c).tanh().mul_scalar(c);
        }
        let bias = match (causal_mask, window) {
            // A single query (decoding) sees exactly keys `lo..t`: nothing to mask.
            (None, _) => None,
            (Some(m), None) => Some(m.clone().narrow(0, i0, n).narrow(1, 0, tb)),
            (Some(_), Some(w)) => {
                let cols = tb - lo;
                let mut bias = vec![0.0f32; n * cols];
                for (r, row) in bias.chunks_exact_mut(cols).enumerate() {
                    let at = past + i0 + r;
                    for (c, x) in row.iter_mut().enumerate() {
                        let j = lo + c;
                        if j > at || j + w <= at {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                Some(upload::<B, 2>(bias, [n, cols], &scores.device()))
            }
        };
        if let Some(bias) = bias {
            let cols = tb - lo;
            let bias = bias.unsqueeze::<5>();
            scores = (scores.reshape([b, kvh, g, n, cols]) + bias).reshape([b, kvh, g * n, cols]);
        }
        let probs = activation::softmax(scores, 3);
        outs.push(probs.matmul(vb).reshape([b, kvh, g, n, d]));
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(outs, 3)
    };
    out.reshape([b, h, s, d])
        .swap_dims(1, 2)
        .reshape([b, s, h * d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use shrink_ir::QuantScheme;

    fn values(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect()
    }

    fn packed(scheme: QuantScheme, rows: usize, cols: usize) -> (Stored, Vec<f32>) {
        let bytes = scheme
            .quantize(&[rows, cols], &values(rows, cols))
            .expect("quantize");
        let t = TensorData::quantized(scheme, vec![rows, cols], bytes).expect("data");
        let p = Stored::new("w", &t).expect("packed");
        (p, t.to_f32())
    }

    /// A matrix stored in half precision, and its values widened whole.
    fn half(dtype: DType, rows: usize, cols: usize) -> (Stored, Vec<f32>) {
        let t = TensorData::from_f32(dtype, vec![rows, cols], &values(rows, cols)).expect("data");
        (Stored::new("w", &t).expect("stored"), t.to_f32())
    }

    #[test]
    fn packed_rows_match_the_dequantized_matrix() {
        for scheme in ["q4_0", "int4_g32_asym", "nf4_b32_dq", "q8_0"] {
            let scheme: QuantScheme = scheme.parse().expect("scheme");
            let (rows, cols) = (45, 96);
            let (p, dense) = packed(scheme, rows, cols);
            assert_eq!(p.dequantize(0..rows), dense);
            let got = p.gather_rows(&[3, 44, 3, 0]);
            let want: Vec<f32> = [3, 44, 3, 0]
                .iter()
                .flat_map(|&r| dense[r * cols..(r + 1) * cols].to_vec())
                .collect();
            assert_eq!(got, want, "{scheme}");
        }
        // f16 and bf16 rows widen to exactly what the whole tensor widens to.
        for dtype in [DType::F16, DType::BF16] {
            let (p, dense) = half(dtype, 45, 96);
            assert_eq!(p.dequantize(0..45), dense, "{dtype:?}");
            assert_eq!(p.dequantize(44..45), dense[44 * 96..], "{dtype:?}");
            assert_ne!(dense, values(45, 96), "{dtype:?} rounds");
        }
    }

    #[test]
    fn streamed_linear_equals_linear_on_the_dequantized_weight() {
        let (out, inp) = (45, 64);
        for (p, dense) in [
            packed(QuantScheme::Q4_1, out, inp),
            half(DType::BF16, out, inp),
            half(DType::F16, out, inp),
        ] {
            streamed_linear_matches(&p, &dense, out, inp);
        }
    }

    fn streamed_linear_matches(p: &Stored, dense: &[f32], out: usize, inp: usize) {
        let device = Default::default();
        let bias: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
        let bias = upload::<Cpu, 1>(bias, [out], &device);
        let wt = upload::<Cpu, 2>(transpose(dense, out, inp), [inp, out], &device);
        for s in [1, 7] {
            let x: Vec<f32> = (0..2 * s * inp)
                .map(|i| ((i * 13 % 29) as f32) / 29.0)
                .collect();
            let x = upload::<Cpu, 3>(x, [2, s, inp], &device);
            let want = linear(x.clone(), &wt, Some(&bias))
                .into_data()
                .to_vec::<f32>()
                .expect("want");
            // Whole, and in blocks of 8 rows (the last one ragged).
            // Burn's matmul per uploaded block and the host sgemm per block.
            for block in [STREAM_BLOCK, 8 * inp] {
                let tensor_ops =
                    linear_row_blocks(x.clone(), p.row_blocks(block, &device), Some(&bias));
                let host = crate::cpu::linear_row_blocks(
                    &x,
                    p.shape(),
                    p.block_rows(block),
                    |r, out| p.dequantize_into(r, out),
                    Some(&bias),
                )
                .expect("the host path takes CPU tensors");
                // What the interpreter calls picks the host path on the CPU.
                let picked = p.linear(x.clone(), Some(&bias), block, &device);
                assert_eq!(
                    picked.into_data().to_vec::<f32>().expect("picked"),
                    host.clone().into_data().to_vec::<f32>().expect("host")
                );
                for (path, got) in [("tensor ops", tensor_ops), ("host", host)] {
                    assert_eq!(got.dims(), [2, s, out]);
                    let got = got.into_data().to_vec::<f32>().expect("got");
                    let d = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(d < 1e-5, "{path}, s={s}, block {block}: {d}");
                }
            }
        }
    }

    #[test]
    fn host_attention_equals_the_tensor_op_path() {
        let device = Default::default();
        let (b, s) = (2, 150);
        // GQA with RoPE on part of each head, plain multi-head attention without RoPE.
        for (heads, kv_heads, d, rope) in [(6, 2, 16, Some(12)), (3, 3, 8, None)] {
            let spec = AttentionSpec {
                heads,
                kv_heads,
                head_dim: d,
                rope: rope.map(|dim| shrink_ir::Rope {
                    theta: 10000.0,
                    dim,
                    scaling: shrink_ir::RopeScaling::None,
                }),
                causal: true,
                window: None,
                scale: None,
                softcap: None,
            };
            let make = |n: usize, seed: usize| {
                let x: Vec<f32> = (0..b * s * n * d)
                    .map(|i| (((i + seed) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
                    .collect();
                upload::<Cpu, 3>(x, [b, s, n * d], &device)
            };
            let (q, k, v) = (make(heads, 1), make(kv_heads, 2), make(kv_heads, 3));
            let tables = spec.rope.map(|r| rope_tables::<Cpu>(&r, 0, s, &device));
            let mut bias = vec![0.0f32; s * s];
            for i in 0..s {
                for j in i + 1..s {
                    bias[i * s + j] = f32::NEG_INFINITY;
                }
            }
            let mask = upload::<Cpu, 2>(bias, [s, s], &device);
            // Causal or not; sliding windows (over the two query blocks of 128), one with a
            // score scale of its own.
            for (causal, window, scale, softcap) in [
                (true, None, None, None),
                (false, None, None, None),
                (true, Some(40), None, None),
                (true, Some(7), Some(0.3), Some(2.0)),
                (false, None, None, Some(1.5)),
            ] {
                let spec = AttentionSpec {
                    causal,
                    window,
                    scale,
                    softcap,
                    ..spec
                };
                let run = |host: bool| -> Vec<f32> {
                    let (q, k, v) = (q.clone(), k.clone(), v.clone());
                    let m = Some(&mask);
                    let out = if host {
                        attention(q, k, v, &spec, tables.as_ref(), 0, None, m)
                    } else {
                        attention_ops(q, k, v, &spec, tables.as_ref(), 0, None, m)
                    };
                    out.into_data().to_vec::<f32>().expect("values")
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got.len(), want.len());
                let d = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    d < 1e-5,
                    "heads {heads}, causal {causal}, window {window:?}, scale {scale:?}, \
                     softcap {softcap:?}: {d}"
                );
            }
        }
    }

    #[test]
    fn a_stored_parameter_that_is_not_a_matrix_names_the_tensor() {
        let t = TensorData::from_f32(DType::BF16, vec![64], &[0.0; 64]).expect("t");
        let e = Stored::new("model.w", &t)
            .err()
            .expect("not a matrix")
            .to_string();
        assert!(e.contains("model.w") && e.contains("not a matrix"), "{e}");
    }
}
