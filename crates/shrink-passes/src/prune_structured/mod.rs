//! `prune-structured`: removes whole MLP channels, attention KV groups (with their query heads)
//! or decoder layers, so every tensor that touches them gets smaller. What can be removed
//! together comes from the graph ([`groups`]); which units go comes from an importance score
//! (weight magnitude, calibration activations as Minitron measures them, or layer redundancy as
//! ShortGPT does); how many go in each layer is uniform or allocated from each layer's measured
//! sensitivity: the KL divergence of the model's next-token distribution when only that layer
//! is pruned ([`allocate`]).

pub mod allocate;
pub mod groups;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shrink_ir::{Model, ValueId};
use shrink_runtime::calibrate::{self, CalibrationHook, Site, SiteLinear};
use shrink_runtime::{Engine, ExecOptions, QuantExec};

use crate::calibration::CalibrationOptions;
use crate::{
    canonical_ron, json_f64, parse_options, Pass, PassContext, PassError, PassInfo, PassReport,
};
use groups::{ChannelGroup, Groups, HeadGroup};

pub const INFO: PassInfo = PassInfo {
    name: "prune-structured",
    summary: "Remove MLP channels, attention KV groups or whole layers (the model gets smaller).",
    build: |raw| Ok(Box::new(PruneStructured(parse_options(raw)?))),
};

/// What is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Channels of the widths between linears (MLP intermediate channels).
    Mlp,
    /// KV groups of attention ops: a key/value head with the query heads sharing it.
    Heads,
    /// Whole decoder layers.
    Layers,
}

/// How units are ranked within a layer (or layers against each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// L2 norm of every weight slice the unit owns.
    Magnitude,
    /// Mean |activation| per channel, or mean per-token L2 norm of a head's output, over the
    /// calibration tokens (Minitron).
    Activation,
    /// For layers: 1 − mean cosine similarity of a layer's input and output (ShortGPT's Block
    /// Influence); the least influential layers go.
    Redundancy,
}

/// How the amount is spread across layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// The same ratio in every layer.
    Uniform,
    /// From each layer's measured sensitivity (see [`allocate`]).
    Sensitivity,
}

/// Options of `prune-structured`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneStructuredOptions {
    pub allocation: Allocation,
    /// Calibration text for `activation` and `redundancy` importance and for sensitivity.
    pub calibration: CalibrationOptions,
    /// Units to remove in all (channels, KV groups or layers); or give `ratio`.
    pub count: Option<usize>,
    pub importance: Importance,
    /// For `target: layers`: remove exactly these layers (0-based) instead of ranking them.
    pub layers: Option<Vec<usize>>,
    /// No layer loses more than this fraction of its units (sensitivity allocation).
    pub max_layer_ratio: f32,
    /// MLP widths stay multiples of this (kernels like widths in multiples of 8 or 16).
    pub multiple: usize,
    /// Fractions of a layer's units at which its sensitivity is measured.
    pub probe_ratios: Vec<f32>,
    /// Calibration sequences (the first ones) on which sensitivity is measured.
    pub probe_samples: usize,
    /// Fraction of all units of the target to remove; or give `count`.
    pub ratio: Option<f32>,
    pub target: Target,
}

impl Default for PruneStructuredOptions {
    fn default() -> Self {
        PruneStructuredOptions {
            allocation: Allocation::Sensitivity,
            calibration: CalibrationOptions::default(),
            count: None,
            importance: Importance::Activation,
            layers: None,
            max_layer_ratio: 0.5,
            multiple: 16,
            probe_ratios: vec![0.25, 0.5],
            probe_samples: 4,
            ratio: None,
            target: Target::Mlp,
        }
    }
}

pub struct PruneStructured(pub PruneStructuredOptions);

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed {
        pass: INFO.name,
        message: message.into(),
    }
}

/// One prunable instance (a layer's MLP width or attention op) with its unit count.
enum Instance<'a> {
    Channels(&'a ChannelGroup),
    Heads(&'a HeadGroup),
}

impl Instance<'_> {
    fn units(&self) -> usize {
        match self {
            Instance::Channels(c) => c.width,
            Instance::Heads(h) => h.groups(),
        }
    }

    fn keep(&self, model: &mut Model, keep: &[usize]) -> Result<(), String> {
        match self {
            Instance::Channels(c) => c.keep(model, keep),
            Instance::Heads(h) => h.keep(model, keep),
        }
    }

    /// Consumer columns of `units` (zeroing them removes the units' contribution exactly).
    fn consumer_cols(&self, units: &[usize]) -> Vec<usize> {
        match self {
            Instance::Channels(_) => units.to_vec(),
            Instance::Heads(h) => h.q_rows(units),
        }
    }

    fn consumers(&self) -> &[groups::LinearParams] {
        match self {
            Instance::Channels(c) => &c.consumers,
            Instance::Heads(h) => &h.consumers,
        }
    }

    fn site(&self) -> ValueId {
        match self {
            Instance::Channels(c) => c.site,
            Instance::Heads(h) => h.site,
        }
    }

    /// Where the report names it: the first consumer's weight.
    fn name(&self) -> &str {
        &self.consumers()[0].weight
    }
}

impl PruneStructuredOptions {
    fn check(&self) -> Result<(), PassError> {
        match (self.ratio, self.count, &self.layers) {
            (Some(r), None, None) if (0.0..1.0).contains(&r) => {}
            (Some(r), None, None) => {
                return Err(fail(format!("ratio must be in [0, 1), got {r}")));
            }
            (None, Some(_), None) => {}
            (None, None, Some(_)) if self.target == Target::Layers => {}
            (None, None, Some(_)) => {
                return Err(fail(
                    "layers: names layers to remove; it needs target: layers",
                ));
            }
            (None, None, None) => {
                return Err(fail(
                    "give the amount: ratio, count (or layers for target: layers)",
                ));
            }
            _ => return Err(fail("give only one of ratio, count and layers")),
        }
        if !(self.max_layer_ratio > 0.0 && self.max_layer_ratio < 1.0) {
            return Err(fail(format!(
                "max_layer_ratio must be in (0, 1), got {}",
                self.max_layer_ratio
            )));
        }
        if self.multiple == 0 {
            return Err(fail("multiple must be at least 1"));
        }
        if let Some(r) = self.probe_ratios.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
            return Err(fail(format!("probe_ratios must lie in (0, 1), got {r}")));
        }
        if self.allocation == Allocation::Sensitivity
            && self.target != Target::Layers
            && (self.probe_ratios.is_empty() || self.probe_samples == 0)
        {
            return Err(fail(
                "sensitivity allocation needs probe_ratios and probe_samples ≥ 1",
            ));
        }
        match (self.target, self.importance) {
            (Target::Layers, Importance::Redundancy) => Ok(()),
            (Target::Layers, _) if self.layers.is_some() => Ok(()),
            (Target::Layers, i) => Err(fail(format!(
                "target: layers ranks layers by importance: redundancy (got {i:?}), or name them with layers: [..]"
            ))),
            (_, Importance::Redundancy) => Err(fail(
                "importance: redundancy ranks whole layers; use target: layers, or magnitude/activation",
            )),
            _ => Ok(()),
        }
    }
}

impl Pass for PruneStructured {
    fn name(&self) -> &'static str {
        INFO.name
    }

    /// Sizes only: the layers named, else the last ones (layers are alike in size); units
    /// spread uniformly (each unit of a kind costs the same parameters in every layer, so the
    /// total does not depend on the allocation).
    fn plan_is_exact(&self) -> bool {
        // Layers are alike in size and storage; a measured allocation may leave some
        // layers' channels or heads alone, stored as they were (quantized, say).
        self.0.target == Target::Layers || self.0.allocation == Allocation::Uniform
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        let o = &self.0;
        let groups = groups::analyse(&model.graph)?;
        if o.target == Target::Layers {
            let n = groups.layers.len();
            let remove: Vec<usize> = match (&o.layers, o.count, o.ratio) {
                (Some(l), _, _) => l.clone(),
                (None, Some(c), _) => (n.saturating_sub(c)..n).collect(),
                (None, None, Some(r)) => {
                    (n - ((r * n as f32).round() as usize).min(n)..n).collect()
                }
                _ => Vec::new(),
            };
            return groups::remove_layers(model, &groups.layers, &remove);
        }
        let instances: Vec<Instance<'_>> = match o.target {
            Target::Mlp => groups.channels.iter().map(Instance::Channels).collect(),
            _ => groups.heads.iter().map(Instance::Heads).collect(),
        };
        let step = if o.target == Target::Mlp {
            o.multiple
        } else {
            1
        };
        let widths: Vec<usize> = instances.iter().map(Instance::units).collect();
        let total: usize = widths.iter().sum();
        let amount = match (o.count, o.ratio) {
            (Some(c), _) => c,
            (None, Some(r)) => (r as f64 * total as f64).round() as usize,
            (None, None) => 0,
        } / step.max(1)
            * step.max(1);
        let removed = allocate::uniform(&widths, amount, step)?;
        for (inst, (w, r)) in instances.iter().zip(widths.iter().zip(removed)) {
            let kept = w - r;
            match inst {
                Instance::Channels(c) => {
                    for p in &c.producers {
                        groups::plan_keep(model, &p.weight, Some(kept), None);
                        if let Some(b) = &p.bias {
                            groups::plan_keep(model, b, Some(kept), None);
                        }
                    }
                    for c in &c.consumers {
                        groups::plan_keep(model, &c.weight, None, Some(kept));
                    }
                }
                Instance::Heads(h) => {
                    let (hd, gs) = (h.spec.head_dim, h.group_size());
                    for (lin, rows) in
                        [(&h.q, kept * gs * hd), (&h.k, kept * hd), (&h.v, kept * hd)]
                    {
                        groups::plan_keep(model, &lin.weight, Some(rows), None);
                        if let Some(b) = &lin.bias {
                            groups::plan_keep(model, b, Some(rows), None);
                        }
                    }
                    for c in &h.consumers {
                        groups::plan_keep(model, &c.weight, None, Some(kept * gs * hd));
                    }
                }
            }
        }
        Ok(())
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        self.0.calibration.files()
    }

    fn working_set(&self, model: &Model) -> Result<u64, String> {
        let o = &self.0;
        let one_at_a_time = 2 * crate::largest_f32_bytes(model);
        if o.importance != Importance::Activation && o.allocation != Allocation::Sensitivity {
            return Ok(one_at_a_time);
        }
        // Activation importance reads the rows at every decoder linear (not the head); a
        // sensitivity probe scores its samples' logits.
        let g = &model.graph;
        let decoder: std::collections::BTreeSet<&str> = g
            .node_ids()
            .into_iter()
            .filter(|id| !g.feeds_only_outputs(*id))
            .filter_map(|id| match g.node(id).map(|n| &n.op) {
                Some(shrink_ir::Op::Linear { weight, .. }) => Some(weight.as_str()),
                _ => None,
            })
            .collect();
        let site = |n: f64, _rows: f64, tokens: f64| 4.0 * tokens * n + 8.0 * n;
        let calibrated = crate::calibration::working_set(
            model,
            &o.calibration,
            &|w| decoder.contains(w),
            false,
            &site,
        )?;
        let vocab = g
            .outputs()
            .iter()
            .filter_map(|(_, v)| g.value_type(*v).and_then(|t| t.features()))
            .max()
            .unwrap_or(0) as f64;
        let probe = match o.allocation {
            Allocation::Sensitivity => {
                let tokens = o.probe_samples.min(o.calibration.samples) as f64
                    * o.calibration.seq_len as f64;
                (3.0 * tokens * vocab * 4.0) as u64
            }
            Allocation::Uniform => 0,
        };
        Ok(calibrated.max(one_at_a_time).max(probe))
    }

    fn needs(&self) -> crate::Needs {
        crate::Needs::DenseWeights
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let o = &self.0;
        o.check()?;
        let started = Instant::now();
        let before = model.size();
        if let Some(a) = shrink_ir::lora::adapters(model).first() {
            return Err(fail(format!(
                "{} carries a LoRA adapter: fold the adapters first (lora-fold)",
                shrink_ir::lora::module_of(&a.weight)
            )));
        }
        let groups = groups::analyse(&model.graph).map_err(fail)?;
        let mut report = PassReport::default();
        match o.target {
            Target::Layers => self.prune_layers(model, cx, &groups, &mut report)?,
            Target::Mlp | Target::Heads => self.prune_units(model, cx, &groups, &mut report)?,
        }
        model
            .graph
            .retype()
            .map_err(|m| fail(format!("after pruning: {m}")))?;
        let after = model.size();
        report.changed = after.params != before.params;
        report
            .stats
            .insert("params_before".into(), before.params.into());
        report
            .stats
            .insert("params_after".into(), after.params.into());
        report.stats.insert(
            "seconds".into(),
            json_f64((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        Ok(report)
    }
}

impl PruneStructured {
    fn sequences(&self, cx: &mut PassContext<'_>) -> Result<Vec<Vec<u32>>, PassError> {
        self.0
            .calibration
            .sequences(cx.base_dir, cx.tokenizer, &mut cx.rng)
            .map_err(|m| fail(format!("calibration: {m}")))
    }

    fn prune_layers(
        &self,
        model: &mut Model,
        cx: &mut PassContext<'_>,
        groups: &Groups,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let o = &self.0;
        let n = groups.layers.len();
        if n == 0 {
            return Err(fail("found no residual layers in this graph"));
        }
        let mut remove: Vec<usize> = match &o.layers {
            Some(list) => {
                if let Some(i) = list.iter().find(|i| **i >= n) {
                    return Err(fail(format!(
                        "layers: layer {i} does not exist (the model has {n})"
                    )));
                }
                list.clone()
            }
            None => {
                let count = match (o.count, o.ratio) {
                    (Some(c), _) => c,
                    (None, Some(r)) => (r * n as f32).round() as usize,
                    (None, None) => 0,
                };
                if count >= n {
                    return Err(fail(format!(
                        "removing {count} of {n} layers would leave none"
                    )));
                }
                let seqs = self.sequences(cx)?;
                let influence = layer_influence(model, &seqs, cx, groups)?;
                report.stats.insert(
                    "block_influence".into(),
                    serde_json::Value::Array(
                        influence
                            .iter()
                            .map(|x| json_f64((*x as f64 * 1e4).round() / 1e4))
                            .collect(),
                    ),
                );
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|a, b| influence[*a].total_cmp(&influence[*b]));
                idx.truncate(count);
                idx
            }
        };
        remove.sort_unstable();
        remove.dedup();
        if remove.len() >= n {
            return Err(fail(format!(
                "removing {} of {n} layers would leave none",
                remove.len()
            )));
        }
        if let Some(l) = remove.iter().find(|i| groups.layers[**i].prefix.is_none()) {
            return Err(fail(format!(
                "layer {l}'s parameters share no numbered name prefix, so the layers after it cannot be renumbered"
            )));
        }
        groups::remove_layers(model, &groups.layers, &remove).map_err(fail)?;
        report.stats.insert(
            "layers_removed".into(),
            serde_json::Value::Array(remove.iter().map(|i| (*i).into()).collect()),
        );
        report
            .stats
            .insert("layers_after".into(), (n - remove.len()).into());
        Ok(())
    }

    fn prune_units(
        &self,
        model: &mut Model,
        cx: &mut PassContext<'_>,
        groups: &Groups,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let o = &self.0;
        let instances: Vec<Instance<'_>> = match o.target {
            Target::Mlp => groups.channels.iter().map(Instance::Channels).collect(),
            _ => groups.heads.iter().map(Instance::Heads).collect(),
        };
        if instances.is_empty() {
            let why: Vec<String> = groups
                .blocked
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            return Err(fail(format!(
                "found no prunable {} in this graph ({})",
                if o.target == Target::Mlp {
                    "channel groups"
                } else {
                    "attention heads"
                },
                why.join("; ")
            )));
        }
        let step = if o.target == Target::Mlp {
            o.multiple
        } else {
            1
        };
        let total_units: usize = instances.iter().map(Instance::units).sum();
        let amount = match (o.count, o.ratio) {
            (Some(c), _) => c,
            (None, Some(r)) => (r as f64 * total_units as f64).round() as usize,
            (None, None) => 0,
        };
        let amount = amount / step * step;
        let needs_calibration =
            o.importance == Importance::Activation || o.allocation == Allocation::Sensitivity;
        let seqs = if needs_calibration {
            self.sequences(cx)?
        } else {
            Vec::new()
        };
        // Units of each instance, least important first.
        let scores = match o.importance {
            Importance::Magnitude => instances
                .iter()
                .map(|i| magnitude(model, i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?,
            _ => activation_scores(model, &seqs, cx, &instances)?,
        };
        let ranked: Vec<Vec<usize>> = scores
            .iter()
            .map(|s| {
                let mut idx: Vec<usize> = (0..s.len()).collect();
                idx.sort_by(|a, b| s[*a].total_cmp(&s[*b]).then(a.cmp(b)));
                idx
            })
            .collect();
        let widths: Vec<usize> = instances.iter().map(Instance::units).collect();
        let removed: Vec<usize> = match o.allocation {
            Allocation::Uniform => allocate::uniform(&widths, amount, step).map_err(fail)?,
            Allocation::Sensitivity => {
                let probe = &seqs[..o.probe_samples.min(seqs.len())];
                let curves = sensitivity(model, probe, cx, &instances, &ranked, o, step)?;
                report.stats.insert(
                    "sensitivity".into(),
                    serde_json::to_value(
                        instances
                            .iter()
                            .zip(&curves)
                            .map(|(i, c)| {
                                (
                                    i.name().to_string(),
                                    c.iter().map(|(n, kl)| (*n, *kl)).collect::<Vec<_>>(),
                                )
                            })
                            .collect::<BTreeMap<_, _>>(),
                    )
                    .unwrap_or_default(),
                );
                let cap: Vec<usize> = widths
                    .iter()
                    .map(|w| ((*w as f32 * o.max_layer_ratio) as usize) / step * step)
                    .collect();
                allocate::by_sensitivity(&curves, &cap, amount, step).map_err(fail)?
            }
        };
        let mut kept = BTreeMap::new();
        for ((inst, order), n) in instances.iter().zip(&ranked).zip(&removed) {
            if *n == 0 {
                kept.insert(inst.name().to_string(), inst.units());
                continue;
            }
            let mut keep: Vec<usize> = order[*n..].to_vec();
            keep.sort_unstable();
            inst.keep(model, &keep)
                .map_err(|m| fail(format!("{}: {m}", inst.name())))?;
            kept.insert(inst.name().to_string(), keep.len());
        }
        report
            .stats
            .insert("units_removed".into(), removed.iter().sum::<usize>().into());
        report.stats.insert(
            "kept".into(),
            serde_json::to_value(kept).unwrap_or_default(),
        );
        Ok(())
    }
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum()
}

/// L2 norm of every slice each unit owns (rows of producers, columns of consumers).
fn magnitude(model: &Model, inst: &Instance<'_>) -> Result<Vec<f32>, String> {
    let read = |name: &str| -> Result<(Vec<f32>, usize), String> {
        let t = model
            .weights
            .get(name)
            .ok_or_else(|| format!("'{name}' has no data"))?;
        let cols = t.ty.shape.get(1).copied().unwrap_or(1);
        Ok((t.to_f32(), cols))
    };
    // (weight, rows of unit u) for every producer.
    let producers: Vec<(&str, Vec<Vec<usize>>)> = match inst {
        Instance::Channels(c) => c
            .producers
            .iter()
            .map(|p| (p.weight.as_str(), (0..c.width).map(|u| vec![u]).collect()))
            .collect(),
        Instance::Heads(h) => {
            let units = 0..h.groups();
            vec![
                (
                    h.q.weight.as_str(),
                    units.clone().map(|u| h.q_rows(&[u])).collect(),
                ),
                (
                    h.k.weight.as_str(),
                    units.clone().map(|u| h.kv_rows(&[u])).collect(),
                ),
                (
                    h.v.weight.as_str(),
                    units.map(|u| h.kv_rows(&[u])).collect(),
                ),
            ]
        }
    };
    let mut acc = vec![0f64; inst.units()];
    for (name, unit_rows) in producers {
        let (w, cols) = read(name)?;
        for (a, rows) in acc.iter_mut().zip(&unit_rows) {
            for r in rows {
                *a += sum_sq(&w[r * cols..(r + 1) * cols]);
            }
        }
    }
    for c in inst.consumers() {
        let (w, cols) = read(&c.weight)?;
        let rows = w.len() / cols.max(1);
        for (u, a) in acc.iter_mut().enumerate() {
            for col in inst.consumer_cols(&[u]) {
                *a += (0..rows)
                    .map(|r| (w[r * cols + col] as f64).powi(2))
                    .sum::<f64>();
            }
        }
    }
    Ok(acc.into_iter().map(|a| a.sqrt() as f32).collect())
}

/// Records activation importance at each instance's site.
struct ActivationHook<'a> {
    instances: &'a [Instance<'a>],
    scores: Vec<Option<Vec<f32>>>,
}

impl CalibrationHook for ActivationHook<'_> {
    fn wants(&self, weight: &str) -> bool {
        self.instances
            .iter()
            .any(|i| i.consumers().iter().any(|c| c.weight == weight))
    }

    fn site(
        &mut self,
        _model: &mut Model,
        value: ValueId,
        _linears: &[SiteLinear],
        site: &dyn Site,
    ) -> shrink_runtime::Result<Option<Vec<f32>>> {
        for (k, inst) in self.instances.iter().enumerate() {
            if inst.site() != value {
                continue;
            }
            self.scores[k] = Some(match inst {
                Instance::Channels(_) => site.abs_mean(),
                Instance::Heads(h) => head_norms(h, site),
            });
        }
        Ok(None)
    }
}

/// Mean over tokens of each KV group's summed per-head output L2 norms.
fn head_norms(h: &HeadGroup, site: &dyn Site) -> Vec<f32> {
    let rows = site.rows();
    let d = site.features().max(1);
    let (hd, gs) = (h.spec.head_dim, h.group_size());
    let mut acc = vec![0f64; h.groups()];
    for t in rows.chunks_exact(d) {
        for (head, x) in t.chunks_exact(hd).enumerate() {
            acc[head / gs] += sum_sq(x).sqrt();
        }
    }
    let n = site.tokens().max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

fn activation_scores(
    model: &mut Model,
    seqs: &[Vec<u32>],
    cx: &mut PassContext<'_>,
    instances: &[Instance<'_>],
) -> Result<Vec<Vec<f32>>, PassError> {
    let mut hook = ActivationHook {
        instances,
        scores: vec![None; instances.len()],
    };
    let progress = &mut *cx.progress;
    let what = format!("prune-structured: activations ({} sequences)", seqs.len());
    calibrate::run(model, seqs, cx.device, &mut hook, &mut |done, total| {
        if done == 1 {
            progress.start(&what, total as u64);
        }
        progress.advance(done as u64)
    })
    .map_err(|source| PassError::Runtime {
        pass: INFO.name,
        source,
    })?;
    cx.progress.finish();
    hook.scores
        .into_iter()
        .zip(instances)
        .map(|(s, i)| s.ok_or_else(|| fail(format!("{} was never calibrated", i.name()))))
        .collect()
}

/// Block Influence of every layer: 1 − mean cosine similarity of its input and output.
struct InfluenceHook<'a> {
    groups: &'a Groups,
    /// Rows of layer inputs waiting for their output.
    inputs: BTreeMap<ValueId, Vec<f32>>,
    influence: Vec<f32>,
}

impl CalibrationHook for InfluenceHook<'_> {
    fn wants(&self, _weight: &str) -> bool {
        false
    }

    fn site(
        &mut self,
        _: &mut Model,
        _: ValueId,
        _: &[SiteLinear],
        _: &dyn Site,
    ) -> shrink_runtime::Result<Option<Vec<f32>>> {
        Ok(None)
    }

    fn watches(&self) -> Vec<ValueId> {
        let mut v: Vec<ValueId> = self.groups.layers.iter().map(|l| l.input()).collect();
        v.extend(self.groups.layers.iter().map(|l| l.output()));
        v
    }

    fn watched(&mut self, value: ValueId, x: &dyn Site) -> shrink_runtime::Result<()> {
        let rows = x.rows();
        let d = x.features().max(1);
        for (k, l) in self.groups.layers.iter().enumerate() {
            if l.output() == value {
                if let Some(inp) = self.inputs.remove(&l.input()) {
                    let mut sum = 0f64;
                    let mut n = 0usize;
                    for (a, b) in inp.chunks_exact(d).zip(rows.chunks_exact(d)) {
                        let dot: f64 = a
                            .iter()
                            .zip(b)
                            .map(|(x, y)| (*x as f64) * (*y as f64))
                            .sum();
                        let den = (sum_sq(a) * sum_sq(b)).sqrt();
                        if den > 0.0 {
                            sum += dot / den;
                        }
                        n += 1;
                    }
                    self.influence[k] = 1.0 - (sum / n.max(1) as f64) as f32;
                }
            }
        }
        if self.groups.layers.iter().any(|l| l.input() == value) {
            self.inputs.insert(value, rows);
        }
        Ok(())
    }
}

fn layer_influence(
    model: &mut Model,
    seqs: &[Vec<u32>],
    cx: &mut PassContext<'_>,
    groups: &Groups,
) -> Result<Vec<f32>, PassError> {
    let mut hook = InfluenceHook {
        groups,
        inputs: BTreeMap::new(),
        influence: vec![f32::NAN; groups.layers.len()],
    };
    cx.progress.start(
        "prune-structured: layer influence",
        groups.layers.len() as u64,
    );
    calibrate::run(model, seqs, cx.device, &mut hook, &mut |_, _| {}).map_err(|source| {
        PassError::Runtime {
            pass: INFO.name,
            source,
        }
    })?;
    cx.progress.finish();
    if let Some(k) = hook.influence.iter().position(|x| x.is_nan()) {
        return Err(fail(format!("layer {k}'s influence was not measured")));
    }
    Ok(hook.influence)
}

/// Mean KL(base ‖ probe) per token from base log-probabilities and probe logits.
fn mean_kl(base_logp: &[f32], logits: &[f32], vocab: usize) -> f64 {
    let mut total = 0f64;
    let mut n = 0usize;
    for (p, q) in base_logp
        .chunks_exact(vocab)
        .zip(logits.chunks_exact(vocab))
    {
        let lq = log_softmax(q);
        total += p
            .iter()
            .zip(&lq)
            .map(|(lp, lq)| (*lp as f64).exp() * (*lp as f64 - *lq as f64))
            .sum::<f64>();
        n += 1;
    }
    total / n.max(1) as f64
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
    x.iter().map(|v| v - lse).collect()
}

fn probe_logits(
    model: &Model,
    cx: &PassContext<'_>,
    seqs: &[Vec<u32>],
) -> Result<Vec<f32>, PassError> {
    let engine = Engine::with_options(
        model,
        cx.device,
        ExecOptions {
            quantized: QuantExec::Dequantize,
            ..ExecOptions::default()
        },
    )
    .map_err(|source| PassError::Runtime {
        pass: INFO.name,
        source,
    })?;
    engine.logits(seqs).map_err(|source| PassError::Runtime {
        pass: INFO.name,
        source,
    })
}

/// Each instance's cost curve: `(units removed, KL)` at every probe ratio, measured by
/// zeroing the consumer columns of its least important units (which removes exactly their
/// contribution) with every other layer intact.
fn sensitivity(
    model: &Model,
    probe: &[Vec<u32>],
    cx: &mut PassContext<'_>,
    instances: &[Instance<'_>],
    ranked: &[Vec<usize>],
    o: &PruneStructuredOptions,
    step: usize,
) -> Result<Vec<Vec<(usize, f64)>>, PassError> {
    // One float copy for every probe: no probe dequantizes the model again, and zeroed columns
    // are put back as they were without touching the pass's model.
    let mut probe_model = model.clone();
    let quantized: Vec<(String, Vec<usize>)> = probe_model
        .graph
        .params()
        .iter()
        .filter(|(_, t)| t.quant.is_some())
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    for (name, shape) in quantized {
        let v = probe_model
            .weights
            .get(&name)
            .ok_or_else(|| fail(format!("'{name}' has no data")))?
            .to_f32();
        crate::tensors::store_f32(&mut probe_model, &name, shape, &v).map_err(fail)?;
    }
    let model = &mut probe_model;
    let base = probe_logits(model, cx, probe)?;
    let vocab = base.len() / (probe.len() * probe[0].len()).max(1);
    let base_logp: Vec<f32> = base.chunks_exact(vocab).flat_map(log_softmax).collect();
    drop(base);
    let total = (instances.len() * o.probe_ratios.len()) as u64;
    cx.progress
        .start("prune-structured: layer sensitivity", total);
    let mut done = 0;
    let mut curves = Vec::new();
    for (inst, order) in instances.iter().zip(ranked) {
        let mut curve = Vec::new();
        for r in &o.probe_ratios {
            let n = ((inst.units() as f32 * r) as usize) / step * step;
            let n = n.min(inst.units() - 1);
            if n == 0 {
                continue;
            }
            let cols = inst.consumer_cols(&order[..n]);
            let mut saved = Vec::new();
            for c in inst.consumers() {
                let t = model
                    .weights
                    .get(&c.weight)
                    .cloned()
                    .ok_or_else(|| fail(format!("'{}' has no data", c.weight)))?;
                let (rows, width) = (t.ty.shape[0], t.ty.shape[1]);
                let mut v = t.to_f32();
                for row in 0..rows {
                    for &col in &cols {
                        v[row * width + col] = 0.0;
                    }
                }
                crate::tensors::store_f32(model, &c.weight, vec![rows, width], &v).map_err(fail)?;
                saved.push((c.weight.clone(), t));
            }
            let logits = probe_logits(model, cx, probe);
            for (name, t) in saved {
                model.weights.insert(name, t);
            }
            let kl = mean_kl(&base_logp, &logits?, vocab);
            curve.push((n, kl));
            done += 1;
            cx.progress.advance(done);
            cx.progress
                .note(&format!("{} −{n}: KL {kl:.4}", inst.name()));
        }
        curves.push(curve);
    }
    cx.progress.finish();
    Ok(curves)
}
