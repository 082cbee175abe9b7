//! GGUF v3 export of the `llama` architecture (LLaMA and Mistral graphs; llama.cpp runs both as
//! `llama`): tensors in their stored float type (F32, F16, BF16), named as llama.cpp names them,
//! dims fastest first, Q/K rows permuted back into llama.cpp's interleaved RoPE order; the
//! `llama.*` hyperparameters; the tokenizer's `tokenizer.*` metadata.
//!
//! [`prepare`] builds a [`GgufWriter`] without touching the disk, [`write`] writes it atomically.

mod tokenizer;
pub mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::Path;

use shrink_import::arch::LlamaConfig;
use shrink_import::gguf::{GgmlType, MetaValue};
use shrink_import::gguf_import::{gguf_name, permute_rows, rope_permuted_heads};
use shrink_import::Tokenizer;
use shrink_ir::{DType, Model, Verified};

pub use tokenizer::metadata as tokenizer_metadata;
pub use writer::{GgufTensor, GgufWriter, ALIGNMENT};

use crate::atomic::Staged;
use crate::error::{ExportError, Result};

/// Graph architectures this back end writes (all as GGUF's `llama`).
pub const SUPPORTED: &str = "llama, mistral";

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file whose 2-D weights are mostly of
/// one type: 0 all F32, 1 mostly F16, 32 mostly BF16 (quantized types come later).
pub fn file_type(tensors: &[GgufTensor<'_>]) -> u32 {
    let mut by_type: BTreeMap<u32, u64> = BTreeMap::new();
    for t in tensors.iter().filter(|t| t.dims.len() == 2) {
        *by_type.entry(t.ggml_type.id()).or_default() += t.dims.iter().product::<u64>();
    }
    let f16 = by_type.get(&GgmlType::F16.id()).copied().unwrap_or(0);
    let bf16 = by_type.get(&GgmlType::BF16.id()).copied().unwrap_or(0);
    if bf16 == 0 && f16 == 0 {
        0
    } else if bf16 >= f16 {
        32
    } else {
        1
    }
}

fn ggml_type(dtype: DType) -> Option<GgmlType> {
    match dtype {
        DType::F32 => Some(GgmlType::F32),
        DType::F16 => Some(GgmlType::F16),
        DType::BF16 => Some(GgmlType::BF16),
        DType::I64 => None,
    }
}

/// Everything [`write`] would write, checked, in a writer whose float tensors borrow from the
/// model's store (Q/K weights are permuted copies).
pub fn prepare<'m>(model: &'m Model, tokenizer: &Tokenizer, path: &Path) -> Result<GgufWriter<'m>> {
    let g = &model.graph;
    let unsupported = |message: String| ExportError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    let arch = g
        .meta
        .get("architecture")
        .ok_or_else(|| unsupported("the graph has no meta 'architecture'".into()))?;
    if !matches!(arch.as_str(), "llama" | "mistral") {
        return Err(unsupported(format!(
            "GGUF export writes the llama architecture only (graphs of {SUPPORTED}); this model is '{arch}'"
        )));
    }
    let cfg = LlamaConfig::from_graph(g).map_err(|message| ExportError::Graph {
        path: path.to_path_buf(),
        arch: arch.clone(),
        message,
    })?;
    if cfg.attention_qkv_bias {
        return Err(unsupported(
            "q/k/v biases are not supported in GGUF export (their rows would need llama.cpp's \
             RoPE permutation too)"
                .into(),
        ));
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
    meta.push((
        "general.architecture".into(),
        MetaValue::String("llama".into()),
    ));
    meta.push(("general.name".into(), MetaValue::String(name)));
    let sizes = [
        ("llama.block_count", cfg.num_layers),
        ("llama.context_length", cfg.max_position_embeddings),
        ("llama.embedding_length", cfg.hidden_size),
        ("llama.feed_forward_length", cfg.intermediate_size),
        ("llama.attention.head_count", cfg.num_heads),
        ("llama.attention.head_count_kv", cfg.num_kv_heads),
    ];
    let u32_of = |key: &str, v: usize| {
        u32::try_from(v).map_err(|_| field(key, format!("{v} does not fit a u32")))
    };
    for (k, v) in sizes {
        meta.push((k.into(), MetaValue::U32(u32_of(k, v)?)));
    }
    meta.push((
        "llama.rope.freq_base".into(),
        MetaValue::F32(cfg.rope_theta),
    ));
    meta.push((
        "llama.attention.layer_norm_rms_epsilon".into(),
        MetaValue::F32(cfg.rms_norm_eps),
    ));
    for k in [
        "llama.attention.key_length",
        "llama.attention.value_length",
        "llama.rope.dimension_count",
    ] {
        meta.push((k.into(), MetaValue::U32(u32_of(k, cfg.head_dim)?)));
    }
    meta.push((
        "llama.vocab_size".into(),
        MetaValue::U32(u32_of("llama.vocab_size", cfg.vocab_size)?),
    ));

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
    for hf in names {
        let terr = |message: String| ExportError::Tensor {
            path: path.to_path_buf(),
            tensor: hf.to_string(),
            message,
        };
        let data = model
            .weights
            .get(hf)
            .ok_or_else(|| terr("has no data in the weight store".into()))?;
        let gname =
            gguf_name(hf).ok_or_else(|| terr("has no GGUF name in the llama layout".into()))?;
        let ty = ggml_type(data.ty.dtype)
            .ok_or_else(|| terr(format!("dtype {} cannot be written", data.ty.dtype)))?;
        let dims: Vec<u64> = data.ty.shape.iter().rev().map(|&d| d as u64).collect();
        // q/k biases were refused above, so only their weights match here.
        let heads = rope_permuted_heads(hf, &cfg);
        let bytes = match (heads, data.ty.shape.as_slice()) {
            (Some(h), [rows, cols]) if *rows == h * cfg.head_dim => Cow::Owned(permute_rows(
                data.bytes(),
                h,
                cfg.head_dim,
                cols * data.ty.dtype.size(),
            )),
            (Some(h), s) => {
                return Err(terr(format!(
                    "shape {s:?} is not [{h}*{}, _] (heads*head_dim rows)",
                    cfg.head_dim
                )))
            }
            (None, _) => Cow::Borrowed(data.bytes()),
        };
        w.add_tensor(gname, ty, dims, bytes).map_err(terr)?;
    }
    meta.push((
        "general.file_type".into(),
        MetaValue::U32(file_type(w.tensors())),
    ));
    meta.push(("general.quantization_version".into(), MetaValue::U32(2)));

    let bos = g.meta.get("bos_token_id").and_then(|v| v.parse().ok());
    let eos = g.meta.get("eos_token_id").and_then(|v| v.parse().ok());
    let tok = tokenizer::metadata(tokenizer, cfg.vocab_size, bos, eos).map_err(|message| {
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
