//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and `tokenizer.json`.
//!
//! LLaMA-family configs may give `intermediate_size`, `num_attention_heads` and
//! `num_key_value_heads` as lists, one entry per layer (shrink writes them so for structurally
//! pruned models, with an explicit `head_dim`); stock transformers cannot load those.
//!
//! Also shrink's own format for quantized models: the same directory, each quantized parameter
//! stored as a 1-D `U8` tensor of its packed bytes (`docs/quantization.md`), listed in the
//! safetensors `__metadata__` under `shrink.quant` as a JSON object
//! `{name: {"scheme": "q4_0", "shape": [out, in]}}`. Such tensors are mapped as they are (never
//! transposed: the shape is the IR's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use shrink_ir::{DType, Graph, Model, ParamType, QuantScheme, TensorData, WeightStore};

use crate::error::{ImportError, Result};
use shrink_arch::ArchConfig;
use shrink_formats::safetensors::{dtype_of, transpose_bytes, QUANT_METADATA_KEY, QUANT_METHOD};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ImportError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_config(dir: &Path) -> Result<ArchConfig> {
    read_config_file(&dir.join("config.json"))
}

fn read_config_file(path: &Path) -> Result<ArchConfig> {
    parse_config(path, read_json(path)?)
}

/// The architecture of a parsed `config.json` (`path` names it in errors).
fn parse_config(path: &Path, json: Value) -> Result<ArchConfig> {
    let err = |field: &str, message: String| ImportError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        message,
    };
    let Value::Object(json) = json else {
        return Err(ImportError::Json {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        });
    };
    // Quantization is the file format's (shrink's own), not the architecture's.
    match json.get("quantization_config") {
        None | Some(Value::Null) => {}
        Some(q) => match q.get("quant_method").and_then(Value::as_str) {
            Some(QUANT_METHOD) => {}
            Some(m) => {
                return Err(err(
                    "quantization_config.quant_method",
                    format!("'{m}' is not supported (only shrink's own format, '{QUANT_METHOD}')"),
                ))
            }
            None => {
                return Err(err(
                    "quantization_config.quant_method",
                    "missing or not a string".into(),
                ))
            }
        },
    }
    ArchConfig::from_hf(&json).map_err(|e| ImportError::config(path, e))
}

/// name → (dtype, shape, absolute start, length) of a shard's tensors.
type TensorIndex = BTreeMap<String, (String, Vec<usize>, usize, usize)>;

/// One safetensors file, mapped, with its header parsed.
struct Shard {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    tensors: TensorIndex,
    /// Quantized tensors (shrink's format): name → (scheme, IR shape), checked against the bytes.
    quant: BTreeMap<String, (QuantScheme, Vec<usize>)>,
}

/// Reads and checks the [`QUANT_METADATA_KEY`] entry of a shard's `__metadata__`: every listed
/// tensor is a 1-D `U8` tensor of the file whose length is what its scheme packs its shape into.
fn quant_entries(
    path: &Path,
    text: Option<&String>,
    tensors: &TensorIndex,
) -> Result<BTreeMap<String, (QuantScheme, Vec<usize>)>> {
    let mut out = BTreeMap::new();
    let Some(text) = text else {
        return Ok(out);
    };
    let bad = |message: String| ImportError::Safetensors {
        path: path.to_path_buf(),
        message: format!("__metadata__ '{QUANT_METADATA_KEY}': {message}"),
    };
    let json: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Value::Object(entries) = json else {
        return Err(bad(
            "expected a JSON object of tensor name to {scheme, shape}".into(),
        ));
    };
    for (name, entry) in entries {
        let terr = |message: String| ImportError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            message: format!("__metadata__ '{QUANT_METADATA_KEY}': {message}"),
        };
        let scheme: QuantScheme = entry
            .get("scheme")
            .and_then(Value::as_str)
            .ok_or_else(|| terr(format!("'scheme' is missing or not a string in {entry}")))?
            .parse()
            .map_err(terr)?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| {
                terr(format!(
                    "'shape' is missing or not a list of sizes in {entry}"
                ))
            })?;
        let want = scheme
            .packed_size(&shape)
            .map_err(|m| terr(format!("shape {shape:?}: {m}")))?;
        let (dtype, file_shape, _, len) = tensors
            .get(&name)
            .ok_or_else(|| terr("is listed but the file has no such tensor".into()))?;
        if dtype != "U8" || file_shape.len() != 1 {
            return Err(terr(format!(
                "a quantized tensor is stored as 1-D U8 bytes, this one is {dtype} {file_shape:?}"
            )));
        }
        if *len != want {
            return Err(terr(format!(
                "holds {len} bytes, but {scheme} of shape {shape:?} packs into {want}"
            )));
        }
        out.insert(name, (scheme, shape));
    }
    Ok(out)
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let io = |source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; shrink never writes to its inputs.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let bad = |message: String| ImportError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let start = data.as_ptr() as usize - base;
            tensors.insert(
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    start,
                    data.len(),
                ),
            );
        }
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let quant = quant_entries(
            path,
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get(QUANT_METADATA_KEY)),
            &tensors,
        )?;
        Ok(Shard {
            path: path.to_path_buf(),
            map: Arc::new(map),
            tensors,
            quant,
        })
    }
}

fn open_shards(dir: &Path) -> Result<Vec<Shard>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![Shard::open(&single)?]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return Err(ImportError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json in the directory",
            ),
        });
    }
    let index = read_json(&index_path)?;
    let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
        return Err(ImportError::Config {
            path: index_path,
            field: "weight_map".into(),
            message: "missing or not an object".into(),
        });
    };
    let mut files: Vec<String> = Vec::new();
    for (tensor, f) in map {
        let Some(f) = f.as_str() else {
            return Err(ImportError::Config {
                path: index_path.clone(),
                field: format!("weight_map.{tensor}"),
                message: "expected a file name".into(),
            });
        };
        if f.contains('/') || f.contains('\\') || f.starts_with("..") {
            return Err(ImportError::Config {
                path: index_path.clone(),
                field: format!("weight_map.{tensor}"),
                message: format!("'{f}' is not a file name in the model directory"),
            });
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    files.iter().map(|f| Shard::open(&dir.join(f))).collect()
}

/// Where a parameter's rows lie in a fused checkpoint tensor: its name, the parameter's first
/// row, and the tensor's rows in all.
struct RowsOf {
    tensor: String,
    first: usize,
    rows: usize,
}

/// The fused checkpoint tensor each split parameter comes from (Phi-3's `qkv_proj`), from the
/// parts' declared shapes.
fn fused_rows(graph: &Graph, fused: &[shrink_arch::FusedTensor]) -> BTreeMap<String, RowsOf> {
    let mut of = BTreeMap::new();
    for f in fused {
        let (parts, total) = f.layout(|n| graph.param(n).map_or(0, |p| p.shape[0]));
        for (part, first) in parts {
            of.insert(
                part.to_string(),
                RowsOf {
                    tensor: f.name.clone(),
                    first,
                    rows: total,
                },
            );
        }
    }
    of
}

/// Fills the weight store for the graph's declared parameters from the shards, checking each
/// shape; weights the architecture stores transposed (GPT-2's Conv1D) become `[out, in]`, and
/// those it stores fused (Phi-3's `qkv_proj`) are their rows of the fused tensor, mapped in place.
fn load_weights(
    graph: &mut Graph,
    shards: &[Shard],
    transposed: &dyn Fn(&str) -> bool,
    fused: &[shrink_arch::FusedTensor],
    offset: &dyn Fn(&str) -> f32,
    check_finite: bool,
) -> Result<WeightStore> {
    let mut store = WeightStore::new();
    let declared: Vec<(String, ParamType)> = graph
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let fused = fused_rows(graph, fused);
    for (name, want) in declared {
        // A fused tensor the checkpoint lacks leaves its parts to their own names (shrink's
        // quantized format writes quantized parts unfused).
        let rows_of = fused
            .get(&name)
            .filter(|r| shards.iter().any(|s| s.tensors.contains_key(&r.tensor)));
        let stored = rows_of.map_or(&name, |r| &r.tensor);
        let Some((shard, (st_dtype, shape, start, len))) = shards
            .iter()
            .find_map(|s| s.tensors.get(stored).map(|t| (s, t)))
        else {
            let path = shards.first().map(|s| s.path.clone()).unwrap_or_default();
            return Err(ImportError::Tensor {
                path,
                tensor: stored.clone(),
                message: "missing from the checkpoint".into(),
            });
        };
        let terr = |message: String| ImportError::Tensor {
            path: shard.path.clone(),
            tensor: stored.clone(),
            message,
        };
        if let Some(r) = rows_of {
            if shard.quant.contains_key(stored) {
                return Err(terr(
                    "a fused tensor in shrink's quantized format is not supported".into(),
                ));
            }
            let dtype = dtype_of(st_dtype).ok_or_else(|| {
                terr(format!(
                    "dtype {st_dtype} is not supported (F32, F16, BF16)"
                ))
            })?;
            let cols = want.shape[1];
            if *shape != [r.rows, cols] {
                return Err(terr(format!(
                    "shape {shape:?} does not match the config, which implies {:?}",
                    [r.rows, cols]
                )));
            }
            let row_bytes = cols * dtype.size();
            let ty = ParamType::new(dtype, want.shape.clone());
            let data = TensorData::mapped(
                ty.clone(),
                shard.map.clone(),
                start + r.first * row_bytes,
                want.shape[0] * row_bytes,
            )
            .map_err(terr)?;
            if check_finite {
                shrink_arch::limits::finite(&data).map_err(terr)?;
            }
            if let Some(p) = graph.param_mut(&name) {
                *p = ty;
            }
            store.insert(name, data);
            continue;
        }
        if let Some((scheme, qshape)) = shard.quant.get(&name) {
            if *qshape != want.shape {
                return Err(terr(format!(
                    "quantized shape {qshape:?} does not match the config, which implies {:?}",
                    want.shape
                )));
            }
            let ty = ParamType::quantized(*scheme, want.shape.clone());
            let data =
                TensorData::mapped(ty.clone(), shard.map.clone(), *start, *len).map_err(terr)?;
            if check_finite {
                shrink_arch::limits::finite(&data).map_err(terr)?;
            }
            if let Some(p) = graph.param_mut(&name) {
                *p = ty;
            }
            store.insert(name, data);
            continue;
        }
        let dtype = dtype_of(st_dtype).ok_or_else(|| {
            terr(format!(
                "dtype {st_dtype} is not supported (F32, F16, BF16; quantized tensors need \
                 their entry in __metadata__ '{QUANT_METADATA_KEY}')"
            ))
        })?;
        let transposed = transposed(&name);
        let file_shape: Vec<usize> = if transposed {
            want.shape.iter().rev().copied().collect()
        } else {
            want.shape.clone()
        };
        if *shape != file_shape {
            return Err(terr(format!(
                "shape {shape:?} does not match the config, which implies {file_shape:?}"
            )));
        }
        let ty = ParamType::new(dtype, want.shape.clone());
        let data = if transposed {
            let bytes = &shard.map[*start..*start + *len];
            TensorData::from_bytes(
                ty.clone(),
                transpose_bytes(bytes, shape[0], shape[1], dtype.size()),
            )
        } else {
            TensorData::mapped(ty.clone(), shard.map.clone(), *start, *len)
        }
        .map_err(terr)?;
        if check_finite {
            shrink_arch::limits::finite(&data).map_err(terr)?;
        }
        // Gemma's norms: the IR holds `1 + w` in f32, as the reference computes it.
        let (ty, data) = match offset(&name) {
            0.0 => (ty, data),
            off => {
                let v: Vec<f32> = data.to_f32().iter().map(|x| x + off).collect();
                let data =
                    TensorData::from_f32(DType::F32, want.shape.clone(), &v).map_err(terr)?;
                (data.ty.clone(), data)
            }
        };
        if let Some(p) = graph.param_mut(&name) {
            *p = ty;
        }
        store.insert(name, data);
    }
    Ok(store)
}

/// Loads a Hugging Face model directory into a model (weights memory-mapped where the layout
/// allows).
pub fn load_model(dir: &Path, opts: &crate::LoadOptions) -> Result<Model> {
    let arch = read_config(dir)?;
    let shards = open_shards(dir)?;
    // Every layer has several tensors in the checkpoint: a larger count is not believed.
    let (layers, field) = arch.layers();
    let held: usize = shards.iter().map(|s| s.tensors.len()).sum();
    if layers > held {
        return Err(ImportError::Config {
            path: dir.join("config.json"),
            field: field.into(),
            message: format!("{layers} layers, but the checkpoint holds {held} tensors"),
        });
    }
    let has = |n: &str| shards.iter().any(|s| s.tensors.contains_key(n));
    let mut arch = arch;
    arch.fit_checkpoint(&has, &|prefix| shares_data(&shards, prefix));
    let mut graph = arch.build();
    let transposed = |name: &str| arch.stored_transposed(name);
    let fused = arch.fused_tensors();
    let offset = |name: &str| arch.stored_offset(name);
    let weights = load_weights(
        &mut graph,
        &shards,
        &transposed,
        &fused,
        &offset,
        opts.check_finite,
    )?;
    Ok(Model { graph, weights })
}

/// A model built from a `config.json` alone, its weights drawn at random as transformers
/// initialises a new model: matrices from N(0, `initializer_range`, default 0.02), norm
/// weights 1, biases 0; seeded, so the same seed gives the same model. The weights are stored
/// in the config's `torch_dtype` (`dtype` in transformers 5; f32 when absent or `auto`), as a
/// checkpoint of that config would be. Names are those of a saved checkpoint (GPT-2 under
/// `transformer.`), with tied embeddings unless the config unties them.
pub fn load_config_random(path: &Path, seed: u64, shapes_only: bool) -> Result<Model> {
    let json = read_json(path)?;
    let std = json
        .get("initializer_range")
        .and_then(Value::as_f64)
        .unwrap_or(0.02) as f32;
    let bad = |field: &str, message: String| ImportError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        message,
    };
    let dtype_field = if json.get("dtype").is_some() {
        "dtype"
    } else {
        "torch_dtype"
    };
    let dtype = match json.get(dtype_field) {
        None | Some(Value::Null) => DType::F32,
        Some(Value::String(s)) if s == "auto" => DType::F32,
        Some(Value::String(s)) => match DType::from_torch_name(s).filter(|d| d.is_float()) {
            Some(d) => d,
            None => {
                return Err(bad(
                    dtype_field,
                    format!("'{s}' is not supported (float32, bfloat16, float16)"),
                ))
            }
        },
        Some(v) => return Err(bad(dtype_field, format!("expected a string, got {v}"))),
    };
    let arch = parse_config(path, json)?;
    // Nothing in a file bounds a random model: its weights must fit in memory.
    let params = arch.param_count().map_err(|m| bad("config", m))?;
    let bytes = params.saturating_mul(dtype.size() as u64);
    let mut arch = arch;
    arch.use_saved_names();
    let mut graph = arch.build();
    // Every parameter in the config's dtype, as its checkpoint would store it.
    let names: Vec<String> = graph.params().keys().cloned().collect();
    for name in names {
        if let Some(p) = graph.param_mut(&name) {
            *p = shrink_ir::ParamType::new(dtype, p.shape.clone());
        }
    }
    if shapes_only {
        return Ok(Model {
            graph,
            weights: WeightStore::new(),
        });
    }
    if let Some(avail) = shrink_arch::limits::available_memory() {
        if bytes > avail {
            return Err(bad(
                "config",
                format!(
                    "a random model of {params} parameters needs {:.1} GB of {} weights, \
                     more than the {:.1} GB of memory available",
                    bytes as f64 / 1e9,
                    dtype.name(),
                    avail as f64 / 1e9
                ),
            ));
        }
    }
    let mut weights = WeightStore::new();
    let mut rng = Normal::new(seed);
    for (name, ty) in graph.params() {
        let n = ty.numel();
        let values: Vec<f32> = match ty.shape.len() {
            2 => (0..n).map(|_| rng.next() * std).collect(),
            _ if name.ends_with(".bias") => vec![0.0; n],
            _ => vec![1.0; n],
        };
        let data = TensorData::from_f32(dtype, ty.shape.clone(), &values).map_err(|message| {
            ImportError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                message,
            }
        })?;
        weights.insert(name.clone(), data);
    }
    Ok(Model { graph, weights })
}

/// Standard normal draws (Box-Muller over splitmix64): small, seeded, no dependency.
struct Normal {
    state: u64,
    spare: Option<f32>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Normal {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // In (0, 1]: the logarithm below never sees 0.
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }
}

/// A GPT-2 checkpoint with an `lm_head.weight` equal to `wte.weight` is tied.
fn shares_data(shards: &[Shard], prefix: &str) -> bool {
    let get = |n: &str| {
        shards.iter().find_map(|s| {
            s.tensors
                .get(n)
                .map(|(_, _, start, len)| &s.map[*start..*start + *len])
        })
    };
    match (get("lm_head.weight"), get(&format!("{prefix}wte.weight"))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}
