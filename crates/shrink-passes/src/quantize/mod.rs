//! `quantize`: stores the selected weights in a quantized scheme (see `docs/quantization.md`),
//! by round-to-nearest (`rtn`), GPTQ (`gptq`) or AWQ (`awq`). Calibrated methods run the model
//! layer by layer over calibration text ([`shrink_runtime::calibrate`]); GPTQ quantizes each
//! layer before the next one is calibrated, so later layers see the quantized earlier ones.

pub mod awq;
pub mod gptq;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shrink_ir::{Model, Op, ParamType, QuantScheme, TensorData, ValueId};
use shrink_runtime::calibrate::{self, CalibrationHook, Site, SiteLinear};

use crate::calibration::CalibrationOptions;
use crate::{
    canonical_ron, json_f64, parse_options, Pass, PassContext, PassError, PassInfo, PassReport,
};
use awq::AwqOptions;
use gptq::GptqOptions;

pub const INFO: PassInfo = PassInfo {
    name: "quantize",
    summary: "Quantize weights (q8_0, q4_0, q4_1, int<b>[_g<G>][_asym], nf4_b<B>[_dq]) by rtn, gptq or awq.",
    build: |raw| Ok(Box::new(Quantize(parse_options(raw)?))),
};

/// A scheme in options, written by name (`"q4_0"`, `"int4_g64_asym"`, `"nf4_b64_dq"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemeName(pub QuantScheme);

impl Serialize for SchemeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for SchemeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(SchemeName).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SchemeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Round to nearest, no calibration.
    Rtn,
    Gptq,
    Awq,
}

/// Another scheme for the linears whose weight matches `pattern` (first match wins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub pattern: String,
    pub scheme: SchemeName,
}

/// Options of `quantize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizeOptions {
    pub awq: AwqOptions,
    /// Calibration text for `gptq` and `awq`.
    pub calibration: CalibrationOptions,
    /// Scheme of the token embedding (with a tied output head, the head too), by
    /// round-to-nearest; `None` leaves it as it is.
    pub embedding: Option<SchemeName>,
    /// Linear weights matching any of these are left alone.
    pub exclude: Vec<String>,
    pub gptq: GptqOptions,
    /// Scheme of an untied output head, by round-to-nearest; `None` leaves it.
    pub head: Option<SchemeName>,
    /// Linear weights to quantize (the output head and the embedding excepted: see `head`
    /// and `embedding`).
    pub include: Vec<String>,
    pub method: Method,
    pub overrides: Vec<Override>,
    pub scheme: SchemeName,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            awq: AwqOptions::default(),
            calibration: CalibrationOptions::default(),
            embedding: None,
            exclude: Vec::new(),
            gptq: GptqOptions::default(),
            head: None,
            include: vec!["*".into()],
            method: Method::Rtn,
            overrides: Vec::new(),
            scheme: SchemeName(QuantScheme::Q4_0),
        }
    }
}

pub struct Quantize(pub QuantizeOptions);

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed {
        pass: INFO.name,
        message: message.into(),
    }
}

/// Replaces parameter `name` by packed data.
fn store(
    model: &mut Model,
    name: &str,
    scheme: QuantScheme,
    packed: Vec<u8>,
) -> Result<(), PassError> {
    let shape = model
        .graph
        .param(name)
        .map(|p| p.shape.clone())
        .ok_or_else(|| fail(format!("'{name}' is not declared")))?;
    let data = TensorData::quantized(scheme, shape.clone(), packed)
        .map_err(|m| fail(format!("'{name}': {m}")))?;
    if let Some(p) = model.graph.param_mut(name) {
        *p = ParamType::quantized(scheme, shape);
    }
    model.weights.insert(name.to_string(), data);
    Ok(())
}

fn weights_of(model: &Model, name: &str) -> Result<(Vec<f32>, usize, usize), PassError> {
    crate::tensors::finite_matrix(model, name).map_err(fail)
}

/// Which weights get which scheme.
struct Plan {
    /// Linear weights quantized by the method.
    linears: BTreeMap<String, QuantScheme>,
    /// Embedding and head weights, by round-to-nearest.
    rtn_only: BTreeMap<String, QuantScheme>,
}

impl QuantizeOptions {
    fn plan(&self, model: &Model) -> Result<Plan, PassError> {
        let g = &model.graph;
        let patterns = crate::Patterns {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        };
        let mut embeddings = Vec::new();
        let mut heads = Vec::new();
        let mut linears = Vec::new();
        for id in g.node_ids() {
            let Some(n) = g.node(id) else { continue };
            match &n.op {
                Op::Embedding { weight } => embeddings.push(weight.clone()),
                Op::Linear { weight, .. } => {
                    if g.feeds_only_outputs(id) {
                        heads.push(weight.clone());
                    } else {
                        linears.push(weight.clone());
                    }
                }
                _ => {}
            }
        }
        let mut plan = Plan {
            linears: BTreeMap::new(),
            rtn_only: BTreeMap::new(),
        };
        for w in linears {
            if embeddings.contains(&w) || !patterns.selects(&w) {
                continue;
            }
            let scheme = self
                .overrides
                .iter()
                .find(|o| crate::pattern::glob(&o.pattern, &w))
                .map_or(self.scheme.0, |o| o.scheme.0);
            plan.linears.insert(w, scheme);
        }
        if let Some(s) = self.embedding {
            for w in &embeddings {
                plan.rtn_only.insert(w.clone(), s.0);
            }
        }
        if let Some(s) = self.head {
            for w in heads.iter().filter(|w| !embeddings.contains(w)) {
                plan.rtn_only.insert(w.clone(), s.0);
            }
        }
        // Refuse shapes a scheme cannot take before anything changes.
        for (w, s) in plan.linears.iter().chain(&plan.rtn_only) {
            let ty = g
                .param(w)
                .ok_or_else(|| fail(format!("'{w}' is not declared")))?;
            s.check_shape(&ty.shape)
                .map_err(|m| fail(format!("'{w}' ({ty}) cannot take {s}: {m}")))?;
        }
        Ok(plan)
    }
}

impl Pass for Quantize {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        let plan = self.0.plan(model).map_err(|e| e.to_string())?;
        for (w, s) in plan.linears.iter().chain(&plan.rtn_only) {
            if let Some(p) = model.graph.param_mut(w) {
                *p = shrink_ir::ParamType::quantized(*s, p.shape.clone());
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.0.gptq.check("gptq")
    }

    fn working_set(&self, model: &Model) -> Result<u64, String> {
        let o = &self.0;
        let plan = o.plan(model).map_err(|e| e.to_string())?;
        let one_at_a_time = 2 * crate::largest_f32_bytes(model);
        let asymmetric = o.method == Method::Gptq && o.gptq.asymmetric;
        // Per site, as the hook allocates: GPTQ the Gram matrix, the Hessian, its factor and
        // the update's copy (f64), the weight, its target and their rounded forms (f32); AWQ
        // the site's rows and the candidate outputs of its largest linear.
        let site = |n: f64, rows: f64, tokens: f64| match o.method {
            Method::Awq => 4.0 * n * n + 4.0 * tokens * n + 8.0 * tokens * rows + 16.0 * rows * n,
            _ => (if asymmetric { 44.0 } else { 36.0 }) * n * n + 28.0 * rows * n,
        };
        let calibrated = match o.method {
            Method::Rtn => 0,
            _ => crate::calibration::working_set(
                model,
                &o.calibration,
                &|w| plan.linears.contains_key(w),
                asymmetric,
                &site,
            )?,
        };
        Ok(calibrated.max(one_at_a_time))
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        self.0.calibration.files()
    }

    fn effect(&self) -> Option<crate::Effect> {
        Some(crate::Effect::Quantizes)
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let o = &self.0;
        let plan = o.plan(model)?;
        let before = model.size();
        let started = Instant::now();
        let mut report = PassReport::default();
        let mut calib_tokens = 0usize;
        match o.method {
            Method::Rtn => {
                cx.progress
                    .start("quantize (rtn)", plan.linears.len() as u64);
                for (i, (name, scheme)) in plan.linears.iter().enumerate() {
                    rtn(model, name, *scheme)?;
                    cx.progress.advance(i as u64 + 1);
                }
                cx.progress.finish();
            }
            Method::Gptq | Method::Awq => {
                let seqs = o
                    .calibration
                    .sequences(cx.base_dir, cx.tokenizer, &mut cx.rng)
                    .map_err(fail)?;
                calib_tokens = seqs.len() * seqs.first().map_or(0, Vec::len);
                let mut hook = Hook {
                    method: o.method,
                    plan: &plan.linears,
                    gptq: &o.gptq,
                    awq: &o.awq,
                    stats: Stats::default(),
                };
                let what = format!(
                    "quantize ({}, {} × {} tokens)",
                    if o.method == Method::Gptq {
                        "gptq"
                    } else {
                        "awq"
                    },
                    seqs.len(),
                    o.calibration.seq_len
                );
                let progress = &mut *cx.progress;
                calibrate::run(model, &seqs, cx.device, &mut hook, &mut |done, total| {
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
                let stats = hook.stats;
                if o.method == Method::Awq {
                    // AWQ rescaled and clipped in float; now round every target.
                    for (name, scheme) in &plan.linears {
                        rtn(model, name, *scheme)?;
                    }
                    report
                        .stats
                        .insert("awq_sites_scaled".into(), stats.scaled.into());
                    report
                        .stats
                        .insert("awq_sites_unscaled".into(), stats.unscaled.into());
                    report.stats.insert(
                        "awq_mean_ratio".into(),
                        json_f64(stats.ratio_sum / stats.scaled.max(1) as f64),
                    );
                } else {
                    report
                        .stats
                        .insert("gptq_max_damp".into(), json_f64(stats.max_damp));
                }
                if stats.err_rtn > 0.0 {
                    // Summed output error of the quantized linears relative to round-to-nearest
                    // on the same inputs: below 1 is what calibration bought.
                    report.stats.insert(
                        "output_error_vs_rtn".into(),
                        json_f64(stats.err_method / stats.err_rtn),
                    );
                }
            }
        }
        for (name, scheme) in &plan.rtn_only {
            rtn(model, name, *scheme)?;
        }
        let after = model.size();
        report.changed = !plan.linears.is_empty() || !plan.rtn_only.is_empty();
        let mut by_scheme: BTreeMap<String, u64> = BTreeMap::new();
        for s in plan.linears.values().chain(plan.rtn_only.values()) {
            *by_scheme.entry(s.to_string()).or_default() += 1;
        }
        report.stats.insert(
            "params_quantized".into(),
            serde_json::to_value(&by_scheme).unwrap_or_default(),
        );
        report
            .stats
            .insert("bytes_before".into(), before.bytes.into());
        report
            .stats
            .insert("bytes_after".into(), after.bytes.into());
        if calib_tokens > 0 {
            report
                .stats
                .insert("calibration_tokens".into(), calib_tokens.into());
        }
        report.stats.insert(
            "seconds".into(),
            json_f64((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        Ok(report)
    }
}

fn rtn(model: &mut Model, name: &str, scheme: QuantScheme) -> Result<(), PassError> {
    let (v, rows, cols) = weights_of(model, name)?;
    let packed = scheme
        .quantize(&[rows, cols], &v)
        .map_err(|m| fail(format!("'{name}': {m}")))?;
    store(model, name, scheme, packed)
}

#[derive(Default)]
struct Stats {
    max_damp: f64,
    scaled: u64,
    unscaled: u64,
    ratio_sum: f64,
    err_method: f64,
    err_rtn: f64,
}

struct Hook<'a> {
    method: Method,
    plan: &'a BTreeMap<String, QuantScheme>,
    gptq: &'a GptqOptions,
    awq: &'a AwqOptions,
    stats: Stats,
}

impl CalibrationHook for Hook<'_> {
    fn wants(&self, weight: &str) -> bool {
        self.plan.contains_key(weight)
    }

    fn wants_reference(&self) -> bool {
        self.method == Method::Gptq && self.gptq.asymmetric
    }

    fn site(
        &mut self,
        model: &mut Model,
        value: ValueId,
        linears: &[SiteLinear],
        site: &dyn Site,
    ) -> shrink_runtime::Result<Option<Vec<f32>>> {
        let err = |e: PassError| shrink_runtime::RuntimeError::Input(e.to_string());
        let gram = site.gram();
        let tokens = site.tokens();
        let mm = |a: &[f32], b: &[f32], m: usize, k: usize, n: usize| site.matmul(a, b, m, k, n);
        match self.method {
            Method::Gptq | Method::Rtn => {
                let correction = match site.cross() {
                    Some(cross) if self.gptq.asymmetric => Some(
                        gptq::asymmetric_correction(
                            &gram,
                            &cross,
                            tokens,
                            site.features(),
                            self.gptq.damp,
                            &mm,
                        )
                        .map_err(|m| err(fail(m)))?,
                    ),
                    _ => None,
                };
                for l in linears {
                    let scheme = self.plan[&l.weight];
                    let (w, rows, cols) = weights_of(model, &l.weight).map_err(err)?;
                    // The target the quantized weight should match on the compressed inputs.
                    let target = match &correction {
                        Some(k) => {
                            let wk = mm(&w, k, rows, cols, cols);
                            w.iter().zip(wk).map(|(a, b)| a + b).collect()
                        }
                        None => w.clone(),
                    };
                    let q = gptq::gptq(&target, rows, cols, &gram, tokens, scheme, self.gptq, &mm)
                        .map_err(|m| err(fail(format!("'{}': {m}", l.weight))))?;
                    self.stats.max_damp = self.stats.max_damp.max(q.damp);
                    // Both errors against the target (asymmetric: up to the part of `WX̃` no
                    // weight on `X` can reach, the same for both).
                    let rtn_q = awq::fake_quantize(scheme, &w, rows, cols);
                    let d_rtn = awq::weight_change(&target, &rtn_q, None);
                    let d_q = awq::weight_change(&target, &q.dequant, None);
                    self.stats.err_rtn +=
                        crate::linalg::output_error(&d_rtn, rows, cols, &gram, &mm);
                    self.stats.err_method +=
                        crate::linalg::output_error(&d_q, rows, cols, &gram, &mm);
                    store(model, &l.weight, scheme, q.packed).map_err(err)?;
                }
                Ok(None)
            }
            Method::Awq => self.awq_site(model, value, linears, site, &gram, tokens),
        }
    }
}

impl Hook<'_> {
    fn awq_site(
        &mut self,
        model: &mut Model,
        value: ValueId,
        linears: &[SiteLinear],
        site: &dyn Site,
        gram: &[f32],
        tokens: usize,
    ) -> shrink_runtime::Result<Option<Vec<f32>>> {
        let err = |e: PassError| shrink_runtime::RuntimeError::Input(e.to_string());
        let mm = |a: &[f32], b: &[f32], m: usize, k: usize, n: usize| site.matmul(a, b, m, k, n);
        let cols = site.features();
        let mut ws = Vec::new();
        for l in linears {
            ws.push(weights_of(model, &l.weight).map_err(err)?);
        }
        // One scheme per site for the search: the first linear's (overrides may differ).
        let scheme = self.plan[&linears[0].weight];
        let fold = fold_target(model, value, linears);
        let scales = match &fold {
            Some(_) => {
                let abs_mean = site.abs_mean();
                let refs: Vec<(&[f32], usize)> = ws.iter().map(|(w, r, _)| (&w[..], *r)).collect();
                let found = awq::search_scales(
                    &refs,
                    cols,
                    gram,
                    tokens,
                    &abs_mean,
                    scheme,
                    self.awq.grid,
                    &mm,
                );
                self.stats.scaled += 1;
                self.stats.ratio_sum += found.ratio as f64;
                found.scales
            }
            None => {
                self.stats.unscaled += 1;
                vec![1.0; cols]
            }
        };
        // Gram matrix of the scaled inputs x/s.
        let gram_s: Vec<f32> = gram
            .iter()
            .enumerate()
            .map(|(i, g)| g / (scales[i / cols] * scales[i % cols]))
            .collect();
        for (l, (w, rows, _)) in linears.iter().zip(&ws) {
            let scheme = self.plan[&l.weight];
            let scaled = awq::scale_columns(w, &scales);
            let clipped = if self.awq.clip {
                awq::clip(
                    scheme,
                    &scaled,
                    *rows,
                    cols,
                    &gram_s,
                    self.awq.grid,
                    self.awq.max_shrink,
                )
            } else {
                scaled
            };
            // Error bookkeeping in the original input space.
            let q = awq::fake_quantize(scheme, &clipped, *rows, cols);
            let d_q = awq::weight_change(w, &q, Some(&scales));
            let rtn_q = awq::fake_quantize(scheme, w, *rows, cols);
            let d_rtn = awq::weight_change(w, &rtn_q, None);
            self.stats.err_rtn += crate::linalg::output_error(&d_rtn, *rows, cols, gram, &mm);
            self.stats.err_method += crate::linalg::output_error(&d_q, *rows, cols, gram, &mm);
            write_f32(model, &l.weight, clipped).map_err(err)?;
        }
        let Some(fold) = fold else { return Ok(None) };
        let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        fold.apply(model, &inv).map_err(err)?;
        Ok(Some(inv))
    }
}

/// Where `1/s` of an AWQ site can go so the model computes the same function.
enum Fold {
    /// A norm's weight (and bias).
    Norm {
        weight: String,
        bias: Option<String>,
    },
    /// The rows of a linear whose output is the value, or one factor of a product that is.
    Rows {
        weight: String,
        bias: Option<String>,
    },
}

impl Fold {
    fn apply(&self, model: &mut Model, inv: &[f32]) -> Result<(), PassError> {
        let (weight, bias) = match self {
            Fold::Norm { weight, bias } | Fold::Rows { weight, bias } => (weight, bias),
        };
        let t = model
            .weights
            .get(weight)
            .ok_or_else(|| fail(format!("'{weight}' has no data")))?;
        let cols = if matches!(self, Fold::Rows { .. }) {
            t.ty.shape[1]
        } else {
            1
        };
        let v: Vec<f32> = t
            .to_f32()
            .iter()
            .enumerate()
            .map(|(i, x)| x * inv[i / cols])
            .collect();
        write_f32(model, weight, v)?;
        if let Some(b) = bias {
            let t = model
                .weights
                .get(b)
                .ok_or_else(|| fail(format!("'{b}' has no data")))?;
            let v: Vec<f32> = t.to_f32().iter().zip(inv).map(|(x, s)| x * s).collect();
            write_f32(model, b, v)?;
        }
        Ok(())
    }
}

/// Writes float values back in the parameter's shape and float dtype (a quantized parameter
/// becomes f32).
fn write_f32(model: &mut Model, name: &str, v: Vec<f32>) -> Result<(), PassError> {
    let shape = model
        .graph
        .param(name)
        .map(|p| p.shape.clone())
        .ok_or_else(|| fail(format!("'{name}' is not declared")))?;
    crate::tensors::store_f32(model, name, shape, &v).map_err(fail)
}

/// The node that can absorb `1/s` for the site at `value`: only when the site's linears are
/// the value's only readers and the producer's parameter is not shared.
fn fold_target(model: &Model, value: ValueId, linears: &[SiteLinear]) -> Option<Fold> {
    let g = &model.graph;
    let only_site = g
        .users(value)
        .iter()
        .all(|u| linears.iter().any(|l| l.node == *u));
    if !only_site {
        return None;
    }
    let used_once = |name: &str| {
        g.node_ids()
            .iter()
            .filter(|id| g.node(**id).is_some_and(|n| n.op.params().contains(&name)))
            .count()
            == 1
    };
    let producer = g.node(g.producer(value)?)?;
    match &producer.op {
        // A grouped norm has one weight per group position, not per feature: not foldable.
        Op::Norm {
            weight,
            bias,
            group: None,
            ..
        } if used_once(weight) => Some(Fold::Norm {
            weight: weight.clone(),
            bias: bias.clone(),
        }),
        Op::Linear {
            weight,
            bias,
            lora: None,
        } if used_once(weight) => Some(Fold::Rows {
            weight: weight.clone(),
            bias: bias.clone(),
        }),
        Op::Mul => producer.inputs.iter().find_map(|v| {
            let n = g.node(g.producer(*v)?)?;
            match &n.op {
                Op::Linear {
                    weight,
                    bias,
                    lora: None,
                } if used_once(weight) && g.users(*v).len() == 1 => Some(Fold::Rows {
                    weight: weight.clone(),
                    bias: bias.clone(),
                }),
                _ => None,
            }
        }),
        _ => None,
    }
}
