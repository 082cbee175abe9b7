//! Hugging Face directory export: `config.json`, `model.safetensors` (every parameter in its
//! stored dtype under its IR name; GPT-2's `Conv1D` weights transposed back to `[in, out]`;
//! Phi-3's q/k/v and gate/up stacked back into `qkv_proj` and `gate_up_proj`; no
//! `lm_head.weight` when the head is tied), and, given a tokenizer, `tokenizer.json` and a
//! minimal `tokenizer_config.json`. transformers loads the directory with
//! `AutoModelForCausalLM.from_pretrained(dir)`, and so does `shrink_import::load`.
//!
//! A model with quantized parameters is written in shrink's format, the same directory with:
//! each quantized parameter a 1-D `U8` tensor of its packed bytes (`docs/quantization.md`; in
//! the IR's `[out, in]` orientation, never transposed), listed in the safetensors `__metadata__`
//! under `"shrink.quant"` as the JSON object `{name: {"scheme": "q4_0", "shape": [out, in]}}`;
//! and `config.json`'s `"quantization_config": {"quant_method": "shrink", "format":
//! "docs/quantization.md", "schemes": {name: scheme}}`. `shrink_import::load` reads it back
//! bit for bit; transformers does not know the method.
//!
//! A LLaMA-family model whose layers differ in size (structured pruning) writes
//! `intermediate_size`, `num_attention_heads` and `num_key_value_heads` as lists, one entry per
//! layer, beside the explicit `head_dim`. Stock transformers' `LlamaForCausalLM` needs uniform
//! sizes and cannot load such a directory; `shrink_import::load` can, and [`shrink_formats::gguf::write`]
//! (llama.cpp's `deci` architecture) is the way to llama.cpp.
//!
//! `model.safetensors` is written by [`write_safetensors`]: the layout of the `safetensors`
//! crate (tensors by descending dtype then name, header padded with spaces to 8 bytes) with the
//! `__metadata__` keys sorted, so the same model always gives the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use serde_json::{json, Map, Value};
use shrink_arch::{ArchConfig, ArchId};
use shrink_formats::safetensors::{transpose_bytes, QUANT_METADATA_KEY, QUANT_METHOD};
use shrink_formats::Tokenizer;
use shrink_ir::{DType, Model, TensorData, Verified};

use crate::atomic::Staged;
use crate::error::{ExportError, Result};

/// One parameter as safetensors sees it.
pub(crate) struct Tensor<'m> {
    data: &'m TensorData,
    dtype: Dtype,
    /// Shape in the file (`[in, out]` for a transposed Conv1D weight, `[bytes]` when quantized).
    shape: Vec<usize>,
    /// Write the `[rows, cols]` IR matrix transposed.
    transpose: bool,
    /// Parameters whose rows follow `data`'s in the file (a fused checkpoint tensor).
    stacked: Vec<&'m TensorData>,
}

impl<'m> Tensor<'m> {
    /// The stored bytes as they are, under `dtype` and `shape`.
    pub(crate) fn new(data: &'m TensorData, dtype: Dtype, shape: Vec<usize>) -> Self {
        Tensor {
            data,
            dtype,
            shape,
            transpose: false,
            stacked: Vec::new(),
        }
    }

    fn nbytes(&self) -> usize {
        self.data.nbytes() + self.stacked.iter().map(|d| d.nbytes()).sum::<usize>()
    }

    /// Writes the bytes in the file's layout: stacked parts one after another from the store,
    /// only a transposed matrix through a copy.
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        match (self.transpose, self.data.ty.shape.as_slice()) {
            (true, [rows, cols]) => w.write_all(&transpose_bytes(
                self.data.bytes(),
                *rows,
                *cols,
                self.data.ty.dtype.size(),
            ))?,
            _ => w.write_all(self.data.bytes())?,
        }
        for d in &self.stacked {
            w.write_all(d.bytes())?;
        }
        Ok(())
    }
}

/// Writes a safetensors file: the layout of `safetensors::serialize_to_file` (tensors sorted by
/// descending dtype, then name; offsets in that order; the header JSON padded with spaces to a
/// multiple of 8 bytes) with `metadata` as `__metadata__`, its keys in sorted order.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor<'_>)],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut order: Vec<&(String, Tensor<'_>)> = tensors.iter().collect();
    order.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        let end = offset + t.nbytes();
        header.insert(
            name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).map_err(std::io::Error::other)?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&(head.len() as u64).to_le_bytes())?;
    f.write_all(&head)?;
    for (_, t) in order {
        t.write_to(&mut f)?;
    }
    f.flush()
}

/// The dtype holding the most float parameter elements, quantized ones left out (ties: the
/// wider type).
fn main_dtype(model: &Model) -> DType {
    let mut count: HashMap<DType, usize> = HashMap::new();
    for ty in model.graph.params().values().filter(|t| t.quant.is_none()) {
        *count.entry(ty.dtype).or_default() += ty.numel();
    }
    [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .max_by_key(|d| count.get(d).copied().unwrap_or(0))
        .unwrap_or(DType::F32)
}

/// `tokenizer.json` and `tokenizer_config.json` contents.
fn tokenizer_files(
    tok: &Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    context: usize,
    dir: &Path,
) -> Result<(String, String)> {
    let err = |message: String| ExportError::Tokenizer {
        path: dir.join("tokenizer.json"),
        message,
    };
    let mut text = tok
        .to_hf()
        .map_err(err)?
        .to_string(false)
        .map_err(|e| err(format!("cannot serialise: {e}")))?;
    // A GGUF tokenizer that adds BOS or EOS does it outside the `tokenizers` pipeline; in
    // tokenizer.json that is a post-processor.
    if tok.bos_to_add().is_some() || tok.eos_to_add().is_some() {
        let mut j: Value =
            serde_json::from_str(&text).map_err(|e| err(format!("cannot re-read: {e}")))?;
        if !j.get("post_processor").is_none_or(Value::is_null) {
            return Err(err(
                "adds BOS or EOS both itself and through its post-processor".into(),
            ));
        }
        let name = |id: u32| {
            tok.id_to_token(id)
                .ok_or_else(|| err(format!("token id {id} is not in the vocabulary")))
        };
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = serde_json::Map::new();
        let special =
            |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let bos = tok.bos_to_add().map(name).transpose()?;
        let eos = tok.eos_to_add().map(name).transpose()?;
        for (seq_id, type_id) in [("A", 0), ("B", 1)] {
            let part: Vec<Value> = bos
                .iter()
                .map(|b| special(b, type_id))
                .chain([seq(seq_id, type_id)])
                .chain(eos.iter().map(|e| special(e, type_id)))
                .collect();
            if seq_id == "A" {
                single.extend(part.iter().cloned());
            }
            pair.extend(part);
        }
        for (n, id) in [(&bos, tok.bos_to_add()), (&eos, tok.eos_to_add())] {
            if let (Some(n), Some(id)) = (n, id) {
                specials.insert(n.clone(), json!({"id": n, "ids": [id], "tokens": [n]}));
            }
        }
        j["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": specials,
        });
        text = serde_json::to_string(&j).map_err(|e| err(e.to_string()))?;
    }
    let token = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .map_or(Value::Null, Value::String)
    };
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(bos),
        "eos_token": token(eos),
        "add_bos_token": tok.bos_to_add().is_some(),
        "add_eos_token": tok.eos_to_add().is_some(),
        "clean_up_tokenization_spaces": false,
        "model_max_length": context,
    });
    let config = serde_json::to_string_pretty(&config).map_err(|e| err(e.to_string()))?;
    Ok((text, config))
}

/// safetensors' dtype of a float parameter; `None` for i64, which no weight has.
fn st_dtype(d: DType) -> Option<Dtype> {
    match d {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        DType::I64 => None,
    }
}

/// The fused checkpoint tensor `f` from its float `parts` (in its order): their rows stacked,
/// all of one dtype and width.
fn stacked<'m>(
    f: &shrink_arch::FusedTensor,
    parts: &[&'m TensorData],
    st_path: &Path,
) -> Result<Tensor<'m>> {
    let terr = |message: String| ExportError::Tensor {
        path: st_path.to_path_buf(),
        tensor: f.name.clone(),
        message,
    };
    let (first, rest) = parts
        .split_first()
        .ok_or_else(|| terr("has no parts".into()))?;
    let (dtype, cols) = (first.ty.dtype, first.ty.shape[1]);
    if let Some((p, d)) = f
        .parts
        .iter()
        .zip(parts)
        .find(|(_, d)| d.ty.dtype != dtype || d.ty.shape[1] != cols)
    {
        return Err(terr(format!(
            "its part '{p}' is {}, unlike '{}' ({})",
            d.ty, f.parts[0], first.ty
        )));
    }
    let st = st_dtype(dtype).ok_or_else(|| terr("dtype i64 cannot be a weight".into()))?;
    Ok(Tensor {
        data: first,
        dtype: st,
        shape: vec![parts.iter().map(|d| d.ty.shape[0]).sum(), cols],
        transpose: false,
        stacked: rest.to_vec(),
    })
}

/// Writes `model` (and its tokenizer, if given) as a Hugging Face directory `dir`, atomically:
/// into a temporary directory beside it, renamed into place when complete (an existing `dir` is
/// replaced only then). Returns the paths of the files written.
pub fn write(
    model: &Model,
    _proof: &Verified,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let g = &model.graph;
    crate::peft::refuse_adapters(model, dir)?;
    let unsupported = |message: String| ExportError::Unsupported {
        path: dir.to_path_buf(),
        message,
    };
    let arch = ArchId::of_graph(g).map_err(unsupported)?;
    let cfg = ArchConfig::from_graph(g).map_err(|message| ExportError::Graph {
        path: dir.to_path_buf(),
        arch: arch.to_string(),
        message,
    })?;
    let dtype = main_dtype(model);
    let mut config = Value::Object(cfg.to_hf(dtype.torch_name()).map_err(unsupported)?);
    let (bos, eos, context) = (cfg.bos_token_id(), cfg.eos_token_id(), cfg.context_length());

    let st_path = dir.join("model.safetensors");
    let mut tensors = Vec::new();
    let mut quant = Map::new();
    let mut schemes = Map::new();
    // Parts are stacked back into the checkpoint's fused tensor when all are floats; quantized
    // parts (shrink's format, which transformers does not read anyway) are written as they are.
    let fused: Vec<(shrink_arch::FusedTensor, Vec<&TensorData>)> = cfg
        .fused_tensors()
        .into_iter()
        .filter_map(|f| {
            let parts = f
                .parts
                .iter()
                .map(|p| model.weights.get(p).filter(|d| d.ty.quant.is_none()))
                .collect::<Option<Vec<_>>>()?;
            Some((f, parts))
        })
        .collect();
    let is_part = |n: &str| fused.iter().any(|(f, _)| f.parts.iter().any(|p| p == n));
    // Gemma's norms go back to the checkpoint's `w` of `1 + w`, in the checkpoint's dtype.
    let mut shifted = BTreeMap::new();
    for (name, ty) in g.params() {
        let off = cfg.stored_offset(name);
        if off == 0.0 {
            continue;
        }
        let terr = |message: String| ExportError::Tensor {
            path: st_path.clone(),
            tensor: name.clone(),
            message,
        };
        let data = model
            .weights
            .get(name)
            .ok_or_else(|| terr("has no data in the weight store".into()))?;
        if ty.quant.is_some() {
            return Err(terr(format!(
                "is quantized ({ty}); a norm weight must be a float"
            )));
        }
        let v: Vec<f32> = data.to_f32().iter().map(|x| x - off).collect();
        let back = TensorData::from_f32(dtype, ty.shape.clone(), &v).map_err(terr)?;
        shifted.insert(name.clone(), back);
    }
    for (f, parts) in &fused {
        tensors.push((f.name.clone(), stacked(f, parts, &st_path)?));
    }
    for (name, ty) in g.params().iter().filter(|(n, _)| !is_part(n)) {
        let terr = |message: String| ExportError::Tensor {
            path: st_path.clone(),
            tensor: name.clone(),
            message,
        };
        let data = model
            .weights
            .get(name)
            .ok_or_else(|| terr("has no data in the weight store".into()))?;
        if data.ty != *ty {
            return Err(terr(format!(
                "is declared {ty} but its data is {}",
                data.ty
            )));
        }
        let data = shifted.get(name).unwrap_or(data);
        let ty = &data.ty;
        if let Some(scheme) = ty.quant {
            quant.insert(
                name.clone(),
                json!({"scheme": scheme.to_string(), "shape": ty.shape}),
            );
            schemes.insert(name.clone(), json!(scheme.to_string()));
            tensors.push((
                name.clone(),
                Tensor::new(data, Dtype::U8, vec![data.nbytes()]),
            ));
            continue;
        }
        let dtype =
            st_dtype(ty.dtype).ok_or_else(|| terr("dtype i64 cannot be a weight".into()))?;
        let transpose = cfg.stored_transposed(name) && ty.shape.len() == 2;
        let shape = if transpose {
            ty.shape.iter().rev().copied().collect()
        } else {
            ty.shape.clone()
        };
        tensors.push((
            name.clone(),
            Tensor {
                data,
                dtype,
                shape,
                transpose,
                stacked: Vec::new(),
            },
        ));
    }
    let mut st_meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if !quant.is_empty() {
        if let Value::Object(m) = &mut config {
            m.insert(
                "quantization_config".into(),
                json!({
                    "quant_method": QUANT_METHOD,
                    "format": "docs/quantization.md",
                    "schemes": schemes,
                }),
            );
        }
        st_meta.insert(
            QUANT_METADATA_KEY.to_string(),
            Value::Object(quant).to_string(),
        );
    }
    let config_text = serde_json::to_string_pretty(&config).map_err(|e| ExportError::Field {
        path: dir.join("config.json"),
        field: "config".into(),
        message: e.to_string(),
    })?;
    let tok_files = tokenizer
        .map(|t| tokenizer_files(t, bos, eos, context, dir))
        .transpose()?;

    let staged = Staged::dir(dir)?;
    let tmp = staged.path().to_path_buf();
    let io = |name: &str| {
        let path = dir.join(name);
        let what = format!("writing {}", tmp.join(name).display());
        move |source| ExportError::Io { path, what, source }
    };
    let mut written = Vec::new();
    std::fs::write(tmp.join("config.json"), config_text + "\n").map_err(io("config.json"))?;
    written.push("config.json");
    write_safetensors(&tmp.join("model.safetensors"), &tensors, &st_meta)
        .map_err(io("model.safetensors"))?;
    written.push("model.safetensors");
    if let Some((tj, tc)) = tok_files {
        std::fs::write(tmp.join("tokenizer.json"), tj).map_err(io("tokenizer.json"))?;
        std::fs::write(tmp.join("tokenizer_config.json"), tc + "\n")
            .map_err(io("tokenizer_config.json"))?;
        written.extend(["tokenizer.json", "tokenizer_config.json"]);
    }
    if let Some(sp) = tokenizer.and_then(Tokenizer::sentencepiece) {
        std::fs::write(tmp.join("tokenizer.model"), &sp.bytes).map_err(io("tokenizer.model"))?;
        written.push("tokenizer.model");
    }
    staged.commit()?;
    Ok(written.into_iter().map(|n| dir.join(n)).collect())
}
