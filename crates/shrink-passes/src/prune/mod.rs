//! `prune`: unstructured and N:M sparsity. Sets a fraction of the weights of the selected
//! decoder linears to exact zeros, chosen by magnitude, by Wanda's `|W|·‖X‖₂` (Sun et al.,
//! 2023) or by SparseGPT's OBS reconstruction (Frantar & Alistarh, 2023, [`sparsegpt`]), and
//! records each pruned matrix's mask in the weight store. Calibrated criteria run the model
//! layer by layer over calibration text ([`shrink_runtime::calibrate`]), pruning each linear
//! before the next site is calibrated, so later layers see the pruned earlier ones (as the
//! reference code of both papers does). `docs/pruning.md` describes the options.

pub mod sparsegpt;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shrink_ir::{Model, Op, SparsityMask, TensorData, ValueId};
use shrink_runtime::calibrate::{self, CalibrationHook, Site, SiteLinear};

use crate::calibration::CalibrationOptions;
use crate::linalg::output_error;
use crate::pattern::glob;
use crate::{
    canonical_ron, json_f64, parse_options, Pass, PassContext, PassError, PassInfo, PassReport,
};
use sparsegpt::SparseGptOptions;

pub const INFO: PassInfo = PassInfo {
    name: "prune",
    summary:
        "Zero weights of decoder linears (unstructured or N:M) by magnitude, wanda or sparsegpt.",
    build: |raw| Ok(Box::new(Prune(parse_options(raw)?))),
};

/// How the weights to zero are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Smallest `|W|` of the tensor.
    Magnitude,
    /// Smallest `|W_ij|·‖X_j‖₂` of each output row.
    Wanda,
    /// SparseGPT: OBS saliency `w²/[U]_jj²` per block of columns, the rest of the row updated
    /// to compensate.
    Sparsegpt,
}

/// How a sparsity target is spread over the selected tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Every tensor loses the same fraction.
    Uniform,
    /// One threshold of the criterion's score over all selected tensors decides how many
    /// weights each loses (at most `max_layer_sparsity` of any one).
    Global,
}

/// Another sparsity for the tensors matching `pattern` (first match wins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub pattern: String,
    pub sparsity: f32,
}

/// Options of `prune`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneOptions {
    pub allocation: Allocation,
    /// Calibration text for `wanda` and `sparsegpt`.
    pub calibration: CalibrationOptions,
    pub criterion: Criterion,
    /// Linear weights matching any of these are left dense.
    pub exclude: Vec<String>,
    /// Linear weights to prune (the output head and the embedding are never pruned).
    pub include: Vec<String>,
    /// With `allocation: global`, the largest fraction any one tensor may lose.
    pub max_layer_sparsity: f32,
    /// `(N, M)`: in every run of M consecutive weights of a row, the N of lowest score are
    /// zeroed (2:4 is `(2, 4)`). The sparsity is then N/M.
    pub nm: Option<(usize, usize)>,
    /// Per-pattern sparsities (unstructured only).
    pub overrides: Vec<Override>,
    pub sparsegpt: SparseGptOptions,
    /// Fraction of the weights to zero, in [0, 1); unset: 0.5, or N/M with `nm`.
    pub sparsity: Option<f32>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            allocation: Allocation::Uniform,
            calibration: CalibrationOptions::default(),
            criterion: Criterion::Magnitude,
            exclude: Vec::new(),
            include: vec!["*".into()],
            max_layer_sparsity: 1.0,
            nm: None,
            overrides: Vec::new(),
            sparsegpt: SparseGptOptions::default(),
            sparsity: None,
        }
    }
}

/// How much of one tensor is pruned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// This fraction of the tensor (magnitude), of each row (wanda), of each block (sparsegpt).
    Fraction(f32),
    /// Exactly this many weights of the tensor (from global allocation).
    Count(usize),
    /// N of every M consecutive weights of each row.
    NM(usize, usize),
}

impl Amount {
    /// Weights pruned out of `len` for a fraction (floored, as the reference code's `int(…)`).
    fn of(s: f32, len: usize) -> usize {
        ((len as f64 * s as f64).floor() as usize).min(len)
    }

    /// The fraction pruned (for a count, unknown here: 0).
    fn fraction(self) -> f32 {
        match self {
            Amount::Fraction(s) => s,
            Amount::NM(n, m) => n as f32 / m as f32,
            Amount::Count(_) => 0.0,
        }
    }

    /// Weights pruned in each row of a `[rows, cols]` matrix (not for N:M).
    fn per_row(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Amount::Fraction(s) => vec![Self::of(s, cols); rows],
            // Spread evenly: row r gets ⌊(r+1)k/rows⌋ − ⌊rk/rows⌋, which sums to k.
            Amount::Count(k) => (0..rows)
                .map(|r| ((r + 1) * k / rows - r * k / rows).min(cols))
                .collect(),
            Amount::NM(n, m) => vec![cols / m * n; rows],
        }
    }
}

pub struct Prune(pub PruneOptions);

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed {
        pass: INFO.name,
        message: message.into(),
    }
}

/// Positions of the `k` smallest scores, ties to the lower position (as a stable sort).
pub fn smallest(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let by = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by);
        idx.truncate(k);
    }
    idx
}

/// The mask of `scores` (`[rows, cols]`) for `amount`: per tensor (`tensor_wide`) or per row,
/// or per M-group of each row for N:M.
fn mask_of(
    scores: &[f32],
    rows: usize,
    cols: usize,
    amount: Amount,
    tensor_wide: bool,
) -> SparsityMask {
    let mut mask = SparsityMask::new(rows, cols);
    match amount {
        Amount::NM(n, m) => {
            for r in 0..rows {
                for g in (0..cols).step_by(m) {
                    let end = (g + m).min(cols);
                    for j in smallest(&scores[r * cols + g..r * cols + end], n) {
                        mask.set(r, g + j, true);
                    }
                }
            }
        }
        Amount::Fraction(_) | Amount::Count(_) if tensor_wide => {
            let k = match amount {
                Amount::Count(k) => k,
                _ => Amount::of(amount.fraction(), rows * cols),
            };
            for i in smallest(scores, k) {
                mask.set(i / cols, i % cols, true);
            }
        }
        _ => {
            for (r, k) in amount.per_row(rows, cols).into_iter().enumerate() {
                for j in smallest(&scores[r * cols..(r + 1) * cols], k) {
                    mask.set(r, j, true);
                }
            }
        }
    }
    mask
}

/// Magnitude pruning of `w` (`[rows, cols]`): the smallest `|w|` of the whole tensor (as the
/// magnitude baselines of the Wanda and SparseGPT papers), or of each M-group for N:M.
pub fn magnitude_mask(w: &[f32], rows: usize, cols: usize, amount: Amount) -> SparsityMask {
    let scores: Vec<f32> = w.iter().map(|x| x.abs()).collect();
    mask_of(&scores, rows, cols, amount, true)
}

/// Wanda's scores `|W_ij|·√(Σx_j²)`, from the per-feature sums of squares of the inputs.
pub fn wanda_scores(w: &[f32], cols: usize, sq_sum: &[f32]) -> Vec<f32> {
    let norms: Vec<f32> = sq_sum.iter().map(|s| s.max(0.0).sqrt()).collect();
    w.iter()
        .enumerate()
        .map(|(i, x)| x.abs() * norms[i % cols])
        .collect()
}

/// Wanda (Sun et al., 2023): the smallest `|W_ij|·‖X_j‖₂` compared within each output row (the
/// paper's per-output grouping), or within each M-group of a row for N:M.
pub fn wanda_mask(
    w: &[f32],
    rows: usize,
    cols: usize,
    sq_sum: &[f32],
    amount: Amount,
) -> SparsityMask {
    mask_of(&wanda_scores(w, cols, sq_sum), rows, cols, amount, false)
}

/// A selected matrix as f32, checked finite.
fn matrix(model: &Model, name: &str) -> Result<(Vec<f32>, usize, usize), PassError> {
    crate::tensors::finite_matrix(model, name)
        .map_err(|m| fail(format!("{m}: pruning needs finite weights")))
}

/// Stores the pruned values of `name` (a float dtype stays; dequantized input becomes f32)
/// and its mask.
fn store(model: &mut Model, name: &str, v: Vec<f32>, mask: SparsityMask) -> Result<(), PassError> {
    let shape = model
        .graph
        .param(name)
        .map(|p| p.shape.clone())
        .ok_or_else(|| fail(format!("'{name}' is not declared")))?;
    crate::tensors::store_f32(model, name, shape, &v).map_err(fail)?;
    model
        .weights
        .set_mask(name, mask)
        .map_err(|m| fail(format!("'{name}': {m}")))
}

fn in_range(s: f32) -> bool {
    (0.0..1.0).contains(&s)
}

impl PruneOptions {
    /// The sparsity asked for, checked against `nm`.
    fn target(&self) -> Result<f32, PassError> {
        if let Some((n, m)) = self.nm {
            if n == 0 || n >= m {
                return Err(fail(format!(
                    "nm ({n}, {m}): needs 0 < N < M (N of every M weights are zeroed)"
                )));
            }
            let s = n as f32 / m as f32;
            if let Some(t) = self.sparsity.filter(|t| *t != s) {
                return Err(fail(format!(
                    "sparsity {t} disagrees with nm ({n}, {m}), which zeroes {s} of the weights: \
                     leave sparsity unset with nm"
                )));
            }
            if !self.overrides.is_empty() {
                return Err(fail(
                    "overrides set per-tensor sparsities, which nm fixes at N/M: use exclude to \
                     keep tensors dense",
                ));
            }
            if self.allocation == Allocation::Global {
                return Err(fail(
                    "allocation: global chooses per-tensor sparsities, which nm fixes at N/M: \
                     use allocation: uniform with nm",
                ));
            }
            return Ok(s);
        }
        let s = self.sparsity.unwrap_or(0.5);
        if !in_range(s) {
            return Err(fail(format!("sparsity {s} is outside [0, 1)")));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if !in_range(o.sparsity) {
                return Err(fail(format!(
                    "overrides[{i}] ('{}'): sparsity {} is outside [0, 1)",
                    o.pattern, o.sparsity
                )));
            }
        }
        Ok(s)
    }

    fn check(&self) -> Result<(), PassError> {
        self.target()?;
        if self.allocation == Allocation::Global {
            if self.criterion == Criterion::Sparsegpt {
                return Err(fail(
                    "allocation: global is not available with criterion sparsegpt: its scores \
                     come from the Hessian of each layer's inputs after the earlier layers are \
                     pruned and reconstructed, so no single threshold exists before pruning \
                     starts; use allocation: uniform (with overrides for per-tensor sparsities)",
                ));
            }
            let c = self.max_layer_sparsity;
            if !(c > 0.0 && c <= 1.0) {
                return Err(fail(format!("max_layer_sparsity {c} is outside (0, 1]")));
            }
        }
        let b = self.sparsegpt.block_size;
        if b == 0 {
            return Err(fail("sparsegpt.block_size must be at least 1"));
        }
        if let (Criterion::Sparsegpt, Some((_, m))) = (self.criterion, self.nm) {
            if !b.is_multiple_of(m) {
                return Err(fail(format!(
                    "sparsegpt.block_size {b} is not a multiple of nm's M = {m}: an M-group \
                     must not straddle two blocks"
                )));
            }
        }
        let d = self.sparsegpt.damp;
        if !(d.is_finite() && d >= 0.0) {
            return Err(fail(format!("sparsegpt.damp {d} must be finite and ≥ 0")));
        }
        Ok(())
    }

    /// The tensors to prune and how much of each, checked before anything changes.
    fn plan(&self, model: &Model, original: &Model) -> Result<BTreeMap<String, Amount>, PassError> {
        self.check()?;
        let target = self.target()?;
        let g = &model.graph;
        let mut embeddings = Vec::new();
        let mut linears = Vec::new();
        for id in g.node_ids() {
            let Some(n) = g.node(id) else { continue };
            match &n.op {
                Op::Embedding { weight } => embeddings.push(weight.clone()),
                // The output head (a linear feeding only outputs) is never pruned.
                Op::Linear { weight, .. } if !g.feeds_only_outputs(id) => {
                    linears.push(weight.clone())
                }
                _ => {}
            }
        }
        linears.retain(|w| !embeddings.contains(w));
        linears.sort();
        linears.dedup();
        for (option, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for p in patterns.iter() {
                if !linears.iter().any(|w| glob(p, w)) {
                    return Err(fail(format!(
                        "{option} pattern '{p}' matches no decoder linear weight (the output \
                         head and embeddings are never pruned)"
                    )));
                }
            }
        }
        let patterns = crate::Patterns {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        };
        let selected: Vec<String> = linears
            .into_iter()
            .filter(|w| patterns.selects(w))
            .collect();
        for (i, o) in self.overrides.iter().enumerate() {
            if !selected.iter().any(|w| glob(&o.pattern, w)) {
                return Err(fail(format!(
                    "overrides[{i}]: pattern '{}' matches none of the weights selected for pruning",
                    o.pattern
                )));
            }
        }
        let mut plan = BTreeMap::new();
        for w in selected {
            let ty = g
                .param(&w)
                .ok_or_else(|| fail(format!("'{w}' is not declared")))?;
            let [_, cols] = ty.shape[..] else {
                return Err(fail(format!("'{w}' is not a matrix ({ty})")));
            };
            if let Some((n, m)) = self.nm {
                if !cols.is_multiple_of(m) {
                    return Err(fail(format!(
                        "nm ({n}, {m}): '{w}' ({ty}) has rows of {cols} weights, not a multiple \
                         of M = {m}"
                    )));
                }
            }
            // A quantized tensor is pruned in its dequantized values (stored as f32) only when
            // it came so from the input file: one quantized by an earlier pass would lose that
            // quantization, and its quantizer would not have seen the zeros.
            if let Some(q) = ty.quant {
                let same = |a: &TensorData, b: &TensorData| a.ty == b.ty && a.bytes() == b.bytes();
                let from_input = match (model.weights.get(&w), original.weights.get(&w)) {
                    (Some(a), Some(b)) => same(a, b),
                    // Shapes only (a dry run's plan): the pipeline's order check covers this.
                    (None, None) => true,
                    _ => false,
                };
                if !from_input {
                    return Err(fail(format!(
                        "'{w}' was quantized ({q}) by an earlier pass: prune before quantize, so \
                         the quantizer sees the zeros"
                    )));
                }
            }
            let amount = match self.nm {
                Some((n, m)) => Amount::NM(n, m),
                None => Amount::Fraction(
                    self.overrides
                        .iter()
                        .find(|o| glob(&o.pattern, &w))
                        .map_or(target, |o| o.sparsity),
                ),
            };
            plan.insert(w, amount);
        }
        Ok(plan)
    }
}

/// Global allocation: how many weights each tensor loses so that `total` are pruned over all,
/// the lowest scores first, no tensor above its cap. `scores` are each tensor's scores sorted
/// ascending (non-negative). Ties at the threshold go to tensors in name order.
pub fn allocate(
    scores: &BTreeMap<String, Vec<f32>>,
    caps: &BTreeMap<String, usize>,
    total: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let cap = |name: &str| caps.get(name).copied().unwrap_or(0);
    let room: usize = scores.keys().map(|n| cap(n)).sum();
    if room < total {
        return Err(format!(
            "the per-tensor caps allow {room} pruned weights, fewer than the {total} asked"
        ));
    }
    let le = |t: f32| -> usize {
        scores
            .iter()
            .map(|(n, s)| s.partition_point(|x| *x <= t).min(cap(n)))
            .sum()
    };
    // Smallest threshold t (scores are ≥ 0, so f32 bit patterns order like the values) with
    // Σ min(#{s ≤ t}, cap) ≥ total.
    let top = scores
        .values()
        .filter_map(|s| s.last())
        .fold(0.0f32, |a, b| a.max(*b));
    let (mut lo, mut hi) = (0u32, top.to_bits());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if le(f32::from_bits(mid)) >= total {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t = f32::from_bits(lo);
    let mut counts: BTreeMap<String, usize> = scores
        .iter()
        .map(|(n, s)| (n.clone(), s.partition_point(|x| *x < t).min(cap(n))))
        .collect();
    let mut rest = total - counts.values().sum::<usize>();
    for (n, s) in scores {
        if rest == 0 {
            break;
        }
        let k = counts.get_mut(n).ok_or("allocation lost a tensor")?;
        let extra = (s.partition_point(|x| *x <= t).min(cap(n)) - *k).min(rest);
        *k += extra;
        rest -= extra;
    }
    Ok(counts)
}

/// Replaces the fractions of `plan` outside the pinned ones (overrides) by counts from one
/// global threshold over `scores`.
fn allocate_plan(
    o: &PruneOptions,
    plan: &mut BTreeMap<String, Amount>,
    scores: BTreeMap<String, Vec<f32>>,
) -> Result<(), PassError> {
    let s = o.target()?;
    let pinned = |w: &str| o.overrides.iter().any(|ov| glob(&ov.pattern, w));
    let pool: BTreeMap<String, Vec<f32>> = scores.into_iter().filter(|(w, _)| !pinned(w)).collect();
    let numel: usize = pool.values().map(Vec::len).sum();
    let caps = pool
        .iter()
        .map(|(w, v)| (w.clone(), Amount::of(o.max_layer_sparsity, v.len())))
        .collect();
    let counts = allocate(&pool, &caps, Amount::of(s, numel)).map_err(|m| {
        fail(format!(
            "allocation: global with max_layer_sparsity {}: {m}",
            o.max_layer_sparsity
        ))
    })?;
    for (w, k) in counts {
        plan.insert(w, Amount::Count(k));
    }
    Ok(())
}

fn sorted(mut v: Vec<f32>) -> Vec<f32> {
    v.sort_by(f32::total_cmp);
    v
}

#[derive(Default)]
struct Stats {
    max_damp: f64,
    err_method: f64,
    err_magnitude: f64,
    err_wanda: f64,
}

/// What a calibrated criterion does at each site.
struct Hook<'a> {
    criterion: Criterion,
    plan: &'a BTreeMap<String, Amount>,
    sparsegpt: &'a SparseGptOptions,
    stats: Stats,
    /// With `None`, prune; with a map, only record each weight's Wanda scores (global
    /// allocation's first run).
    observe: Option<BTreeMap<String, Vec<f32>>>,
    /// The pass error that stopped calibration, reported as is.
    error: Option<PassError>,
}

impl CalibrationHook for Hook<'_> {
    fn wants(&self, weight: &str) -> bool {
        self.plan.contains_key(weight)
    }

    fn site(
        &mut self,
        model: &mut Model,
        _value: ValueId,
        linears: &[SiteLinear],
        site: &dyn Site,
    ) -> shrink_runtime::Result<Option<Vec<f32>>> {
        match self.prune_site(model, linears, site) {
            Ok(()) => Ok(None),
            Err(e) => {
                let m = e.to_string();
                self.error = Some(e);
                Err(shrink_runtime::RuntimeError::Input(m))
            }
        }
    }
}

impl Hook<'_> {
    fn prune_site(
        &mut self,
        model: &mut Model,
        linears: &[SiteLinear],
        site: &dyn Site,
    ) -> Result<(), PassError> {
        let mm = |a: &[f32], b: &[f32], m: usize, k: usize, n: usize| site.matmul(a, b, m, k, n);
        match self.criterion {
            Criterion::Sparsegpt => {
                let gram = site.gram();
                let tokens = site.tokens();
                let cols = site.features();
                let sq: Vec<f32> = (0..cols).map(|i| gram[i * cols + i]).collect();
                for l in linears {
                    let amount = self.plan[&l.weight];
                    let (w, rows, cols) = matrix(model, &l.weight)?;
                    let p = sparsegpt::sparsegpt(
                        &w,
                        rows,
                        cols,
                        &gram,
                        tokens,
                        amount,
                        self.sparsegpt,
                        &mm,
                    )
                    .map_err(|m| fail(format!("'{}': {m}", l.weight)))?;
                    self.stats.max_damp = self.stats.max_damp.max(p.damp);
                    // The layer's output error against the two simpler criteria at the same
                    // amount, on the same inputs: below 1 is what reconstruction bought.
                    let err = |q: &[f32]| {
                        let delta: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
                        output_error(&delta, rows, cols, &gram, &mm)
                    };
                    let masked = |mask: SparsityMask| {
                        let mut q = w.clone();
                        mask.apply(&mut q);
                        err(&q)
                    };
                    self.stats.err_magnitude += masked(magnitude_mask(&w, rows, cols, amount));
                    self.stats.err_wanda += masked(wanda_mask(&w, rows, cols, &sq, amount));
                    self.stats.err_method += err(&p.weights);
                    store(model, &l.weight, p.weights, p.mask)?;
                }
            }
            Criterion::Wanda | Criterion::Magnitude => {
                let sq = site.sq_sum();
                for l in linears {
                    let (mut w, rows, cols) = matrix(model, &l.weight)?;
                    if let Some(scores) = self.observe.as_mut() {
                        scores.insert(l.weight.clone(), sorted(wanda_scores(&w, cols, &sq)));
                        continue;
                    }
                    let mask = wanda_mask(&w, rows, cols, &sq, self.plan[&l.weight]);
                    mask.apply(&mut w);
                    store(model, &l.weight, w, mask)?;
                }
            }
        }
        Ok(())
    }
}

impl Pass for Prune {
    fn name(&self) -> &'static str {
        INFO.name
    }

    /// Pruned weights are rewritten in f32: a quantized one comes back as f32.
    fn plan(&self, model: &mut Model) -> Result<(), String> {
        let plan = self.0.plan(model, model).map_err(|e| e.to_string())?;
        for w in plan.keys() {
            if let Some(p) = model.graph.param_mut(w) {
                if p.quant.is_some() {
                    *p = shrink_ir::ParamType::new(shrink_ir::DType::F32, p.shape.clone());
                }
            }
        }
        Ok(())
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        self.0.calibration.files()
    }

    fn rewrites(&self, model: &Model) -> Vec<String> {
        self.0
            .plan(model, model)
            .map(|p| p.into_keys().collect())
            .unwrap_or_default()
    }

    fn working_set(&self, model: &Model) -> Result<u64, String> {
        let o = &self.0;
        let plan = o.plan(model, model).map_err(|e| e.to_string())?;
        // A global allocation holds every target's scores at once.
        let scores: u64 = match o.allocation {
            Allocation::Global => plan
                .keys()
                .filter_map(|w| model.graph.param(w))
                .map(|p| p.numel() as u64 * 4)
                .fold(0u64, u64::saturating_add),
            _ => 0,
        };
        let one_at_a_time = 2 * crate::largest_f32_bytes(model);
        // Per site: SparseGPT the Gram matrix, Hessian and factor; Wanda the squared sums.
        let site = |n: f64, rows: f64, _tokens: f64| match o.criterion {
            Criterion::Sparsegpt => 28.0 * n * n + 24.0 * rows * n,
            _ => 8.0 * n + 16.0 * rows * n,
        };
        let calibrated = match o.criterion {
            Criterion::Magnitude => 0,
            _ => crate::calibration::working_set(
                model,
                &o.calibration,
                &|w| plan.contains_key(w),
                false,
                &site,
            )?,
        };
        Ok(calibrated.max(one_at_a_time).saturating_add(scores))
    }

    fn needs(&self) -> crate::Needs {
        crate::Needs::DenseWeights
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let o = &self.0;
        let started = Instant::now();
        let all = o.plan(model, cx.original)?;
        // Tensors at sparsity 0 stay as they are (no rewrite, no mask).
        let mut plan: BTreeMap<String, Amount> = all
            .iter()
            .filter(|(_, a)| **a != Amount::Fraction(0.0))
            .map(|(w, a)| (w.clone(), *a))
            .collect();
        let global = o.allocation == Allocation::Global;
        let mut report = PassReport::default();
        let mut calib_tokens = 0usize;
        let mut stats = Stats::default();
        match o.criterion {
            Criterion::Magnitude => {
                if global {
                    let mut scores = BTreeMap::new();
                    for w in plan.keys() {
                        let (v, _, _) = matrix(model, w)?;
                        scores.insert(w.clone(), sorted(v.iter().map(|x| x.abs()).collect()));
                    }
                    allocate_plan(o, &mut plan, scores)?;
                }
                cx.progress.start("prune (magnitude)", plan.len() as u64);
                for (i, (w, amount)) in plan.iter().enumerate() {
                    let (mut v, rows, cols) = matrix(model, w)?;
                    let mask = magnitude_mask(&v, rows, cols, *amount);
                    mask.apply(&mut v);
                    store(model, w, v, mask)?;
                    cx.progress.advance(i as u64 + 1);
                }
                cx.progress.finish();
            }
            Criterion::Wanda | Criterion::Sparsegpt => {
                if plan.is_empty() {
                    // Nothing to calibrate for.
                } else {
                    let seqs = o
                        .calibration
                        .sequences(cx.base_dir, cx.tokenizer, &mut cx.rng)
                        .map_err(fail)?;
                    calib_tokens = seqs.len() * seqs.first().map_or(0, Vec::len);
                    let name = if o.criterion == Criterion::Wanda {
                        "wanda"
                    } else {
                        "sparsegpt"
                    };
                    if global {
                        // First run on the dense model: the scores of every tensor decide the
                        // allocation; the second run prunes.
                        let mut hook = Hook {
                            criterion: o.criterion,
                            plan: &plan,
                            sparsegpt: &o.sparsegpt,
                            stats: Stats::default(),
                            observe: Some(BTreeMap::new()),
                            error: None,
                        };
                        let what = format!("prune ({name} scores, {} sequences)", seqs.len());
                        calibrate_with(model, &seqs, cx, &mut hook, &what)?;
                        let scores = hook.observe.take().unwrap_or_default();
                        allocate_plan(o, &mut plan, scores)?;
                    }
                    let mut hook = Hook {
                        criterion: o.criterion,
                        plan: &plan,
                        sparsegpt: &o.sparsegpt,
                        stats: Stats::default(),
                        observe: None,
                        error: None,
                    };
                    let what = format!(
                        "prune ({name}, {} × {} tokens)",
                        seqs.len(),
                        o.calibration.seq_len
                    );
                    calibrate_with(model, &seqs, cx, &mut hook, &what)?;
                    stats = hook.stats;
                }
            }
        }
        // What was reached, from the masks stored.
        let mut per_tensor = BTreeMap::new();
        let (mut pruned, mut total) = (0usize, 0usize);
        for w in all.keys() {
            let numel = model.graph.param(w).map_or(0, |p| p.numel());
            let k = if plan.contains_key(w) {
                model.weights.mask(w).map_or(0, SparsityMask::count)
            } else {
                0
            };
            pruned += k;
            total += numel;
            per_tensor.insert(w.clone(), json_f64(round6(k as f64 / numel.max(1) as f64)));
        }
        report.changed = !plan.is_empty();
        report.stats.insert(
            "sparsity".into(),
            serde_json::Value::Object(per_tensor.into_iter().collect()),
        );
        report.stats.insert(
            "sparsity_overall".into(),
            json_f64(round6(pruned as f64 / total.max(1) as f64)),
        );
        report.stats.insert("params_pruned".into(), pruned.into());
        report.stats.insert("params_targeted".into(), total.into());
        report
            .stats
            .insert("tensors_pruned".into(), plan.len().into());
        if calib_tokens > 0 {
            report
                .stats
                .insert("calibration_tokens".into(), calib_tokens.into());
        }
        if o.criterion == Criterion::Sparsegpt && stats.err_magnitude > 0.0 {
            report
                .stats
                .insert("sparsegpt_max_damp".into(), json_f64(stats.max_damp));
            report.stats.insert(
                "output_error_vs_magnitude".into(),
                json_f64(stats.err_method / stats.err_magnitude),
            );
            report.stats.insert(
                "output_error_vs_wanda".into(),
                json_f64(stats.err_method / stats.err_wanda),
            );
        }
        report.stats.insert(
            "seconds".into(),
            json_f64((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        Ok(report)
    }
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Runs calibration with `hook`, reporting progress by sites; a pass error raised inside the
/// hook comes back as itself.
fn calibrate_with(
    model: &mut Model,
    seqs: &[Vec<u32>],
    cx: &mut PassContext<'_>,
    hook: &mut Hook<'_>,
    what: &str,
) -> Result<(), PassError> {
    let progress = &mut *cx.progress;
    let r = calibrate::run(model, seqs, cx.device, hook, &mut |done, total| {
        if done == 1 {
            progress.start(what, total as u64);
        }
        progress.advance(done as u64)
    });
    cx.progress.finish();
    match (r, hook.error.take()) {
        (_, Some(e)) => Err(e),
        (Err(source), None) => Err(PassError::Runtime {
            pass: INFO.name,
            source,
        }),
        (Ok(()), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_breaks_ties_by_position() {
        assert_eq!(smallest(&[3.0, 1.0, 1.0, 0.5, 1.0], 3), vec![3, 1, 2]);
        assert!(smallest(&[1.0], 0).is_empty());
        assert_eq!(smallest(&[2.0, 1.0], 5).len(), 2);
    }

    #[test]
    fn nm_masks_prune_n_of_every_m() {
        let w: Vec<f32> = (0..32).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let m = magnitude_mask(&w, 2, 16, Amount::NM(2, 4));
        for r in 0..2 {
            for g in 0..4 {
                let k = (0..4).filter(|j| m.get(r, g * 4 + j)).count();
                assert_eq!(k, 2);
            }
        }
    }

    #[test]
    fn per_row_counts_sum_to_the_count() {
        let rows = Amount::Count(10).per_row(4, 8);
        assert_eq!(rows.iter().sum::<usize>(), 10);
        assert!(rows.iter().all(|k| (2..=3).contains(k)));
        assert_eq!(Amount::Fraction(0.5).per_row(3, 7), vec![3, 3, 3]);
    }

    #[test]
    fn global_allocation_follows_one_threshold_under_caps() {
        let s = |v: &[f32]| v.to_vec();
        let scores: BTreeMap<String, Vec<f32>> = [
            ("a".to_string(), s(&[0.1, 0.2, 0.3, 0.4])),
            ("b".to_string(), s(&[0.05, 0.15, 0.25, 0.9])),
        ]
        .into_iter()
        .collect();
        let caps = |c: usize| scores.keys().map(|k| (k.clone(), c)).collect();
        // Four lowest overall: 0.05, 0.1, 0.15, 0.2 → two each.
        let got = allocate(&scores, &caps(4), 4).unwrap();
        assert_eq!((got["a"], got["b"]), (2, 2));
        // A cap of 1 per tensor binds.
        let got = allocate(&scores, &caps(1), 2).unwrap();
        assert_eq!((got["a"], got["b"]), (1, 1));
        // With cap 3, five go: b's three lowest and a's two lowest.
        let got = allocate(&scores, &caps(3), 5).unwrap();
        assert_eq!((got["a"], got["b"]), (2, 3));
        assert!(allocate(&scores, &caps(1), 3).is_err());
        // Ties at the threshold: name order.
        let tied: BTreeMap<String, Vec<f32>> = [
            ("a".to_string(), s(&[1.0, 1.0])),
            ("b".to_string(), s(&[1.0, 1.0])),
        ]
        .into_iter()
        .collect();
        let got = allocate(&tied, &caps(2), 3).unwrap();
        assert_eq!((got["a"], got["b"]), (2, 1));
    }
}
