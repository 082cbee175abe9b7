//! `lora-fold`: merges every LoRA adapter into its base weight, `W' = W + scale · B·A`, and
//! drops the adapter: a plain model with no extra latency. A float base takes the update in
//! f32 and is stored back in its dtype (exact for f32). A quantized base is dequantized,
//! merged and requantized in its scheme, the error requantizing adds reported per tensor
//! (`quantized: requantize`, the default); or requantized by GPTQ on calibration text
//! (`gptq`), which keeps much more of an update smaller than the scheme's rounding step; or
//! kept in f32 (`dequantize`: exact); or refused (`refuse`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shrink_ir::{lora, Model, TensorData};

use crate::calibration::CalibrationOptions;
use crate::quantize::gptq::GptqOptions;
use crate::quantize::{Method, Override, Quantize, QuantizeOptions, SchemeName};
use crate::{
    canonical_ron, json_f64, parse_options, Pass, PassContext, PassError, PassInfo, PassReport,
};

pub const INFO: PassInfo = PassInfo {
    name: "lora-fold",
    summary: "Merge every LoRA adapter into its base weight (W + scale·B·A).",
    build: |raw| Ok(Box::new(LoraFold(parse_options(raw)?))),
};

/// What to do with an adapter on a quantized weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizedBase {
    /// Dequantize, merge, requantize in the same scheme; report the added error.
    Requantize,
    /// Dequantize, merge, requantize in the same scheme by GPTQ on `calibration` text: the
    /// rounding of each column is compensated in the others, so an update smaller than the
    /// rounding step is not simply rounded away.
    Gptq,
    /// Dequantize and merge, keeping the result in f32 (exact; quantize again later).
    Dequantize,
    /// Fail, naming the module (keep the adapter separate instead).
    Refuse,
}

/// Options of `lora-fold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraFoldOptions {
    /// Calibration text for `quantized: gptq`.
    pub calibration: CalibrationOptions,
    /// GPTQ's options for `quantized: gptq`.
    pub gptq: GptqOptions,
    pub quantized: QuantizedBase,
}

impl Default for LoraFoldOptions {
    fn default() -> Self {
        LoraFoldOptions {
            calibration: CalibrationOptions::default(),
            gptq: GptqOptions::default(),
            quantized: QuantizedBase::Requantize,
        }
    }
}

pub struct LoraFold(pub LoraFoldOptions);

/// `B[out, r] · A[r, in]` as row-major `[out, in]`, accumulated in f64.
pub fn lora_delta(a: &[f32], b: &[f32], out: usize, r: usize, inp: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; out * inp];
    let mut row = vec![0.0f64; inp];
    for o in 0..out {
        row.iter_mut().for_each(|x| *x = 0.0);
        for k in 0..r {
            let bk = b[o * r + k] as f64;
            if bk == 0.0 {
                continue;
            }
            for (x, &av) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                *x += bk * av as f64;
            }
        }
        for (dst, &x) in d[o * inp..(o + 1) * inp].iter_mut().zip(&row) {
            *dst = x as f32;
        }
    }
    d
}

impl Pass for LoraFold {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn effect(&self) -> Option<crate::Effect> {
        Some(crate::Effect::FoldsAdapters)
    }

    fn check(&self) -> Result<(), String> {
        let no_text = self
            .0
            .calibration
            .data
            .as_ref()
            .is_none_or(crate::calibration::TextFiles::is_empty);
        if self.0.quantized == QuantizedBase::Gptq && no_text {
            return Err(
                "quantized: gptq needs calibration.data, a text file to calibrate on".into(),
            );
        }
        self.0.gptq.check("gptq")
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        match self.0.quantized {
            QuantizedBase::Gptq => self.0.calibration.files(),
            _ => Vec::new(),
        }
    }

    fn rewrites(&self, model: &Model) -> Vec<String> {
        lora::adapters(model)
            .into_iter()
            .map(|a| a.weight)
            .collect()
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        for a in lora::adapters(model) {
            let p = model.graph.param_mut(&a.weight);
            match (p, self.0.quantized) {
                (Some(p), QuantizedBase::Dequantize) if p.quant.is_some() => {
                    *p = shrink_ir::ParamType::new(shrink_ir::DType::F32, p.shape.clone());
                }
                (Some(p), QuantizedBase::Refuse) if p.quant.is_some() => {
                    return Err(format!(
                        "{}: the base weight is quantized and `quantized: refuse` is set",
                        lora::module_of(&a.weight)
                    ));
                }
                _ => {}
            }
            lora::detach(model, a.node);
        }
        Ok(())
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let fail = |message: String| PassError::Failed {
            pass: INFO.name,
            message,
        };
        let adapters = lora::adapters(model);
        if adapters.is_empty() {
            return Err(fail(
                "the model carries no LoRA adapter to fold (add a `lora` pass, or apply an adapter with --adapter)".into(),
            ));
        }
        if self.0.quantized == QuantizedBase::Refuse {
            if let Some(a) = adapters.iter().find(|a| {
                model
                    .graph
                    .param(&a.weight)
                    .is_some_and(|t| t.quant.is_some())
            }) {
                return Err(fail(format!(
                    "{}: the base weight is quantized and the pipeline says `quantized: refuse`; \
                     keep the adapter separate or fold before quantizing",
                    lora::module_of(&a.weight)
                )));
            }
        }
        cx.progress.start("folding adapters", adapters.len() as u64);
        let mut requantized = BTreeMap::new();
        // `quantized: gptq`: the merged weights wait in f32 for GPTQ, by scheme.
        let mut for_gptq: BTreeMap<String, shrink_ir::QuantScheme> = BTreeMap::new();
        for (k, ad) in adapters.iter().enumerate() {
            let module = lora::module_of(&ad.weight).to_string();
            let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), PassError> {
                let t = model
                    .weights
                    .get(name)
                    .ok_or_else(|| fail(format!("{module}: '{name}' has no data")))?;
                Ok((t.ty.shape.clone(), t.to_f32()))
            };
            let (ws, mut w) = get(&ad.weight)?;
            let (sa, a) = get(&ad.lora.a)?;
            let (_, b) = get(&ad.lora.b)?;
            let (out, inp, r) = (ws[0], ws[1], sa[0]);
            let delta = lora_delta(&a, &b, out, r, inp);
            for (x, d) in w.iter_mut().zip(&delta) {
                *x += ad.lora.scale * d;
            }
            let ty = model
                .graph
                .param(&ad.weight)
                .cloned()
                .ok_or_else(|| fail(format!("{module}: weight not declared")))?;
            let data = match ty.quant {
                None => TensorData::from_f32(ty.dtype, ws.clone(), &w),
                Some(q)
                    if matches!(
                        self.0.quantized,
                        QuantizedBase::Dequantize | QuantizedBase::Gptq
                    ) =>
                {
                    if self.0.quantized == QuantizedBase::Gptq {
                        for_gptq.insert(ad.weight.clone(), q);
                    }
                    model.graph.declare_param(
                        ad.weight.clone(),
                        shrink_ir::ParamType::new(shrink_ir::DType::F32, ws.clone()),
                    );
                    TensorData::from_f32(shrink_ir::DType::F32, ws.clone(), &w)
                }
                Some(q) => {
                    let packed = q
                        .quantize(&ws, &w)
                        .map_err(|e| fail(format!("{module}: {e}")))?;
                    let back = q.dequantize(&packed, &ws);
                    // The error requantizing adds: against the merged float weight, and the
                    // size of the update it has to carry.
                    let (mut se, mut max, mut sd) = (0.0f64, 0.0f64, 0.0f64);
                    for ((x, y), d) in w.iter().zip(&back).zip(&delta) {
                        let e = (*x - *y) as f64;
                        se += e * e;
                        max = max.max(e.abs());
                        sd += (ad.lora.scale * d) as f64 * (ad.lora.scale * d) as f64;
                    }
                    let n = w.len().max(1) as f64;
                    requantized.insert(
                        ad.weight.clone(),
                        json!({
                            "scheme": q.to_string(),
                            "rms_error": json_f64((se / n).sqrt()),
                            "max_abs_error": json_f64(max),
                            "update_rms": json_f64((sd / n).sqrt()),
                        }),
                    );
                    TensorData::quantized(q, ws.clone(), packed)
                }
            }
            .map_err(|e| fail(format!("{module}: {e}")))?;
            model.weights.insert(ad.weight.clone(), data);
            // A merged update fills pruned entries: the weight is no longer sparse.
            model.weights.remove_mask(&ad.weight);
            lora::detach(model, ad.node);
            cx.progress.advance(k as u64 + 1);
        }
        cx.progress.finish();
        let mut report = PassReport {
            changed: true,
            ..Default::default()
        };
        if let Some(&first) = for_gptq.values().next() {
            let gptq = Quantize(QuantizeOptions {
                calibration: self.0.calibration.clone(),
                gptq: self.0.gptq.clone(),
                include: for_gptq.keys().cloned().collect(),
                method: Method::Gptq,
                overrides: for_gptq
                    .iter()
                    .filter(|(_, &q)| q != first)
                    .map(|(n, &q)| Override {
                        pattern: n.clone(),
                        scheme: SchemeName(q),
                    })
                    .collect(),
                scheme: SchemeName(first),
                ..Default::default()
            })
            .run(model, cx)
            .map_err(|e| fail(format!("requantizing by GPTQ: {e}")))?;
            report
                .stats
                .insert("requantized_by_gptq".into(), json!(gptq.stats));
        }
        report.stats.insert("folded".into(), adapters.len().into());
        if !requantized.is_empty() {
            report
                .stats
                .insert("requantized".into(), json!(requantized));
        }
        Ok(report)
    }
}
