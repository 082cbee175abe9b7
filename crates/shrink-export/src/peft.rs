//! The model's LoRA adapters as a PEFT adapter directory: `adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight` /
//! `lora_B.weight` (f32), which `PeftModel.from_pretrained` loads onto the base model and
//! `shrink_import::peft::apply` reads back.
//!
//! The IR keeps each adapter's scale, not `alpha`: the config says `lora_alpha = scale · r`
//! with `use_rslora: false`, the same update whatever the adapter was made with. Adapters of
//! another rank or scale than the most common go to `rank_pattern` / `alpha_pattern` under
//! their full module path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use serde_json::{json, Map, Value};
use shrink_arch::ArchId;
use shrink_ir::{lora, DType, Model};

use crate::atomic::Staged;
use crate::error::{ExportError, Result};
use crate::hf::{write_safetensors, Tensor};

/// Prefix PEFT gives every key of a causal-LM adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Model formats hold no adapters: fold them first or write them with [`write_adapter`].
pub(crate) fn refuse_adapters(model: &Model, path: &Path) -> Result<()> {
    match lora::adapters(model).first() {
        None => Ok(()),
        Some(a) => Err(ExportError::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "{} carries a LoRA adapter, which this format cannot hold: fold the adapters \
                 (lora-fold) or write them as a PEFT adapter",
                lora::module_of(&a.weight)
            ),
        }),
    }
}

/// A float as JSON: an integer when it is one (as PEFT writes `lora_alpha`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Writes the adapters of `model` as a PEFT adapter directory `dir`, atomically.
/// `base_model` goes to `base_model_name_or_path`. Returns the files written.
pub fn write_adapter(model: &Model, base_model: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let adapters = lora::adapters(model);
    if adapters.is_empty() {
        return Err(ExportError::Unsupported {
            path: dir.to_path_buf(),
            message: "the model carries no LoRA adapter to export".into(),
        });
    }
    let st_name = "adapter_model.safetensors";
    let terr = |tensor: &str, message: String| ExportError::Tensor {
        path: dir.join(st_name),
        tensor: tensor.to_string(),
        message,
    };
    // Rank, alpha and dropout of each module.
    let mut per_module: Vec<(String, usize, f64, f32)> = Vec::new();
    let mut tensors = Vec::new();
    for a in &adapters {
        let module = lora::module_of(&a.weight).to_string();
        for (name, part) in [(&a.lora.a, "lora_A"), (&a.lora.b, "lora_B")] {
            let data = model
                .weights
                .get(name)
                .ok_or_else(|| terr(name, "no data".into()))?;
            if data.ty.dtype != DType::F32 || data.ty.quant.is_some() {
                return Err(terr(name, format!("is {}, expected f32", data.ty)));
            }
            tensors.push((
                format!("{KEY_PREFIX}{module}.{part}.weight"),
                Tensor::new(data, Dtype::F32, data.ty.shape.clone()),
            ));
        }
        let r = model
            .graph
            .param(&a.lora.a)
            .map_or(0, |t| t.shape.first().copied().unwrap_or(0));
        per_module.push((module, r, a.lora.scale as f64 * r as f64, a.lora.dropout));
    }
    // The most common (rank, alpha) is the default; the others are patterns.
    let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (_, r, alpha, _) in &per_module {
        *counts.entry((*r, alpha.to_bits())).or_default() += 1;
    }
    let ((r0, alpha0), _) = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .map(|(k, n)| (*k, *n))
        .unwrap_or(((0, 0), 0));
    let alpha0 = f64::from_bits(alpha0);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (m, r, alpha, _) in &per_module {
        if *r != r0 {
            rank_pattern.insert(m.clone(), json!(r));
        }
        if alpha.to_bits() != alpha0.to_bits() {
            alpha_pattern.insert(m.clone(), number(*alpha));
        }
    }
    let dropout = per_module.iter().map(|p| p.3).fold(0.0f32, f32::max);
    let config = json!({
        "alpha_pattern": alpha_pattern,
        "base_model_name_or_path": base_model,
        "bias": "none",
        // PEFT's flag for base weights stored `[in, out]` (GPT-2's Conv1D).
        "fan_in_fan_out": ArchId::of_graph(&model.graph) == Ok(ArchId::Gpt2),
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": number(alpha0),
        "lora_bias": false,
        "lora_dropout": dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": r0,
        "rank_pattern": rank_pattern,
        "revision": null,
        "target_modules": target_modules(model, &per_module),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    let staged = Staged::dir(dir)?;
    let io = |what: String| {
        let dir = dir.to_path_buf();
        move |source| ExportError::Io {
            path: dir,
            what,
            source,
        }
    };
    let text = serde_json::to_string_pretty(&config).map_err(|e| ExportError::Field {
        path: dir.join("adapter_config.json"),
        field: "(config)".into(),
        message: e.to_string(),
    })?;
    std::fs::write(staged.path().join("adapter_config.json"), text + "\n")
        .map_err(io("writing adapter_config.json".into()))?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&staged.path().join(st_name), &tensors, &meta)
        .map_err(io(format!("writing {st_name}")))?;
    staged.commit()?;
    Ok(vec![dir.join("adapter_config.json"), dir.join(st_name)])
}

/// PEFT's `target_modules`: the last names of the adapted modules when every linear with such
/// a name is adapted (`["q_proj", "v_proj"]`), else every adapted module's full path (PEFT
/// matches a listed name against the end of the path, so a full path matches that module).
fn target_modules(model: &Model, per_module: &[(String, usize, f64, f32)]) -> Vec<String> {
    let last = |m: &str| m.rsplit('.').next().unwrap_or(m).to_string();
    let adapted: std::collections::BTreeSet<&str> =
        per_module.iter().map(|p| p.0.as_str()).collect();
    let names: std::collections::BTreeSet<String> = per_module.iter().map(|p| last(&p.0)).collect();
    let g = &model.graph;
    let all_covered = g
        .node_ids()
        .into_iter()
        .all(|id| match g.node(id).map(|n| &n.op) {
            Some(shrink_ir::Op::Linear { weight, .. }) => {
                let m = lora::module_of(weight);
                !names.contains(&last(m)) || adapted.contains(m)
            }
            _ => true,
        });
    if all_covered {
        names.into_iter().collect()
    } else {
        adapted.into_iter().map(str::to_string).collect()
    }
}
