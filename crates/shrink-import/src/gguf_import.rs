//! GGUF files of the `llama` architecture into the IR: hyperparameters from `llama.*` metadata,
//! tensor names mapped to Hugging Face names, every tensor dequantized to f32 (F16/BF16 kept),
//! and the Q/K rows that GGUF conversion permutes for llama.cpp's interleaved RoPE put back in
//! the "rotate half" order the IR uses.

use std::path::Path;

use shrink_ir::{DType, Model, ParamType, TensorData, WeightStore};

use crate::arch::LlamaConfig;
use crate::error::{ImportError, Result};
use crate::gguf::{GgmlType, GgufFile};

/// Architectures this front end reads, by `general.architecture`.
pub const SUPPORTED: &str = "llama";

/// The GGUF name of a Hugging Face LLaMA parameter (the map is one-to-one).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// For a parameter whose rows GGUF stores in llama.cpp's interleaved RoPE order (Q and K
/// weights, and their biases), the number of heads its rows split into; `None` otherwise.
pub fn rope_permuted_heads(hf_name: &str, cfg: &LlamaConfig) -> Option<usize> {
    if hf_name.contains("self_attn.q_proj.") {
        Some(cfg.num_heads)
    } else if hf_name.contains("self_attn.k_proj.") {
        Some(cfg.num_kv_heads)
    } else {
        None
    }
}

/// Reorders the rows of a `[heads*head_dim, cols]` Q or K weight from llama.cpp's interleaved
/// pairs (row `2j + t` of a head) to the halves of Hugging Face (row `t*head_dim/2 + j`).
pub fn unpermute_rows<T: Copy>(w: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    let mut out = w.to_vec();
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * head_dim + 2 * j + t) * cols;
                let dst = (h * head_dim + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The inverse of [`unpermute_rows`]: reorders the rows of a `[heads*head_dim, cols]` Q or K
/// weight from Hugging Face's halves (row `t*head_dim/2 + j` of a head) into llama.cpp's
/// interleaved pairs (row `2j + t`), as `convert_hf_to_gguf.py` does for the `llama` architecture.
pub fn permute_rows<T: Copy>(w: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    let mut out = w.to_vec();
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * head_dim + t * half + j) * cols;
                let dst = (h * head_dim + 2 * j + t) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

fn config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(ImportError::UnsupportedArch {
            path: file.path.clone(),
            arch: arch.to_string(),
            supported: SUPPORTED,
        });
    }
    let u = |k: &str| file.get_u32(&format!("llama.{k}")).map(|v| v as usize);
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let head_dim = match file.get_u32("llama.attention.key_length") {
        Ok(v) => v as usize,
        Err(_) if heads > 0 => hidden / heads,
        Err(_) => 0,
    };
    let vocab = match u("vocab_size") {
        Ok(v) => v,
        Err(_) => file.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    if let Ok(rot) = u("rope.dimension_count") {
        if rot != head_dim {
            return Err(ImportError::Config {
                path: file.path.clone(),
                field: "llama.rope.dimension_count".into(),
                message: format!("partial rotary ({rot} of {head_dim}) is not supported"),
            });
        }
    }
    let c = LlamaConfig {
        arch: "llama".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        num_layers: u("block_count")?,
        num_heads: heads,
        num_kv_heads: u("attention.head_count_kv").unwrap_or(heads),
        head_dim,
        rope_theta: file.get_f32("llama.rope.freq_base").unwrap_or(10000.0),
        rms_norm_eps: file.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        max_position_embeddings: u("context_length").unwrap_or(2048),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        bos_token_id: file.get_u32("tokenizer.ggml.bos_token_id").ok(),
        eos_token_id: file.get_u32("tokenizer.ggml.eos_token_id").ok(),
    };
    c.validate().map_err(|m| ImportError::Config {
        path: file.path.clone(),
        field: "llama.*".into(),
        message: m,
    })?;
    Ok(c)
}

/// Loads a GGUF file (its tokenizer is read separately).
pub fn load_model(file: &GgufFile) -> Result<Model> {
    let cfg = config(file)?;
    let mut graph = cfg.build();
    let mut store = WeightStore::new();
    let names: Vec<(String, ParamType)> = graph
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (hf, want) in names {
        let gname = gguf_name(&hf).unwrap_or_else(|| hf.clone());
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
        let permuted = rope_permuted_heads(&hf, &cfg);
        let data = match info.ggml_type {
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
                    Some(h) => unpermute_rows(&raw, h, cfg.head_dim, cols),
                    None => raw,
                };
                TensorData::from_bytes(ParamType::new(dtype, want.shape.clone()), raw.concat())
            }
            _ => {
                let mut v = file.dequantize(info)?;
                if let Some(h) = permuted {
                    v = unpermute_rows(&v, h, cfg.head_dim, cols);
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(terr(format!(
                        "holds a non-finite value at element {i} (row {})",
                        i / cols.max(1)
                    )));
                }
                TensorData::from_f32(DType::F32, want.shape.clone(), &v)
            }
        }
        .map_err(terr)?;
        if let Some(p) = graph.param_mut(&hf) {
            *p = data.ty.clone();
        }
        store.insert(hf, data);
    }
    graph.meta.insert("source_format".into(), "gguf".into());
    if let Ok(name) = file.get_str("general.name") {
        graph.meta.insert("name".into(), name.to_string());
    }
    Ok(Model {
        graph,
        weights: store,
    })
}

/// Opens a GGUF file.
pub fn open(path: &Path) -> Result<GgufFile> {
    Ok(GgufFile::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_inverts_unpermute() {
        for (heads, head_dim, cols) in [(1, 4, 1), (4, 16, 3), (3, 64, 5), (2, 8, 1)] {
            let w: Vec<u32> = (0..(heads * head_dim * cols) as u32).collect();
            let p = permute_rows(&w, heads, head_dim, cols);
            assert_ne!(p, w, "{heads}x{head_dim}: permutation is not the identity");
            assert_eq!(unpermute_rows(&p, heads, head_dim, cols), w);
            assert_eq!(
                permute_rows(
                    &unpermute_rows(&w, heads, head_dim, cols),
                    heads,
                    head_dim,
                    cols
                ),
                w
            );
        }
    }

    #[test]
    fn permute_matches_convert_hf_to_gguf() {
        // LlamaModel.permute: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(...):
        // output row h*hd + 2j + t is input row h*hd + t*hd/2 + j.
        let (heads, hd) = (2, 4);
        let w: Vec<usize> = (0..heads * hd).collect();
        assert_eq!(permute_rows(&w, heads, hd, 1), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
