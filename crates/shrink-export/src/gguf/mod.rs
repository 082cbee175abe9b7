//! GGUF v3 export of the `llama` architecture (LLaMA and Mistral graphs; llama.cpp runs both as
//! `llama`): tensors in their stored float type (F32, F16, BF16) or, quantized as `q8_0`, `q4_0`
//! or `q4_1`, as the ggml type of the same layout (Q8_0, Q4_0, Q4_1) with their packed bytes;
//! named as llama.cpp names them, dims fastest first, Q/K rows (whole packed rows when quantized)
//! permuted back into llama.cpp's interleaved RoPE order (each layer by its own head counts); the
//! `llama.*` hyperparameters, `general.file_type` from the dominant type; the tokenizer's
//! `tokenizer.*` metadata. Other quantization schemes have no GGUF type: [`prepare`] refuses them,
//! naming the tensor.
//!
//! A graph whose layers differ in MLP width or head counts (structured pruning) is written as
//! llama.cpp's `deci` architecture (DeciLM/Nemotron-NAS) instead: the same tensors, names and RoPE
//! permutation, the same keys under `deci.`, with `feed_forward_length`, `attention.head_count`
//! and `attention.head_count_kv` as per-layer u32 arrays. `attention.key_length` is always
//! written, since llama.cpp would otherwise derive it from layer 0's head count.
//!
//! [`prepare`] builds a [`GgufWriter`] without touching the disk, [`write`] writes it atomically.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::Path;

use shrink_arch::{permuted_row_sources, ArchConfig, ArchId, ConfigError};
use shrink_formats::gguf::{GgmlType, GgufTensor, GgufWriter, MetaValue};
use shrink_formats::tokenizer::gguf_metadata as tokenizer_metadata;
use shrink_formats::Tokenizer;
use shrink_ir::{DType, Model, ParamType, QuantScheme, Verified};

use crate::atomic::Staged;
use crate::error::{ExportError, Result};

/// `general.file_type` values (llama.cpp's `llama_ftype`) of the types a tensor can be written
/// in: `LLAMA_FTYPE_MOSTLY_F16` = 1, `MOSTLY_BF16` = 32, `MOSTLY_Q8_0` = 7, `MOSTLY_Q4_0` = 2,
/// `MOSTLY_Q4_1` = 3. On a tie in [`file_type`], the later in this list wins.
const FILE_TYPES: [(GgmlType, u32); 5] = [
    (GgmlType::Q4_0, 2),
    (GgmlType::Q4_1, 3),
    (GgmlType::Q8_0, 7),
    (GgmlType::F16, 1),
    (GgmlType::BF16, 32),
];

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file whose 2-D weights are mostly of
/// one type: 0 (`ALL_F32`) when every matrix is F32, otherwise the type of [`FILE_TYPES`]
/// holding the most matrix elements (F32 matrices left out, as llama.cpp's quantizer labels a
/// file by the type it quantized to; ties go to the wider type).
pub fn file_type(tensors: &[GgufTensor<'_>]) -> u32 {
    let mut by_type: BTreeMap<u32, u64> = BTreeMap::new();
    for t in tensors.iter().filter(|t| t.dims.len() == 2) {
        *by_type.entry(t.ggml_type.id()).or_default() += t.dims.iter().product::<u64>();
    }
    FILE_TYPES
        .iter()
        .map(|&(t, ftype)| (by_type.get(&t.id()).copied().unwrap_or(0), ftype))
        .filter(|&(n, _)| n > 0)
        .max_by_key(|&(n, _)| n)
        .map_or(0, |(_, ftype)| ftype)
}

/// The ggml type a parameter is written as: its float dtype, or the ggml block type whose layout
/// its quantization scheme is; `Err` names what GGUF cannot hold.
fn ggml_type(ty: &ParamType) -> std::result::Result<GgmlType, String> {
    match (ty.quant, ty.dtype) {
        (Some(QuantScheme::Q8_0), _) => Ok(GgmlType::Q8_0),
        (Some(QuantScheme::Q4_0), _) => Ok(GgmlType::Q4_0),
        (Some(QuantScheme::Q4_1), _) => Ok(GgmlType::Q4_1),
        (Some(q), _) => Err(format!(
            "is quantized as {q}, for which GGUF has no tensor type (only q8_0, q4_0 and q4_1 \
             are ggml types); write a directory (shrink's format) instead"
        )),
        (None, DType::F32) => Ok(GgmlType::F32),
        (None, DType::F16) => Ok(GgmlType::F16),
        (None, DType::BF16) => Ok(GgmlType::BF16),
        (None, DType::I64) => Err("dtype i64 cannot be written".into()),
    }
}

/// Everything [`write`] would write, checked, in a writer whose tensors borrow from the
/// model's store (Q/K weights are permuted copies).
pub fn prepare<'m>(model: &'m Model, tokenizer: &Tokenizer, path: &Path) -> Result<GgufWriter<'m>> {
    let g = &model.graph;
    let unsupported = |message: String| ExportError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    crate::peft::refuse_adapters(model, path)?;
    let arch = ArchId::of_graph(g).map_err(unsupported)?;
    if !arch.has_gguf() {
        return Err(unsupported(format!(
            "GGUF export writes llama.cpp's LLaMA- and Gemma-family architectures (graphs of \
             {}); this model is '{arch}'",
            ArchId::list(ArchId::has_gguf)
        )));
    }
    let cfg = ArchConfig::from_graph(g).map_err(|message| ExportError::Graph {
        path: path.to_path_buf(),
        arch: arch.to_string(),
        message,
    })?;

    // Every parameter must have a GGUF type: checked before anything else is built.
    for (hf, ty) in g.params() {
        let ty = model.weights.get(hf).map_or(ty, |d| &d.ty);
        ggml_type(ty).map_err(|message| ExportError::Tensor {
            path: path.to_path_buf(),
            tensor: hf.clone(),
            message,
        })?;
    }

    let mut w = GgufWriter::new();
    let field = |key: &str, message: String| ExportError::Field {
        path: path.to_path_buf(),
        field: key.to_string(),
        message,
    };
    let mut meta: Vec<(String, MetaValue)> = Vec::new();
    let name = g.meta.get("name").cloned().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let (gguf_arch, arch_meta) = cfg.to_gguf().map_err(|e| match e {
        ConfigError::Field { field: k, message } => field(&k, message),
        other => unsupported(other.to_string()),
    })?;
    meta.push((
        "general.architecture".into(),
        MetaValue::String(gguf_arch.into()),
    ));
    meta.push(("general.name".into(), MetaValue::String(name)));
    meta.extend(arch_meta);

    // Tensors in the order the graph first reads them (embedding, layer by layer, head).
    let order = g
        .order()
        .map_err(|_| unsupported("the graph has a cycle".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for id in order {
        if let Some(n) = g.node(id) {
            for p in n.op.params() {
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        }
    }
    for p in g.params().keys() {
        if !names.contains(&p.as_str()) {
            names.push(p);
        }
    }
    for (name, values) in cfg.gguf_extra_tensors() {
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(
            name.clone(),
            GgmlType::F32,
            vec![values.len() as u64],
            Cow::Owned(bytes),
        )
        .map_err(|message| ExportError::Tensor {
            path: path.to_path_buf(),
            tensor: name,
            message,
        })?;
    }
    let (fused, head_dim) = (cfg.gguf_fused_tensors(), cfg.head_dim());
    for hf in names {
        let terr = |message: String| ExportError::Tensor {
            path: path.to_path_buf(),
            tensor: hf.to_string(),
            message,
        };
        // A part of a fused GGUF tensor: the whole tensor is written at its first part.
        if let Some(f) = fused.iter().find(|f| f.parts.iter().any(|p| p == hf)) {
            if f.parts[0] == hf {
                let (ty, dims, pieces) = stacked(model, f).map_err(terr)?;
                w.add_tensor_pieces(f.name.clone(), ty, dims, pieces)
                    .map_err(terr)?;
            }
            continue;
        }
        let data = model
            .weights
            .get(hf)
            .ok_or_else(|| terr("has no data in the weight store".into()))?;
        let gname = cfg
            .gguf_name(hf)
            .ok_or_else(|| terr(format!("has no GGUF name in llama.cpp's {arch} layout")))?;
        let mut ty = ggml_type(&data.ty).map_err(terr)?;
        let dims: Vec<u64> = data.ty.shape.iter().rev().map(|&d| d as u64).collect();
        // ggml adds and multiplies 1-D tensors (norms, biases) only as F32, so llama.cpp's
        // converter writes them so whatever the checkpoint's type; so does this.
        let widened =
            (dims.len() == 1 && matches!(ty, GgmlType::F16 | GgmlType::BF16)).then(|| {
                ty = GgmlType::F32;
                data.to_f32()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
            });
        // q/k biases were refused above, so only their weights match here.
        let heads = cfg.gguf_permuted_heads(hf);
        // Borrowed from the store (rows in llama.cpp's order where it permutes them), so the
        // file is written without a copy of the model.
        let pieces = match (heads, data.ty.shape.as_slice()) {
            (Some(h), [rows, cols]) if *rows == h * head_dim => {
                // Bytes of one row: whole packed rows (their blocks) move for a quantized tensor.
                let row_bytes = match data.ty.quant {
                    Some(q) => q.row_bytes(*cols),
                    None => cols * data.ty.dtype.size(),
                };
                let b = data.bytes();
                permuted_row_sources(h, head_dim)
                    .map(|r| Cow::Borrowed(&b[r * row_bytes..(r + 1) * row_bytes]))
                    .collect()
            }
            (Some(h), s) => {
                return Err(terr(format!(
                    "shape {s:?} is not [{h}*{head_dim}, _] (heads*head_dim rows)"
                )))
            }
            (None, _) => vec![match widened {
                Some(f32_bytes) => Cow::Owned(f32_bytes),
                None => Cow::Borrowed(data.bytes()),
            }],
        };
        w.add_tensor_pieces(gname, ty, dims, pieces).map_err(terr)?;
    }
    meta.push((
        "general.file_type".into(),
        MetaValue::U32(file_type(w.tensors())),
    ));
    meta.push(("general.quantization_version".into(), MetaValue::U32(2)));

    let bos = g.meta.get("bos_token_id").and_then(|v| v.parse().ok());
    let eos = g.meta.get("eos_token_id").and_then(|v| v.parse().ok());
    let tok = tokenizer_metadata(tokenizer, cfg.vocab_size(), bos, eos).map_err(|message| {
        ExportError::Tokenizer {
            path: path.to_path_buf(),
            message,
        }
    })?;
    meta.extend(tok);
    for (k, v) in meta {
        w.add_metadata(k.clone(), v).map_err(|m| field(&k, m))?;
    }
    Ok(w)
}

/// A GGUF tensor to write: its type, dims (innermost first) and bytes as pieces.
type GgufTensorParts<'m> = (GgmlType, Vec<u64>, Vec<Cow<'m, [u8]>>);

/// The GGUF tensor `f`: its parts' rows stacked (whole packed rows for a ggml type), all of one
/// type and width, each part borrowed from the store.
fn stacked<'m>(
    model: &'m Model,
    f: &shrink_arch::FusedTensor,
) -> std::result::Result<GgufTensorParts<'m>, String> {
    let mut parts = Vec::with_capacity(f.parts.len());
    for p in &f.parts {
        let d = model
            .weights
            .get(p)
            .ok_or_else(|| format!("'{p}' has no data in the weight store"))?;
        parts.push((p, d, ggml_type(&d.ty)?));
    }
    let (p0, d0, ty) = parts[0];
    let cols = d0.ty.shape[1];
    let mut rows = 0;
    let mut pieces = Vec::with_capacity(parts.len());
    for (p, d, t) in &parts {
        if *t != ty || d.ty.shape[1] != cols {
            return Err(format!(
                "'{p}' ({}) cannot be stacked with '{p0}' ({}) into {}",
                d.ty, d0.ty, f.name
            ));
        }
        rows += d.ty.shape[0];
        pieces.push(Cow::Borrowed(d.bytes()));
    }
    Ok((ty, vec![cols as u64, rows as u64], pieces))
}

/// Writes `model` as a GGUF v3 file at `path` (atomically: a temporary beside it, renamed at the
/// end). The tokenizer is required: llama.cpp reads it from the file.
pub fn write(model: &Model, _proof: &Verified, tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    let w = prepare(model, tokenizer, path)?;
    let staged = Staged::file(path)?;
    let io = |what: &str| {
        let path = path.to_path_buf();
        let what = format!("{what} {}", staged.path().display());
        move |source| ExportError::Io { path, what, source }
    };
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(staged.path())
        .map_err(io("opening"))?;
    w.write_to(BufWriter::with_capacity(1 << 20, file))
        .map_err(io("writing"))?;
    staged.commit()
}
