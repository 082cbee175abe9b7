//! PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`) applied
//! onto a base model: each `base_model.model.<module>.lora_A.weight` / `lora_B.weight` pair
//! is attached to the linear whose weight is `<module>.weight`, scaled as PEFT scales it
//! (`lora_alpha / r`, or `/ √r` with `use_rslora`; `rank_pattern` and `alpha_pattern` by
//! module-name suffix).
//!
//! Config fields that would change what the adapter computes and that shrink does not
//! implement (DoRA, trained biases, `modules_to_save`, layer replication, …) are refused by
//! name; fields that only describe training or bookkeeping are accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use shrink_ir::{lora, DType, Model, ParamType, TensorData};

use crate::error::{ImportError, Result};

/// Fields read here; every other field must be absent or at its neutral value.
const UNDERSTOOD: &[&str] = &[
    "alpha_pattern",
    "base_model_name_or_path",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "lora_alpha",
    "lora_dropout",
    "peft_type",
    "peft_version",
    "r",
    "rank_pattern",
    "revision",
    "target_modules",
    "task_type",
    "use_rslora",
    // Training-time or loading-time settings that leave the adapter's output alone.
    "auto_mapping",
    "exclude_modules",
    "layers_pattern",
    "loftq_config",
    "megatron_core",
    "qalora_group_size",
    "ensure_weight_tying",
];

/// A value that enables nothing: null, false, "none", an empty list or map.
fn neutral(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s == "none",
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// The adapter settings of one directory.
struct AdapterConfig {
    path: PathBuf,
    r: usize,
    alpha: f64,
    rslora: bool,
    dropout: f32,
    rank_pattern: BTreeMap<String, usize>,
    alpha_pattern: BTreeMap<String, f64>,
}

fn config_err(path: &Path, field: &str, message: impl Into<String>) -> ImportError {
    ImportError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

/// Whether a PEFT pattern key names `module`: the module itself or a suffix after a dot.
fn pattern_matches(key: &str, module: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

impl AdapterConfig {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| ImportError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let err = |field: &str, m: String| config_err(path, field, m);
        match json.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(t) => return Err(err("peft_type", format!("'{t}' is not supported (LORA)"))),
            None => return Err(err("peft_type", "missing".into())),
        }
        for (k, v) in &json {
            if !UNDERSTOOD.contains(&k.as_str()) && !neutral(v) {
                return Err(err(
                    k,
                    format!("{v} is not supported (shrink applies plain LoRA on linears)"),
                ));
            }
        }
        let r = json
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| err("r", "missing or not a positive integer".into()))?
            as usize;
        shrink_arch::limits::dim("r", r, shrink_arch::limits::MAX_WIDTH)
            .map_err(|m| err("r", m))?;
        let alpha = json
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite())
            .ok_or_else(|| err("lora_alpha", "missing or not a finite number".into()))?;
        let rslora = json
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let dropout = json
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(err("lora_dropout", format!("{dropout} is not in [0, 1)")));
        }
        let map = |field: &str| -> Result<BTreeMap<String, f64>> {
            match json.get(field) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        if k.contains(['*', '(', '[', '|', '^', '$', '\\', '+', '?']) {
                            return Err(err(
                                field,
                                format!("key '{k}' is a regular expression; only module names and suffixes are supported"),
                            ));
                        }
                        v.as_f64()
                            .filter(|x| x.is_finite())
                            .map(|x| (k.clone(), x))
                            .ok_or_else(|| err(field, format!("'{k}': {v} is not a finite number")))
                    })
                    .collect(),
                Some(v) => Err(err(field, format!("expected a map, got {v}"))),
            }
        };
        let rank_pattern = map("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                if v.fract() == 0.0 && v >= 1.0 && v <= shrink_arch::limits::MAX_WIDTH as f64 {
                    Ok((k, v as usize))
                } else {
                    Err(err(
                        "rank_pattern",
                        format!("'{k}': {v} is not a rank (a positive integer)"),
                    ))
                }
            })
            .collect::<Result<_>>()?;
        Ok(AdapterConfig {
            path: path.to_path_buf(),
            r,
            alpha,
            rslora,
            dropout: dropout as f32,
            rank_pattern,
            alpha_pattern: map("alpha_pattern")?,
        })
    }

    /// Rank and scale PEFT gives `module` (the longest matching pattern key wins).
    fn for_module(&self, module: &str) -> (usize, f32) {
        let best = |m: &BTreeMap<String, f64>| {
            m.iter()
                .filter(|(k, _)| pattern_matches(k, module))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, v)| *v)
        };
        let rank_pattern: BTreeMap<String, f64> = self
            .rank_pattern
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        let r = best(&rank_pattern).map_or(self.r, |v| v as usize);
        let alpha = best(&self.alpha_pattern).unwrap_or(self.alpha);
        let scale = if self.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, scale as f32)
    }
}

fn to_f32(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let err = |message: String| ImportError::Tensor {
        path: path.to_path_buf(),
        tensor: name.into(),
        message,
    };
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        d => {
            return Err(err(format!(
                "dtype {d:?} is not supported (F32, F16, BF16)"
            )))
        }
    };
    let t = TensorData::from_bytes(
        ParamType::new(dtype, view.shape().to_vec()),
        view.data().to_vec(),
    )
    .map_err(err)?;
    shrink_arch::limits::finite(&t).map_err(err)?;
    Ok(t.to_f32())
}

/// Attaches the PEFT adapter in directory `dir` to `model` (which must be its base model).
/// Returns the number of adapted modules. Errors name the file and the module or field.
pub fn apply(model: &mut Model, dir: &Path) -> Result<usize> {
    let cfg = AdapterConfig::read(&dir.join("adapter_config.json"))?;
    let st_path = dir.join("adapter_model.safetensors");
    if !st_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(ImportError::Safetensors {
            path: dir.join("adapter_model.bin"),
            message: "pickled PyTorch adapters are not read; save with safetensors".into(),
        });
    }
    let bytes = std::fs::read(&st_path).map_err(|source| ImportError::Io {
        path: st_path.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ImportError::Safetensors {
        path: st_path.clone(),
        message: e.to_string(),
    })?;
    let terr = |tensor: &str, message: String| ImportError::Tensor {
        path: st_path.clone(),
        tensor: tensor.into(),
        message,
    };
    // module → (A, B), each (shape, values).
    type Part = Option<(Vec<usize>, Vec<f32>)>;
    let mut pairs: BTreeMap<String, (Part, Part)> = BTreeMap::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st.tensor(name).map_err(|e| terr(name, e.to_string()))?;
        let key = name.strip_prefix("base_model.model.").unwrap_or(name);
        let (module, part) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = key.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(terr(
                name,
                "not a LoRA A/B weight (only `<module>.lora_A.weight` and `lora_B.weight` are read)"
                    .into(),
            ));
        };
        let values = to_f32(&st_path, name, &view)?;
        let entry = pairs.entry(module.to_string()).or_default();
        let slot = if part == 0 {
            &mut entry.0
        } else {
            &mut entry.1
        };
        *slot = Some((view.shape().to_vec(), values));
    }
    if pairs.is_empty() {
        return Err(ImportError::Safetensors {
            path: st_path,
            message: "holds no LoRA weights".into(),
        });
    }
    let n = pairs.len();
    for (module, (a, b)) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(terr(&module, "has only one of lora_A and lora_B".into()));
        };
        let (r, scale) = cfg.for_module(&module);
        if a.0.first() != Some(&r) {
            return Err(terr(
                &module,
                format!(
                    "lora_A has shape {:?} but {} gives this module r = {r}",
                    a.0,
                    cfg.path.display()
                ),
            ));
        }
        let weight = format!("{module}.weight");
        if lora::linear_of(model, &weight).is_none() {
            return Err(terr(
                &module,
                format!("the base model has no linear with weight '{weight}'"),
            ));
        }
        lora::attach(model, &weight, a, b, scale, cfg.dropout).map_err(|m| terr(&module, m))?;
    }
    model.verify().map_err(|errors| ImportError::Verify {
        path: dir.to_path_buf(),
        errors,
    })?;
    Ok(n)
}
