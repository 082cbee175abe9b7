//! GGUF files into the IR, the config read by `shrink-arch` (`ArchConfig::from_gguf`: the
//! LLaMA family's `llama.*`/`deci.*`/`qwen*.*`/`phi3.*`, Gemma's `gemma2.*`/`gemma3.*` metadata),
//! tensor names mapped to Hugging Face names, Q8_0/Q4_0/Q4_1 matrices kept quantized (their
//! packed bytes are those of shrink's `q8_0`/`q4_0`/`q4_1` schemes), every other tensor
//! dequantized to f32 (F16/BF16 kept), and the Q/K rows that GGUF conversion permutes for
//! llama.cpp's interleaved RoPE put back in the "rotate half" order the IR uses (for a quantized
//! tensor, whole packed rows). Every dequantized value is checked to be finite.
//!
//! Files of llama.cpp's `deci` architecture (DeciLM/Nemotron-NAS; what shrink writes for layers
//! of different sizes) are read the same way from `deci.*`, into a `llama` graph: their
//! `feed_forward_length`, `attention.head_count` and `attention.head_count_kv` may be scalars or
//! per-layer arrays, as llama.cpp's `get_key_or_arr` reads them. Files of `qwen2` are read from
//! `qwen2.*` into a `qwen2` graph, their Q/K rows as they are (llama.cpp rotates them NeoX-style).

use std::collections::BTreeMap;
use std::path::Path;

use shrink_ir::{DType, Model, ParamType, QuantScheme, TensorData, WeightStore};

use crate::error::{ImportError, Result};
use shrink_arch::{unpermute_rows, ArchConfig};
use shrink_formats::gguf::{GgmlType, GgufFile, OptionalKey, TensorInfo};

/// The config of a GGUF file, by its architecture's module.
fn config(file: &GgufFile) -> Result<ArchConfig> {
    ArchConfig::from_gguf(file).map_err(|e| ImportError::config(&file.path, e))
}

/// The scheme a GGUF tensor of this type keeps when it is a matrix: the ggml block types whose
/// layout is a shrink scheme's (Q8_0, Q4_0, Q4_1). Others are dequantized on load.
pub fn kept_scheme(t: GgmlType) -> Option<QuantScheme> {
    match t {
        GgmlType::Q8_0 => Some(QuantScheme::Q8_0),
        GgmlType::Q4_0 => Some(QuantScheme::Q4_0),
        GgmlType::Q4_1 => Some(QuantScheme::Q4_1),
        _ => None,
    }
}

/// Loads a GGUF file (its tokenizer is read separately). Matrices of type Q8_0, Q4_0 and Q4_1
/// stay quantized (memory-mapped, or an owned copy for the Q/K weights whose rows are put back
/// in order); other types are dequantized to f32 (F16 and BF16 are kept).
pub fn load_model(file: &GgufFile, opts: &crate::LoadOptions) -> Result<Model> {
    let cfg = config(file)?;
    let mut graph = cfg.build();
    let mut store = WeightStore::new();
    let names: Vec<(String, ParamType)> = graph
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (fused, head_dim) = (fused_rows(file, &cfg, &graph), cfg.head_dim());
    for (hf, want) in names {
        let gname = cfg.gguf_name(&hf).unwrap_or_else(|| hf.clone());
        if let Some((info, first)) = fused.get(&hf) {
            let terr = |message: String| ImportError::Tensor {
                path: file.path.clone(),
                tensor: info.name.clone(),
                message,
            };
            let data = rows_of(file, info, *first, &want.shape).map_err(terr)?;
            if opts.check_finite {
                shrink_arch::limits::finite(&data).map_err(terr)?;
            }
            if let Some(p) = graph.param_mut(&hf) {
                *p = data.ty.clone();
            }
            store.insert(hf, data);
            continue;
        }
        let terr = |message: String| ImportError::Tensor {
            path: file.path.clone(),
            tensor: gname.clone(),
            message,
        };
        let info = file
            .tensor(&gname)
            .ok_or_else(|| terr("missing from the file".into()))?;
        // GGUF lists dims fastest first: [in, out] for a weight of shape [out, in].
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if shape != want.shape {
            return Err(terr(format!(
                "shape {shape:?} does not match the metadata, which implies {:?}",
                want.shape
            )));
        }
        // Elements per permuted row: a weight row, or one element of a bias.
        let cols = match want.shape.as_slice() {
            [_, c] => *c,
            _ => 1,
        };
        let permuted = cfg.gguf_permuted_heads(&hf);
        let data = match (kept_scheme(info.ggml_type), want.shape.as_slice()) {
            (Some(scheme), [_, cols]) => {
                let ty = ParamType::quantized(scheme, want.shape.clone());
                let range = file
                    .tensor_range(info)
                    .ok_or_else(|| terr("its data lies outside the file".into()))?;
                let data = match permuted {
                    // Whole packed rows move: a row's blocks never mix with another row's.
                    Some(h) => TensorData::from_bytes(
                        ty,
                        unpermute_rows(
                            file.tensor_data(info),
                            h,
                            head_dim,
                            scheme.row_bytes(*cols),
                        ),
                    ),
                    None => TensorData::mapped(ty, file.map().clone(), range.start, range.len()),
                }
                .map_err(terr)?;
                Ok(data)
            }
            _ => match info.ggml_type {
                GgmlType::F16 | GgmlType::BF16 => {
                    let dtype = if info.ggml_type == GgmlType::F16 {
                        DType::F16
                    } else {
                        DType::BF16
                    };
                    let raw: Vec<[u8; 2]> = file
                        .tensor_data(info)
                        .chunks_exact(2)
                        .map(|c| [c[0], c[1]])
                        .collect();
                    let raw = match permuted {
                        Some(h) => unpermute_rows(&raw, h, head_dim, cols),
                        None => raw,
                    };
                    TensorData::from_bytes(ParamType::new(dtype, want.shape.clone()), raw.concat())
                }
                _ => {
                    let mut v = file.dequantize(info)?;
                    if let Some(h) = permuted {
                        v = unpermute_rows(&v, h, head_dim, cols);
                    }
                    TensorData::from_f32(DType::F32, want.shape.clone(), &v)
                }
            },
        }
        .map_err(terr)?;
        if opts.check_finite {
            shrink_arch::limits::finite(&data).map_err(terr)?;
        }
        if let Some(p) = graph.param_mut(&hf) {
            *p = data.ty.clone();
        }
        store.insert(hf, data);
    }
    graph.meta.insert("source_format".into(), "gguf".into());
    if let Some(name) = file.get_str("general.name").optional()? {
        graph.meta.insert("name".into(), name.to_string());
    }
    Ok(Model {
        graph,
        weights: store,
    })
}

/// Opens a GGUF file.
/// For each parameter stored as rows of a fused tensor the file holds (llama.cpp's phi3
/// `attn_qkv`, `ffn_up`), that tensor and the parameter's first row. A fused name the file lacks,
/// or whose rows are not the parts' together, leaves its parts to their own names.
fn fused_rows<'f>(
    file: &'f GgufFile,
    cfg: &ArchConfig,
    graph: &shrink_ir::Graph,
) -> BTreeMap<String, (&'f TensorInfo, usize)> {
    let mut of = BTreeMap::new();
    for f in cfg.gguf_fused_tensors() {
        let Some(info) = file.tensor(&f.name) else {
            continue;
        };
        let (parts, total) = f.layout(|p| graph.param(p).map_or(0, |t| t.shape[0]));
        if info.dims.len() != 2 || info.dims[1] as usize != total {
            continue;
        }
        for (p, first) in parts {
            of.insert(p.to_string(), (info, first));
        }
    }
    of
}

/// Rows `first..first + shape[0]` of the 2-D tensor `info`, as [`load_model`] keeps its type:
/// ggml's Q8_0/Q4_0/Q4_1 mapped in place (whole packed rows), F16/BF16 copied, the rest
/// dequantized (those rows alone: ggml blocks never straddle rows).
fn rows_of(
    file: &GgufFile,
    info: &TensorInfo,
    first: usize,
    shape: &[usize],
) -> std::result::Result<TensorData, String> {
    let [rows, cols] = *shape else {
        return Err(format!("a part of shape {shape:?} is not a matrix"));
    };
    if info.dims.first().map(|&c| c as usize) != Some(cols) {
        return Err(format!(
            "{} columns, but the metadata implies {cols}",
            info.dims.first().copied().unwrap_or(0)
        ));
    }
    let range = file
        .tensor_range(info)
        .ok_or("its data lies outside the file")?;
    let ty = info.ggml_type;
    let rb = cols / ty.block_size().max(1) * ty.type_size();
    let (start, len) = (range.start + first * rb, rows * rb);
    if start + len > range.end {
        return Err(format!(
            "rows {first}..{} lie outside its data",
            first + rows
        ));
    }
    if let Some(scheme) = kept_scheme(ty) {
        let ty = ParamType::quantized(scheme, shape.to_vec());
        return TensorData::mapped(ty, file.map().clone(), start, len);
    }
    let bytes = &file.map()[start..start + len];
    match ty {
        GgmlType::F16 | GgmlType::BF16 => {
            let dtype = if ty == GgmlType::F16 {
                DType::F16
            } else {
                DType::BF16
            };
            TensorData::from_bytes(ParamType::new(dtype, shape.to_vec()), bytes.to_vec())
        }
        _ => {
            let v = shrink_formats::gguf::dequantize(ty, bytes, rows * cols)
                .map_err(|e| e.to_string())?;
            TensorData::from_f32(DType::F32, shape.to_vec(), &v)
        }
    }
}

pub fn open(path: &Path) -> Result<GgufFile> {
    Ok(GgufFile::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
    fn smollm2_keeps_its_q4_1_and_q8_0_matrices_quantized() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let file = open(&path).expect("run scripts/fetch-smollm2.sh");
        let model = load_model(&file, &crate::LoadOptions::default()).expect("load");
        model.verify().expect("verifies");
        let cfg = config(&file).expect("config");
        let mut count = std::collections::BTreeMap::new();
        for (name, t) in model.weights.iter() {
            assert_eq!(model.graph.param(name), Some(&t.ty), "{name}");
            let kind = t.ty.quant.map_or(t.ty.dtype.to_string(), |q| q.to_string());
            *count.entry(kind).or_insert(0) += 1;
            let qk = cfg.gguf_permuted_heads(name).is_some();
            if t.ty.quant.is_some() {
                assert_eq!(t.is_mapped(), !qk, "{name}: mapped unless un-permuted");
            }
        }
        let want = [("f32", 61), ("q4_1", 210), ("q8_0", 1)];
        let want: std::collections::BTreeMap<String, usize> =
            want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(count, want);
        let embed = model
            .weights
            .get("model.embed_tokens.weight")
            .expect("embed");
        assert_eq!(
            embed.ty,
            ParamType::quantized(QuantScheme::Q8_0, vec![49152, 576])
        );
        // Stored as in the file: about 5.8 bits per weight, not 32.
        let bpw = model.size().bits_per_weight();
        assert!((5.0..6.0).contains(&bpw), "{bpw}");
        // Kept tensors dequantize to what the f32 path gives (Q/K rows put back in order).
        for name in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.29.mlp.down_proj.weight",
            "model.embed_tokens.weight",
        ] {
            let info = file
                .tensor(&cfg.gguf_name(name).expect("name"))
                .expect("tensor");
            let t = model.weights.get(name).expect("param");
            let mut want = file.dequantize(info).expect("dequantize");
            if let Some(h) = cfg.gguf_permuted_heads(name) {
                want = unpermute_rows(&want, h, cfg.head_dim(), t.ty.shape[1]);
            }
            assert!(t.to_f32() == want, "{name}");
        }
    }
}
