//! Layer-by-layer calibration: the model runs over a set of calibration sequences node by node
//! (every sequence through one node before the next), reading each parameter from the model
//! only when its node runs. A hook sees all inputs of a group of linears before they run and
//! may rewrite weights (quantize, prune, rescale); the nodes after it then compute with the
//! rewritten weights, so later layers are calibrated on what the compressed earlier layers
//! produce (as GPTQ does). Memory stays at one layer's working set plus the activations in
//! flight, never the whole model on the device.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData as BurnData};
use shrink_ir::{Model, Node, NodeId, Op, ValueId};

use crate::error::{Result, RuntimeError};
use crate::interp::{
    activate, attention, linear, lora_update, norm, rope_tables, transpose, upload,
};
use crate::{Cpu, Device};

/// The inputs of a group of linears that read the same value, over all calibration tokens.
pub trait Site {
    /// Input features.
    fn features(&self) -> usize;
    /// Calibration tokens (rows of the input).
    fn tokens(&self) -> usize;
    /// `Σ xᵀx` over all tokens, `[features, features]` row-major.
    fn gram(&self) -> Vec<f32>;
    /// Mean of `|x|` per feature.
    fn abs_mean(&self) -> Vec<f32>;
    /// `Σ x²` per feature over all tokens (the diagonal of `gram`, without the rest of it).
    fn sq_sum(&self) -> Vec<f32>;
    /// `a [m, k] · b [k, n]` on the calibration device.
    fn matmul(&self, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32>;
    /// Every token's features, `[tokens, features]` row-major (sequences in order).
    fn rows(&self) -> Vec<f32>;
    /// `Σ x̃ᵀx` over all tokens, `[features, features]` row-major, where `x̃` is the same
    /// value in the uncompressed model (row index: `x̃`'s feature); `None` unless the hook
    /// asked for the reference stream.
    fn cross(&self) -> Option<Vec<f32>> {
        None
    }
}

/// A linear read at a site: its node and weight parameter.
#[derive(Clone, Debug)]
pub struct SiteLinear {
    pub node: NodeId,
    pub weight: String,
}

/// What a calibrating pass does at each site.
pub trait CalibrationHook {
    /// Whether the linear with this weight is calibrated.
    fn wants(&self, weight: &str) -> bool;
    /// Called once per value feeding wanted linears, before the first of them runs. It may
    /// rewrite any weight of `model`, including those of nodes that already ran (a norm that
    /// absorbs a scale); it then returns per-feature factors by which the value in flight is
    /// multiplied, so that what follows sees what the rewritten model computes.
    fn site(
        &mut self,
        model: &mut Model,
        value: ValueId,
        linears: &[SiteLinear],
        site: &dyn Site,
    ) -> Result<Option<Vec<f32>>>;
    /// Values (besides sites) the hook wants to see, e.g. the residual stream between layers.
    fn watches(&self) -> Vec<ValueId> {
        Vec::new()
    }
    /// Whether to run the uncompressed model beside the one being rewritten, so that sites
    /// can give [`Site::cross`] (twice the forward work).
    fn wants_reference(&self) -> bool {
        false
    }
    /// Called once per watched value, right after its node ran.
    fn watched(&mut self, _value: ValueId, _x: &dyn Site) -> Result<()> {
        Ok(())
    }
}

/// Sequences per forward batch: bounds attention's working set.
const BATCH: usize = 8;

/// Runs `sequences` (equally long) through `model` on `device`, calling `hook` at every site,
/// and stops after the last wanted linear. `progress(done, total)` counts sites.
pub fn run(
    model: &mut Model,
    sequences: &[Vec<u32>],
    device: Device,
    hook: &mut dyn CalibrationHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    match device {
        Device::Cpu => run_on::<Cpu>(
            model,
            sequences,
            &burn_ndarray::NdArrayDevice::Cpu,
            hook,
            progress,
        ),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let d = crate::cuda_device(i)?;
            run_on::<crate::Gpu>(model, sequences, &d, hook, progress)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(RuntimeError::Device(
            "this shrink was built without CUDA support; rebuild with `--features cuda`".into(),
        )),
    }
}

enum Val<B: Backend> {
    Tokens(Vec<Tensor<B, 2, Int>>),
    Hidden(Vec<Tensor<B, 3>>),
}

struct DeviceSite<'a, B: Backend> {
    device: &'a B::Device,
    /// One `[b·s, features]` per batch.
    parts: Vec<Tensor<B, 2>>,
    /// The same value in the reference stream, if it runs.
    reference: Option<Vec<Tensor<B, 2>>>,
}

impl<B: Backend> Site for DeviceSite<'_, B> {
    fn features(&self) -> usize {
        self.parts.first().map_or(0, |p| p.dims()[1])
    }

    fn tokens(&self) -> usize {
        self.parts.iter().map(|p| p.dims()[0]).sum()
    }

    fn gram(&self) -> Vec<f32> {
        let d = self.features();
        // On the CPU, from each batch's values in place (every part has the same backend).
        let mut gram = crate::cpu::Gram::new(d);
        if self
            .parts
            .iter()
            .all(|p| crate::cpu::with_values(p, |x| gram.add(x)).is_some())
        {
            return gram.finish();
        }
        let mut acc: Tensor<B, 2> = Tensor::zeros([d, d], self.device);
        for p in &self.parts {
            acc = acc + p.clone().transpose().matmul(p.clone());
        }
        to_vec(acc)
    }

    fn abs_mean(&self) -> Vec<f32> {
        let d = self.features();
        let mut acc: Tensor<B, 1> = Tensor::zeros([d], self.device);
        for p in &self.parts {
            acc = acc + p.clone().abs().sum_dim(0).reshape([d]);
        }
        let n = self.tokens().max(1) as f32;
        to_vec(acc / n)
    }

    fn sq_sum(&self) -> Vec<f32> {
        let d = self.features();
        let mut acc: Tensor<B, 1> = Tensor::zeros([d], self.device);
        for p in &self.parts {
            acc = acc + (p.clone() * p.clone()).sum_dim(0).reshape([d]);
        }
        to_vec(acc)
    }

    fn matmul(&self, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let a = upload::<B, 2>(a.to_vec(), [m, k], self.device);
        let b = upload::<B, 2>(b.to_vec(), [k, n], self.device);
        to_vec(a.matmul(b))
    }

    fn rows(&self) -> Vec<f32> {
        self.parts.iter().flat_map(|p| to_vec(p.clone())).collect()
    }

    fn cross(&self) -> Option<Vec<f32>> {
        let reference = self.reference.as_ref()?;
        let d = self.features();
        let mut acc = vec![0.0f32; d * d];
        for (r, p) in reference.iter().zip(&self.parts) {
            let added = crate::cpu::with_values(r, |xr| {
                crate::cpu::with_values(p, |x| crate::cpu::add_cross(&mut acc, xr, x, d))
            });
            if added.flatten().is_none() {
                let c = to_vec(r.clone().transpose().matmul(p.clone()));
                acc.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            }
        }
        Some(acc)
    }
}

/// `[b, s, d]` batches as `[b·s, d]` token rows.
fn token_rows<B: Backend>(parts: &[Tensor<B, 3>]) -> Vec<Tensor<B, 2>> {
    parts
        .iter()
        .map(|t| {
            let [b, s, d] = t.dims();
            t.clone().reshape([b * s, d])
        })
        .collect()
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// What a calibration run visits: the nodes in order up to the last one that matters, the
/// values feeding wanted linears (its sites) in order, and the last step reading each value.
struct Schedule {
    order: Vec<NodeId>,
    site_values: Vec<ValueId>,
    last_use: HashMap<ValueId, usize>,
    wanted_weights: std::collections::HashSet<String>,
}

/// The schedule of a calibration run, `None` when nothing is wanted or watched.
fn schedule(
    model: &Model,
    wants: &dyn Fn(&str) -> bool,
    watches: &[ValueId],
) -> Result<Option<Schedule>> {
    let mut order = model
        .graph
        .order()
        .map_err(|_| RuntimeError::Input("the graph has a cycle".into()))?;
    // Stop after the last wanted linear; count the sites before it.
    let wanted_weights: std::collections::HashSet<String> = order
        .iter()
        .filter_map(|id| match model.graph.node(*id).map(|n| &n.op) {
            Some(Op::Linear { weight, .. }) if wants(weight) => Some(weight.clone()),
            _ => None,
        })
        .collect();
    let wanted =
        |op: &Op| matches!(op, Op::Linear { weight, .. } if wanted_weights.contains(weight));
    let Some(last) = order.iter().rposition(|id| {
        model
            .graph
            .node(*id)
            .is_some_and(|n| wanted(&n.op) || n.outputs.iter().any(|v| watches.contains(v)))
    }) else {
        return Ok(None);
    };
    order.truncate(last + 1);
    let mut site_values: Vec<ValueId> = Vec::new();
    for id in &order {
        if let Some(n) = model.graph.node(*id) {
            if wanted(&n.op) && !site_values.contains(&n.inputs[0]) {
                site_values.push(n.inputs[0]);
            }
        }
    }
    // Last step (within `order`) reading each value, to free it after.
    let mut last_use: HashMap<ValueId, usize> = HashMap::new();
    for (i, id) in order.iter().enumerate() {
        if let Some(n) = model.graph.node(*id) {
            for v in &n.inputs {
                last_use.insert(*v, i);
            }
        }
    }
    Ok(Some(Schedule {
        order,
        site_values,
        last_use,
        wanted_weights,
    }))
}

/// What a calibration run is asked to do, for [`working_set`].
pub struct Plan<'a> {
    /// Sequences and tokens per sequence.
    pub sequences: usize,
    pub seq_len: usize,
    /// Which linears are calibrated (as [`CalibrationHook::wants`]).
    pub wants: &'a dyn Fn(&str) -> bool,
    /// Whether the uncompressed model's stream runs beside ([`CalibrationHook::wants_reference`]).
    pub reference: bool,
    /// Bytes the hook holds while it works on a site of `features` inputs whose largest
    /// linear has `rows` outputs (a Hessian and its factors, the weight widened).
    pub site_bytes: &'a dyn Fn(f64, f64) -> f64,
}

/// Peak bytes a calibration run holds beside the model's stored weights, predicted from shapes
/// along the run's own schedule: the activations of every sequence live at once (f32; twice
/// with the reference stream), a node's temporaries (a linear's weight widened and transposed,
/// one batch's attention scores and probabilities) and, at a site, what the hook holds.
/// Computed in f64 (any pipeline's sizes, however large, give a finite figure), saturated to
/// `u64`.
pub fn working_set(model: &Model, plan: &Plan<'_>) -> Result<u64> {
    let Some(sched) = schedule(model, plan.wants, &[])? else {
        return Ok(0);
    };
    let g = &model.graph;
    let tokens = plan.sequences as f64 * plan.seq_len as f64;
    let streams = if plan.reference { 2.0 } else { 1.0 };
    let value_bytes = |v: ValueId| -> f64 {
        match g.value_type(v) {
            Some(t) if t.dtype == shrink_ir::DType::I64 => tokens * 8.0,
            Some(t) => tokens * t.features().unwrap_or(1) as f64 * 4.0 * streams,
            None => 0.0,
        }
    };
    let f32_of = |name: &str| g.param(name).map_or(0.0, |p| p.numel() as f64 * 4.0);
    let mut live: HashMap<ValueId, f64> = HashMap::new();
    let (mut held, mut peak) = (0f64, 0f64);
    let mut sites = sched.site_values.iter().peekable();
    for (i, &id) in sched.order.iter().enumerate() {
        let Some(node) = g.node(id) else { continue };
        let mut temp = match &node.op {
            // The parameter widened and, for a linear, its transpose.
            Op::Linear { weight, lora, .. } => {
                2.0 * f32_of(weight)
                    + lora
                        .as_ref()
                        .map_or(0.0, |l| 2.0 * (f32_of(&l.a) + f32_of(&l.b)))
            }
            Op::Embedding { weight } | Op::PositionEmbedding { weight } => f32_of(weight),
            Op::Attention(spec) => {
                let batch = plan.sequences.min(BATCH) as f64;
                let len = plan.seq_len as f64;
                2.0 * batch * spec.heads as f64 * len * len * 4.0 * streams
            }
            _ => 0.0,
        };
        let wanted =
            matches!(&node.op, Op::Linear { weight, .. } if sched.wanted_weights.contains(weight));
        if wanted && sites.peek() == Some(&&node.inputs[0]) {
            let v = node.inputs[0];
            sites.next();
            let features = g.value_type(v).and_then(|t| t.features()).unwrap_or(0);
            let rows = g
                .users(v)
                .into_iter()
                .filter_map(|u| match g.node(u).map(|n| &n.op) {
                    Some(Op::Linear { weight, .. }) => g.param(weight).map(|p| p.shape[0]),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            temp = temp.max((plan.site_bytes)(features as f64, rows as f64));
        }
        let out: f64 = node.outputs.iter().map(|&v| value_bytes(v)).sum();
        peak = peak.max(held + temp + out);
        for &v in &node.outputs {
            let b = value_bytes(v);
            live.insert(v, b);
            held += b;
        }
        for v in &node.inputs {
            if sched.last_use.get(v) == Some(&i) {
                held -= live.remove(v).unwrap_or(0.0);
            }
        }
    }
    // `as` saturates: a hostile size gives u64::MAX, which any limit refuses.
    Ok(peak as u64)
}

fn run_on<B: Backend>(
    model: &mut Model,
    sequences: &[Vec<u32>],
    device: &B::Device,
    hook: &mut dyn CalibrationHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    model.verify()?;
    let len = sequences.first().map_or(0, Vec::len);
    if len == 0 || sequences.iter().any(|s| s.len() != len) {
        return Err(RuntimeError::Input(
            "calibration needs a non-empty set of equally long sequences".into(),
        ));
    }
    let watches = hook.watches();
    let Some(Schedule {
        order,
        mut site_values,
        last_use,
        wanted_weights,
    }) = schedule(model, &|w| hook.wants(w), &watches)?
    else {
        return Ok(());
    };
    let wanted =
        |op: &Op| matches!(op, Op::Linear { weight, .. } if wanted_weights.contains(weight));
    let order = &order[..];
    let vocab = order
        .iter()
        .find_map(|id| match model.graph.node(*id).map(|n| &n.op) {
            Some(Op::Embedding { weight }) => model.graph.param(weight).map(|p| p.shape[0]),
            _ => None,
        })
        .unwrap_or(usize::MAX);
    let batches: Vec<&[Vec<u32>]> = sequences.chunks(BATCH).collect();
    let mask = (len > 1).then(|| {
        let mut bias = vec![0.0f32; len * len];
        for i in 0..len {
            for j in (i + 1)..len {
                bias[i * len + j] = f32::NEG_INFINITY;
            }
        }
        upload::<B, 2>(bias, [len, len], device)
    });
    let cx = Cx::<B> {
        device,
        batches,
        len,
        vocab,
        mask,
    };
    // The float model's stream, beside the one the hook rewrites, for hooks that fit the
    // compressed layers to the original's outputs.
    let reference = hook.wants_reference().then(|| model.clone());
    let mut rope: RopeCache<B> = Vec::new();
    let mut vals: HashMap<ValueId, Val<B>> = HashMap::new();
    let mut ref_vals: HashMap<ValueId, Val<B>> = HashMap::new();
    let mut sites_done = 0;
    for (i, &id) in order.iter().enumerate() {
        let node = model
            .graph
            .node(id)
            .cloned()
            .ok_or_else(|| RuntimeError::Input(format!("node {id} vanished")))?;
        if wanted(&node.op) && site_values.first() == Some(&node.inputs[0]) {
            let v = site_values.remove(0);
            let linears: Vec<SiteLinear> = model
                .graph
                .users(v)
                .into_iter()
                .filter_map(|u| match model.graph.node(u).map(|n| &n.op) {
                    Some(Op::Linear { weight, .. }) if wanted_weights.contains(weight) => {
                        Some(SiteLinear {
                            node: u,
                            weight: weight.clone(),
                        })
                    }
                    _ => None,
                })
                .collect();
            let x = hidden(&vals, &node, id, 0)?;
            let reference_parts = match &reference {
                Some(_) => Some(token_rows(&hidden(&ref_vals, &node, id, 0)?)),
                None => None,
            };
            let site = DeviceSite::<B> {
                device,
                parts: token_rows(&x),
                reference: reference_parts,
            };
            let factors = hook.site(model, v, &linears, &site)?;
            drop(site);
            if let Some(f) = factors {
                let d = f.len();
                let f = upload::<B, 1>(f, [d], device).unsqueeze::<3>();
                let scaled = x.into_iter().map(|t| t * f.clone()).collect();
                vals.insert(v, Val::Hidden(scaled));
            }
            sites_done += 1;
            progress(sites_done, sites_done + site_values.len());
        }
        let results = step(model, &node, id, &vals, &cx, &mut rope)?;
        if let Some(reference) = &reference {
            let results = step(reference, &node, id, &ref_vals, &cx, &mut rope)?;
            for (v, r) in node.outputs.iter().zip(results) {
                ref_vals.insert(*v, r);
            }
        }
        for (v, r) in node.outputs.iter().zip(results) {
            if let (true, Val::Hidden(parts)) = (watches.contains(v), &r) {
                let site = DeviceSite::<B> {
                    device,
                    parts: token_rows(parts),
                    reference: None,
                };
                hook.watched(*v, &site)?;
            }
            vals.insert(*v, r);
        }
        for v in &node.inputs {
            if last_use.get(v) == Some(&i) {
                vals.remove(v);
                ref_vals.remove(v);
            }
        }
    }
    Ok(())
}

/// RoPE's cos/sin tables, by RoPE (a model has one or two).
type RopeCache<B> = Vec<(shrink_ir::Rope, (Tensor<B, 2>, Tensor<B, 2>))>;

/// What every node of a calibration run shares.
struct Cx<'a, B: Backend> {
    device: &'a B::Device,
    batches: Vec<&'a [Vec<u32>]>,
    len: usize,
    vocab: usize,
    mask: Option<Tensor<B, 2>>,
}

fn param(model: &Model, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = model.weights.get(name).ok_or_else(|| RuntimeError::Param {
        name: name.into(),
        message: "no data".into(),
    })?;
    Ok((t.to_f32(), t.ty.shape.clone()))
}

fn vector<B: Backend>(model: &Model, name: &str, device: &B::Device) -> Result<Tensor<B, 1>> {
    let (v, s) = param(model, name)?;
    Ok(upload::<B, 1>(v, [s[0]], device))
}

/// Operand `k` of `node`, a hidden state in every batch.
fn hidden<B: Backend>(
    vals: &HashMap<ValueId, Val<B>>,
    node: &Node,
    id: NodeId,
    k: usize,
) -> Result<Vec<Tensor<B, 3>>> {
    match vals.get(&node.inputs[k]) {
        Some(Val::Hidden(t)) => Ok(t.clone()),
        _ => Err(RuntimeError::Node {
            node: id,
            message: format!("operand {k} is not a hidden state"),
        }),
    }
}

/// Runs `node` over every batch, with `model`'s parameters and operands from `vals`.
fn step<B: Backend>(
    model: &Model,
    node: &Node,
    id: NodeId,
    vals: &HashMap<ValueId, Val<B>>,
    cx: &Cx<'_, B>,
    rope: &mut RopeCache<B>,
) -> Result<Vec<Val<B>>> {
    let (device, len) = (cx.device, cx.len);
    let hidden = |k: usize| hidden(vals, node, id, k);
    Ok(match &node.op {
        Op::Input { .. } => {
            let mut parts = Vec::new();
            for batch in &cx.batches {
                let mut flat = Vec::with_capacity(batch.len() * len);
                for &t in batch.iter().flatten() {
                    if t as usize >= cx.vocab {
                        return Err(RuntimeError::TokenOutOfRange {
                            id: t,
                            vocab: cx.vocab,
                        });
                    }
                    flat.push(t as i64);
                }
                parts.push(Tensor::from_data(
                    BurnData::new(flat, [batch.len(), len]),
                    device,
                ));
            }
            vec![Val::Tokens(parts)]
        }
        Op::Embedding { weight } => {
            let (w, s) = param(model, weight)?;
            let w = upload::<B, 2>(w, [s[0], s[1]], device);
            let Some(Val::Tokens(toks)) = vals.get(&node.inputs[0]) else {
                return Err(RuntimeError::Node {
                    node: id,
                    message: "operand 0 is not token ids".into(),
                });
            };
            vec![Val::Hidden(
                toks.iter()
                    .map(|t| embedding(w.clone(), t.clone()))
                    .collect(),
            )]
        }
        Op::PositionEmbedding { weight } => {
            let (w, s) = param(model, weight)?;
            let w = upload::<B, 2>(w, [s[0], s[1]], device).narrow(0, 0, len);
            vec![Val::Hidden(
                cx.batches
                    .iter()
                    .map(|b| w.clone().unsqueeze::<3>().expand([b.len(), len, s[1]]))
                    .collect(),
            )]
        }
        Op::Norm {
            kind,
            eps,
            weight,
            bias,
            group,
        } => {
            let w = vector::<B>(model, weight, device)?;
            let b = bias
                .as_deref()
                .map(|b| vector::<B>(model, b, device))
                .transpose()?;
            vec![Val::Hidden(
                hidden(0)?
                    .into_iter()
                    .map(|x| norm(x, *kind, *eps, &w, b.as_ref(), *group))
                    .collect(),
            )]
        }
        Op::Linear { weight, bias, lora } => {
            let (w, s) = param(model, weight)?;
            // `Wᵀ` made row-major on the host, once per linear: a transposed operand in the
            // product would be copied element by element, per batch.
            let wt = upload::<B, 2>(transpose(&w, s[0], s[1]), [s[1], s[0]], device);
            let b = bias
                .as_deref()
                .map(|b| vector::<B>(model, b, device))
                .transpose()?;
            // An attached adapter adds its update (no dropout: calibration is inference).
            let adapter = match lora {
                Some(l) => {
                    let (a, sa) = param(model, &l.a)?;
                    let (bm, sb) = param(model, &l.b)?;
                    // As the interpreter's inference layout: `Aᵀ [in, r]`, `Bᵀ [r, out]`.
                    let a_t = upload::<B, 2>(transpose(&a, sa[0], sa[1]), [sa[1], sa[0]], device);
                    let b_t = upload::<B, 2>(transpose(&bm, sb[0], sb[1]), [sb[1], sb[0]], device);
                    Some((a_t, b_t, l.scale))
                }
                None => None,
            };
            vec![Val::Hidden(
                hidden(0)?
                    .into_iter()
                    .map(|x| {
                        let y = linear(x.clone(), &wt, b.as_ref());
                        match &adapter {
                            Some((a_t, b_t, scale)) => y + lora_update(x, a_t, b_t, *scale),
                            None => y,
                        }
                    })
                    .collect(),
            )]
        }
        Op::Split { sizes } => {
            let x = hidden(0)?;
            let mut start = 0;
            sizes
                .iter()
                .map(|&n| {
                    let parts = x.iter().map(|t| t.clone().narrow(2, start, n)).collect();
                    start += n;
                    Val::Hidden(parts)
                })
                .collect()
        }
        Op::Attention(spec) => {
            let tables = spec.rope.map(|r| {
                let i = match rope.iter().position(|(k, _)| *k == r) {
                    Some(i) => i,
                    None => {
                        rope.push((r, rope_tables::<B>(&r, 0, len, device)));
                        rope.len() - 1
                    }
                };
                rope[i].1.clone()
            });
            let (q, k, v) = (hidden(0)?, hidden(1)?, hidden(2)?);
            vec![Val::Hidden(
                q.into_iter()
                    .zip(k)
                    .zip(v)
                    .map(|((q, k), v)| {
                        attention(q, k, v, spec, tables.as_ref(), 0, None, cx.mask.as_ref())
                    })
                    .collect(),
            )]
        }
        Op::Activation(a) => vec![Val::Hidden(
            hidden(0)?.into_iter().map(|x| activate(x, *a)).collect(),
        )],
        Op::Add | Op::Mul => {
            let (a, b) = (hidden(0)?, hidden(1)?);
            let add = matches!(node.op, Op::Add);
            vec![Val::Hidden(
                a.into_iter()
                    .zip(b)
                    .map(|(a, b)| if add { a + b } else { a * b })
                    .collect(),
            )]
        }
        Op::Scale { factor } => vec![Val::Hidden(
            hidden(0)?
                .into_iter()
                .map(|x| x.mul_scalar(*factor))
                .collect(),
        )],
        Op::SoftCap { cap } => vec![Val::Hidden(
            hidden(0)?
                .into_iter()
                .map(|x| crate::interp::soft_cap(x, *cap))
                .collect(),
        )],
        Op::Output { .. } => vec![],
    })
}
