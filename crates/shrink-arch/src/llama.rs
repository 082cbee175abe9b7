//! The LLaMA family (Llama, SmolLM, Mistral, Qwen2, Qwen3, Phi-3): its normalised config, the graph it
//! builds, the config read back from a graph, and its GGUF tensor names.

use shrink_ir::{Activation, AttentionSpec, Graph, NormKind, Op, Rope, RopeScaling};

use serde_json::{json, Map, Value};

use crate::builder::{Builder, Meta};
use crate::graph_read::*;
use crate::hf_json::{
    self, bounded, f32_json, field_err, layer_types_json, sliding_flags, token_id, token_json,
    window, LayerType, PerLayer, RopeJson,
};
use serde::Deserialize;
use shrink_formats::gguf::{GgufError, GgufFile, MetaValue, OptionalKey};

use crate::family::{decoder_config_fields, Architecture, FamilyDef, GgufForm};
use crate::{ArchId, ConfigError, FusedTensor};

/// The LLaMA family (Llama, SmolLM, Mistral, Qwen2, Qwen3, Phi-3): RMSNorm, RoPE, grouped-query
/// attention, SwiGLU MLP. Layers may differ in MLP width and head counts (structured pruning makes such
/// models); `head_dim` is shared.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Llama, Mistral, Qwen2, Qwen3 or Phi-3: kept so exports write the same architecture back.
    pub arch: ArchId,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// One entry per decoder layer, in order: their number is `num_hidden_layers`.
    pub layers: Vec<LlamaLayer>,
    pub head_dim: usize,
    /// Features of each head RoPE rotates (the first ones, in two halves): `head_dim` unless
    /// Phi-3's `partial_rotary_factor` says fewer (Phi-4-mini: 3/4).
    pub rotary_dim: usize,
    pub rope_theta: f32,
    /// `rope_scaling` (Llama 3.1's `llama3`, or `linear`).
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2).
    pub attention_qkv_bias: bool,
    /// RMSNorm over each head of q and k before RoPE, one `[head_dim]` weight per layer for
    /// each (Qwen3's `q_norm`/`k_norm`).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The sizes of one LLaMA decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaLayer {
    /// Rows of `gate_proj`/`up_proj`, columns of `down_proj`.
    pub intermediate_size: usize,
    /// Query heads; a multiple of `num_kv_heads`.
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Sliding-window attention over this many positions (Mistral; Qwen2's upper layers).
    pub sliding_window: Option<usize>,
}

impl LlamaLayer {
    /// The sizes alone (what per-layer config lists and llama.cpp's `deci` describe).
    fn sizes(&self) -> (usize, usize, usize) {
        (self.intermediate_size, self.num_heads, self.num_kv_heads)
    }
}

impl LlamaConfig {
    /// `num_hidden_layers`.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether every layer has layer 0's sizes (what stock transformers and llama.cpp's `llama`
    /// architecture can hold).
    pub fn is_uniform(&self) -> bool {
        self.layers.windows(2).all(|w| w[0].sizes() == w[1].sizes())
    }

    /// Checks the config's numbers before a graph is built from them.
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{dim, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
        dim("vocab_size", self.vocab_size, MAX_VOCAB)?;
        dim("hidden_size", self.hidden_size, MAX_WIDTH)?;
        dim("num_hidden_layers", self.num_layers(), MAX_LAYERS)?;
        dim("head_dim", self.head_dim, MAX_HEAD_DIM)?;
        dim(
            "max_position_embeddings",
            self.max_position_embeddings,
            crate::limits::MAX_CONTEXT,
        )?;
        // A uniform config's errors read as they always did, without a layer.
        let uniform = self.is_uniform();
        for (i, l) in self.layers.iter().enumerate() {
            let at = if uniform {
                String::new()
            } else {
                format!("layer {i}: ")
            };
            for (k, v, max) in [
                ("intermediate_size", l.intermediate_size, MAX_WIDTH),
                ("num_attention_heads", l.num_heads, MAX_HEADS),
                ("num_key_value_heads", l.num_kv_heads, MAX_HEADS),
            ] {
                dim(k, v, max).map_err(|m| format!("{at}{m}"))?;
            }
            if !l.num_heads.is_multiple_of(l.num_kv_heads) {
                return Err(format!(
                    "{at}num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                    l.num_heads, l.num_kv_heads
                ));
            }
            if uniform {
                break;
            }
        }
        if self.rotary_dim == 0
            || !self.rotary_dim.is_multiple_of(2)
            || self.rotary_dim > self.head_dim
        {
            return Err(format!(
                "the rotary dimension ({}) must be even, positive and at most head_dim ({})",
                self.rotary_dim, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        crate::limits::epsilon("rms_norm_eps", self.rms_norm_eps)?;
        // The verifier's own check of the RoPE attribute (a factor that overflowed f32, …).
        Rope {
            theta: self.rope_theta,
            dim: self.rotary_dim,
            scaling: self.rope_scaling,
        }
        .check(self.head_dim)
        .map_err(|m| format!("rope_scaling: {m}"))?;
        self.param_count()?;
        Ok(())
    }

    /// Phi-3's checkpoints stack q/k/v in `qkv_proj` and gate/up in `gate_up_proj`, per layer.
    pub fn fused_tensors(&self) -> Vec<FusedTensor> {
        if self.arch != ArchId::Phi3 {
            return Vec::new();
        }
        let mut fused = Vec::with_capacity(2 * self.num_layers());
        for i in 0..self.num_layers() {
            let p = format!("model.layers.{i}");
            let names = |fused: &str, parts: &[&str]| FusedTensor {
                name: format!("{p}.{fused}.weight"),
                parts: parts.iter().map(|m| format!("{p}.{m}.weight")).collect(),
            };
            fused.push(names(
                "self_attn.qkv_proj",
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ));
            fused.push(names("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"]));
        }
        fused
    }

    /// GGUF tensors that hold several IR parameters (llama.cpp's phi3: `attn_qkv` and the
    /// gate/up `ffn_up`), by their GGUF names.
    pub fn gguf_fused_tensors(&self) -> Vec<FusedTensor> {
        self.fused_tensors()
            .into_iter()
            .filter_map(|f| {
                let name = gguf_name(&f.name.replace("gate_up_proj", "up_proj"))?;
                Some(FusedTensor { name, ..f })
            })
            .collect()
    }

    /// Parameters of the model, counted from the graph it builds in checked arithmetic (a
    /// config's sizes are untrusted; the graph declares shapes and allocates no weights).
    pub fn param_count(&self) -> Result<u64, String> {
        crate::limits::graph_params(&self.build())
    }

    pub fn build(&self) -> Graph {
        let c = self;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let mut b = Builder { g: Graph::new() };
        let tokens = b.op(
            Op::Input {
                name: "tokens".into(),
            },
            &[],
        );
        let embed = b.param("model.embed_tokens.weight", vec![c.vocab_size, d]);
        let mut h = b.op(
            Op::Embedding {
                weight: embed.clone(),
            },
            &[tokens],
        );
        for (i, l) in c.layers.iter().enumerate() {
            let attn = AttentionSpec {
                heads: l.num_heads,
                kv_heads: l.num_kv_heads,
                head_dim: hd,
                rope: Some(Rope {
                    theta: c.rope_theta,
                    dim: c.rotary_dim,
                    scaling: c.rope_scaling,
                }),
                causal: true,
                window: l.sliding_window,
                scale: None,
                softcap: None,
            };
            let p = format!("model.layers.{i}");
            let norm = |b: &mut Builder, x, name: &str| {
                let weight = b.param(&format!("{p}.{name}.weight"), vec![d]);
                b.op(
                    Op::Norm {
                        kind: NormKind::Rms,
                        eps: c.rms_norm_eps,
                        weight,
                        bias: None,
                        group: None,
                    },
                    &[x],
                )
            };
            let x = norm(&mut b, h, "input_layernorm");
            let qkv = c.attention_qkv_bias;
            let mut q = b.linear(
                x,
                &format!("{p}.self_attn.q_proj"),
                l.num_heads * hd,
                d,
                qkv,
            );
            let mut k = b.linear(
                x,
                &format!("{p}.self_attn.k_proj"),
                l.num_kv_heads * hd,
                d,
                qkv,
            );
            if c.qk_norm {
                let head_norm = |b: &mut Builder, x, name: &str| {
                    let weight = b.param(&format!("{p}.self_attn.{name}.weight"), vec![hd]);
                    b.op(
                        Op::Norm {
                            kind: NormKind::Rms,
                            eps: c.rms_norm_eps,
                            weight,
                            bias: None,
                            group: Some(hd),
                        },
                        &[x],
                    )
                };
                q = head_norm(&mut b, q, "q_norm");
                k = head_norm(&mut b, k, "k_norm");
            }
            let v = b.linear(
                x,
                &format!("{p}.self_attn.v_proj"),
                l.num_kv_heads * hd,
                d,
                qkv,
            );
            let a = b.op(Op::Attention(attn), &[q, k, v]);
            let o = b.linear(
                a,
                &format!("{p}.self_attn.o_proj"),
                d,
                l.num_heads * hd,
                false,
            );
            h = b.op(Op::Add, &[h, o]);
            let x = norm(&mut b, h, "post_attention_layernorm");
            let gate = b.linear(
                x,
                &format!("{p}.mlp.gate_proj"),
                l.intermediate_size,
                d,
                false,
            );
            let up = b.linear(
                x,
                &format!("{p}.mlp.up_proj"),
                l.intermediate_size,
                d,
                false,
            );
            let gate = b.op(Op::Activation(Activation::Silu), &[gate]);
            let m = b.op(Op::Mul, &[gate, up]);
            let down = b.linear(
                m,
                &format!("{p}.mlp.down_proj"),
                d,
                l.intermediate_size,
                false,
            );
            h = b.op(Op::Add, &[h, down]);
        }
        let weight = b.param("model.norm.weight", vec![d]);
        h = b.op(
            Op::Norm {
                kind: NormKind::Rms,
                eps: c.rms_norm_eps,
                weight,
                bias: None,
                group: None,
            },
            &[h],
        );
        let head = if c.tie_word_embeddings {
            embed
        } else {
            b.param("lm_head.weight", vec![c.vocab_size, d])
        };
        b.finish(
            h,
            head,
            &Meta {
                arch: c.arch.name(),
                context_length: c.max_position_embeddings,
                tied: c.tie_word_embeddings,
                bos: c.bos_token_id,
                eos: c.eos_token_id,
                logit_softcap: None,
            },
        )
    }
}

/// Checks that a layer's projections have the sizes its attention op and MLP width imply, so a
/// mismatch is reported against the tensor rather than as a structural difference.
fn check_llama_layer(g: &Graph, i: usize, l: &LlamaLayer, hd: usize) -> Result<(), String> {
    let p = format!("model.layers.{i}");
    let (q, kv) = (l.num_heads * hd, l.num_kv_heads * hd);
    let attn = format!(
        "attention heads={} kv_heads={} head_dim={hd}",
        l.num_heads, l.num_kv_heads
    );
    let inter = format!(
        "intermediate_size {} (from '{p}.mlp.gate_proj.weight')",
        l.intermediate_size
    );
    let m = l.intermediate_size;
    // (tensor, which dimension, its implied size, what implies it)
    let checks = [
        ("self_attn.q_proj.weight", 0, q, &attn),
        ("self_attn.k_proj.weight", 0, kv, &attn),
        ("self_attn.v_proj.weight", 0, kv, &attn),
        ("self_attn.o_proj.weight", 1, q, &attn),
        ("mlp.up_proj.weight", 0, m, &inter),
        ("mlp.down_proj.weight", 1, m, &inter),
    ];
    for (name, dim, want, why) in checks {
        let name = format!("{p}.{name}");
        let (rows, cols) = param_2d(g, &name)?;
        let got = if dim == 0 { rows } else { cols };
        if got != want {
            let implied = if dim == 0 { [want, cols] } else { [rows, want] };
            return Err(format!(
                "layer {i}: parameter '{name}' has shape [{rows}, {cols}], but {why} implies {implied:?}"
            ));
        }
    }
    Ok(())
}

impl LlamaConfig {
    /// Reads the config back from a graph of this family (the inverse of [`LlamaConfig::build`],
    /// whatever the parameters' dtypes or schemes): sizes from the parameter shapes, heads, RoPE
    /// and norm epsilon from the ops, whether the head is tied from the output linear's weight,
    /// and the architecture, context length and BOS/EOS from `graph.meta`. Layers may differ in
    /// MLP width and head counts (each read from its own layer). Fails with the layer and tensor
    /// at fault when the graph is not that shape.
    pub fn from_graph(g: &Graph) -> Result<LlamaConfig, String> {
        let arch = ArchId::of_graph(g)?;
        if !FAMILY.reads(arch) {
            return Err(format!(
                "architecture '{arch}' is not of the LLaMA family ({})",
                FAMILY.arch_list()
            ));
        }
        let embed = "model.embed_tokens.weight";
        let (vocab, hidden) = param_2d(g, embed)?;
        let layers = count_layers(g, "model.layers.")?;
        let ops = ops_in_order(g)?;
        let specs = layer_attention_specs(&ops, layers)?;
        let (rope, head_dim) = (specs[0].rope, specs[0].head_dim);
        let rope = rope.ok_or("attention has no RoPE")?;
        if rope.dim != head_dim && arch != ArchId::Phi3 {
            return Err(format!(
                "partial rotary (rope dim {} of head_dim {head_dim}) is only Phi-3's",
                rope.dim
            ));
        }
        let eps = norm_eps(&ops, NormKind::Rms)?;
        let qkv_bias = g.param("model.layers.0.self_attn.q_proj.bias").is_some();
        let qk_norm = g.param("model.layers.0.self_attn.q_norm.weight").is_some();
        // Each layer's sizes: MLP width from its gate projection, heads from its attention op;
        // every other shape must agree with them (here, then against `build()` below).
        let mut sizes = Vec::with_capacity(layers);
        for (i, a) in specs.iter().enumerate() {
            let (inter, _) = param_2d(g, &format!("model.layers.{i}.mlp.gate_proj.weight"))?;
            let l = LlamaLayer {
                intermediate_size: inter,
                num_heads: a.heads,
                num_kv_heads: a.kv_heads,
                sliding_window: a.window,
            };
            check_llama_layer(g, i, &l, head_dim)?;
            sizes.push(l);
        }
        let tied = head_is_tied(g, embed)?;
        let c = LlamaConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            layers: sizes,
            head_dim,
            rotary_dim: rope.dim,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            rms_norm_eps: eps,
            max_position_embeddings: meta_usize(g, "context_length")?
                .ok_or("meta 'context_length' is missing")?,
            tie_word_embeddings: tied,
            attention_qkv_bias: qkv_bias,
            qk_norm,
            bos_token_id: meta_token(g, "bos_token_id")?,
            eos_token_id: meta_token(g, "eos_token_id")?,
        };
        c.validate()?;
        same_structure(g, &c.build(), arch.name())?;
        Ok(c)
    }
}

// ---- GGUF metadata and tensor names ----

/// GGUF key/values, in the order they are written.
pub type GgufMetadata = Vec<(String, MetaValue)>;

impl LlamaConfig {
    /// `general.architecture` and the `<arch>.*` hyperparameters llama.cpp reads this config
    /// from. Layers of different sizes need llama.cpp's `deci` architecture: the same graph,
    /// tensor names and RoPE permutation as `llama`, with per-layer arrays for three sizes.
    pub fn to_gguf(&self) -> Result<(&'static str, GgufMetadata), ConfigError> {
        if self.arch == ArchId::Phi3 {
            let l0 = self.layers.first();
            // llama.cpp's phi3 has one size per model and an output projection of
            // [hidden, hidden].
            if !self.is_uniform()
                || l0.is_some_and(|l| l.num_heads * self.head_dim != self.hidden_size)
            {
                return Err(ConfigError::Field {
                    field: "phi3".into(),
                    message: "llama.cpp's phi3 architecture needs layers of one size with \
                              heads × head_dim = hidden_size"
                        .into(),
                });
            }
        }
        let phi3_window = self
            .layers
            .iter()
            .find_map(|l| l.sliding_window)
            .filter(|_| self.arch == ArchId::Phi3);
        if phi3_window.is_some() && self.layers.iter().any(|l| l.sliding_window != phi3_window) {
            return Err(ConfigError::Field {
                field: "phi3.attention.sliding_window".into(),
                message: "llama.cpp's phi3 has one sliding window for every layer".into(),
            });
        }
        if let Some(w) = self
            .layers
            .iter()
            .find_map(|l| l.sliding_window)
            .filter(|_| phi3_window.is_none())
        {
            return Err(ConfigError::Field {
                field: "sliding_window".into(),
                message: format!(
                    "sliding-window attention ({w} positions) has no form in llama.cpp's llama \
                     architecture"
                ),
            });
        }
        let gguf_arch = match self.arch {
            a @ (ArchId::Qwen2 | ArchId::Qwen3) if !self.is_uniform() => {
                return Err(ConfigError::Field {
                    field: a.name().into(),
                    message: format!(
                        "layers of different sizes have no form in llama.cpp's {a} architecture"
                    ),
                });
            }
            ArchId::Qwen2 => "qwen2",
            ArchId::Qwen3 => "qwen3",
            ArchId::Phi3 => "phi3",
            _ => GGUF_ARCHS[usize::from(!self.is_uniform())],
        };
        // llama.cpp reads q/k/v biases only in qwen2, and q/k norms only in qwen3.
        if self.attention_qkv_bias && gguf_arch != "qwen2" {
            return Err(ConfigError::Field {
                field: "attention_bias".into(),
                message: format!(
                    "q/k/v biases have no form in llama.cpp's {gguf_arch} architecture"
                ),
            });
        }
        if self.qk_norm != (gguf_arch == "qwen3") {
            return Err(ConfigError::Field {
                field: "q_norm".into(),
                message: format!(
                    "llama.cpp's {gguf_arch} architecture {} per-head q/k norms",
                    if self.qk_norm { "has no" } else { "needs" }
                ),
            });
        }
        let key = |k: &str| format!("{gguf_arch}.{k}");
        let u32_of = |key: &str, v: usize| {
            u32::try_from(v).map_err(|_| ConfigError::Field {
                field: key.to_string(),
                message: format!("{v} does not fit a u32"),
            })
        };
        let scalar = |k: &str, v: usize| -> Result<(String, MetaValue), ConfigError> {
            let k = key(k);
            let v = MetaValue::U32(u32_of(&k, v)?);
            Ok((k, v))
        };
        // A scalar when uniform; otherwise a u32 array, one per layer (llama.cpp's
        // `get_key_or_arr` takes u32 or i32 elements).
        let per_layer =
            |k: &str, f: fn(&LlamaLayer) -> usize| -> Result<(String, MetaValue), ConfigError> {
                match self.layers.first() {
                    Some(l0) if self.is_uniform() => scalar(k, f(l0)),
                    _ => {
                        let k = key(k);
                        let items = self
                            .layers
                            .iter()
                            .map(|l| u32_of(&k, f(l)).map(MetaValue::U32))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok((k, MetaValue::Array(items)))
                    }
                }
            };
        let mut meta = vec![
            scalar("block_count", self.num_layers())?,
            scalar("context_length", self.max_position_embeddings)?,
            scalar("embedding_length", self.hidden_size)?,
            per_layer("feed_forward_length", |l| l.intermediate_size)?,
            per_layer("attention.head_count", |l| l.num_heads)?,
            per_layer("attention.head_count_kv", |l| l.num_kv_heads)?,
            (key("rope.freq_base"), MetaValue::F32(self.rope_theta)),
            (
                key("attention.layer_norm_rms_epsilon"),
                MetaValue::F32(self.rms_norm_eps),
            ),
        ];
        // Written explicitly: llama.cpp would otherwise take embedding_length / layer 0's heads.
        for k in ["attention.key_length", "attention.value_length"] {
            meta.push(scalar(k, self.head_dim)?);
        }
        meta.push(scalar("rope.dimension_count", self.rotary_dim)?);
        meta.push(scalar("vocab_size", self.vocab_size)?);
        // Llama 3's scaling goes in the `rope_freqs` tensor (`gguf_extra_tensors`).
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            meta.push((key("rope.scaling.type"), MetaValue::String("linear".into())));
            meta.push((key("rope.scaling.factor"), MetaValue::F32(factor)));
        }
        meta.extend(yarn_to_gguf(gguf_arch, self.rope_scaling)?);
        // As llama.cpp's converter writes it (llama.cpp itself computes Phi-3 without it).
        if let Some(w) = phi3_window {
            meta.push(scalar("attention.sliding_window", w)?);
        }
        Ok((gguf_arch, meta))
    }
}

/// llama.cpp's YaRN keys for a YaRN scaling (none for the rest). llama.cpp's LLaMA-family graphs read the type,
/// factor, original context and `rope.scaling.attn_factor` (a multiplier on its own
/// `0.1·ln(factor) + 1`), but not the `yarn_beta_*` keys: other betas have no form there.
fn yarn_to_gguf(
    gguf_arch: &str,
    scaling: RopeScaling,
) -> Result<Vec<(String, MetaValue)>, ConfigError> {
    let RopeScaling::Yarn {
        factor,
        original_context,
        beta_fast,
        beta_slow,
        attention_factor,
        truncate,
    } = scaling
    else {
        return Ok(Vec::new());
    };
    let key = |k: &str| format!("{gguf_arch}.rope.scaling.{k}");
    if (beta_fast, beta_slow, truncate) != (32.0, 1.0, true) {
        return Err(ConfigError::Field {
            field: "rope_scaling".into(),
            message: format!(
                "YaRN with beta_fast {beta_fast}, beta_slow {beta_slow}{} has no form in \
                 llama.cpp's {gguf_arch} (it computes beta_fast 32, beta_slow 1, truncated)",
                if truncate { "" } else { ", untruncated" }
            ),
        });
    }
    let context = u32::try_from(original_context).map_err(|_| ConfigError::Field {
        field: key("original_context_length"),
        message: format!("{original_context} does not fit a u32"),
    })?;
    let mut meta = vec![
        (key("type"), MetaValue::String("yarn".into())),
        (key("factor"), MetaValue::F32(factor)),
        (key("original_context_length"), MetaValue::U32(context)),
    ];
    let mscale = RopeScaling::yarn_mscale(factor as f64, 1.0) as f32;
    if attention_factor != mscale {
        meta.push((
            key("attn_factor"),
            MetaValue::F32(attention_factor / mscale),
        ));
    }
    Ok(meta)
}

/// A YaRN scaling from llama.cpp's keys (see [`yarn_to_gguf`]); keys llama.cpp does not read
/// for these architectures are refused unless they hold its defaults.
fn yarn_from_gguf(file: &GgufFile, gguf_arch: &str) -> Result<RopeScaling, ConfigError> {
    let key = |k: &str| format!("{gguf_arch}.rope.scaling.{k}");
    for (k, default) in [
        ("yarn_beta_fast", 32.0),
        ("yarn_beta_slow", 1.0),
        ("yarn_attn_factor", 1.0),
        ("yarn_log_multiplier", 0.0),
    ] {
        if let Some(v) = file.get_f32(&key(k)).optional()? {
            if v != default {
                return Err(ConfigError::Field {
                    field: key(k),
                    message: format!(
                        "{v}: llama.cpp does not read this key for {gguf_arch} (it computes \
                         {default}); refused rather than guessed"
                    ),
                });
            }
        }
    }
    let factor = file.get_f32(&key("factor"))?;
    let original_context = match file.get_u32(&key("original_context_length")).optional()? {
        Some(n) => n as usize,
        None => file.get_u32(&format!("{gguf_arch}.context_length"))? as usize,
    };
    let extra = file.get_f32(&key("attn_factor")).optional()?.unwrap_or(1.0);
    Ok(RopeScaling::Yarn {
        factor,
        original_context,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: RopeScaling::yarn_mscale(factor as f64, 1.0) as f32 * extra,
        truncate: true,
    })
}

/// GGUF architectures this family reads, by `general.architecture`: `deci` (DeciLM /
/// Nemotron-NAS) is llama.cpp's LLaMA graph with per-layer sizes.
/// `qwen2` is Qwen2's: the same tensors and keys, q/k/v biases, and Hugging Face's row order
/// (llama.cpp rotates it NeoX-style), so its Q/K rows are not permuted. `qwen3` is the same
/// with per-head q/k norms (`attn_q_norm`, `attn_k_norm`) and no biases. `phi3` stacks q/k/v in
/// `attn_qkv` and gate/up in `ffn_up` ([`LlamaConfig::gguf_fused_tensors`]), NeoX RoPE.
pub const GGUF_ARCHS: [&str; 5] = ["llama", "deci", "qwen2", "qwen3", "phi3"];

/// A per-layer size of a `deci` (or `llama`) file: a scalar for every layer, or an array of
/// `layers` integers, as llama.cpp's `get_key_or_arr` reads it. `None` when absent.
fn per_layer(file: &GgufFile, key: &str, layers: usize) -> Result<Option<Vec<usize>>, ConfigError> {
    let bad = |message: String| ConfigError::Field {
        field: key.to_string(),
        message,
    };
    match file.get(key) {
        None => Ok(None),
        Some(MetaValue::Array(items)) => {
            if items.len() != layers {
                return Err(bad(format!(
                    "an array of {} sizes, but block_count is {layers} (one size per layer)",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_int()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(|n| n as usize)
                        .ok_or_else(|| {
                            let got = v
                                .as_int()
                                .map_or(v.type_name().to_string(), |n| n.to_string());
                            bad(format!(
                                "element {i} ({got}) is not an integer that fits a u32"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(_) => Ok(Some(vec![file.get_u32(key)? as usize; layers])),
    }
}

impl LlamaConfig {
    /// The config of a GGUF file of this family (`llama.*` or `deci.*` metadata; tied head,
    /// q/k/v biases and tokens from the file's tensors and tokenizer), validated.
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, ConfigError> {
        let arch = file.get_str("general.architecture")?;
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| file.get_u32(&key(k)).map(|v| v as usize);
        let hidden = u("embedding_length")?;
        let n_layers = u("block_count")?;
        // Every layer has at least its norms in the file: a larger count is not to be believed (and
        // is not allocated for).
        if n_layers > file.tensors.len() {
            return Err(ConfigError::Field {
                field: key("block_count"),
                message: format!(
                    "{n_layers} layers, but the file holds {} tensors",
                    file.tensors.len()
                ),
            });
        }
        let missing = |k: &str| {
            ConfigError::from(GgufError::MissingKey {
                path: file.path.clone(),
                key: key(k),
            })
        };
        let ff = per_layer(file, &key("feed_forward_length"), n_layers)?
            .ok_or_else(|| missing("feed_forward_length"))?;
        let heads = per_layer(file, &key("attention.head_count"), n_layers)?
            .ok_or_else(|| missing("attention.head_count"))?;
        let kv_heads = per_layer(file, &key("attention.head_count_kv"), n_layers)?
            .unwrap_or_else(|| heads.clone());
        // llama.cpp's default key_length divides by layer 0's head count.
        let head_dim = match (u("attention.key_length").optional()?, heads.first()) {
            (Some(v), _) => v,
            (None, Some(&h)) if h > 0 => hidden / h,
            (None, _) => 0,
        };
        let vocab = match u("vocab_size").optional()? {
            Some(v) => v,
            None => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let theta = file
            .get_f32(&key("rope.freq_base"))
            .optional()?
            .unwrap_or(10000.0);
        // llama.cpp's RoPE scaling: Llama 3's per-frequency factors in a `rope_freqs` tensor,
        // or a scaling type.
        let mut rope_scaling = match file.get_str(&key("rope.scaling.type")).optional()? {
            Some("none") | None => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: file.get_f32(&key("rope.scaling.factor"))?,
            },
            Some("yarn") => yarn_from_gguf(file, arch)?,
            Some(t) => {
                return Err(ConfigError::Field {
                    field: key("rope.scaling.type"),
                    message: format!(
                        "'{t}' is not supported in GGUF import yet (none, linear, yarn)"
                    ),
                })
            }
        };
        if let Some(info) = file.tensor("rope_freqs.weight") {
            let bad = |message: String| ConfigError::Field {
                field: "rope_freqs.weight".into(),
                message,
            };
            if rope_scaling != RopeScaling::None {
                return Err(bad(
                    "given beside rope.scaling.type: give one of the two".into()
                ));
            }
            let factors = file.dequantize(info)?;
            rope_scaling = llama3_from_factors(&factors, theta, head_dim).map_err(bad)?;
        }
        let rotary_dim = match u("rope.dimension_count").optional()? {
            Some(rot) if rot != head_dim && arch != "phi3" => {
                return Err(ConfigError::Field {
                    field: key("rope.dimension_count"),
                    message: format!(
                        "partial rotary ({rot} of {head_dim}) is supported for phi3 only"
                    ),
                });
            }
            Some(rot) => rot,
            None => head_dim,
        };
        let phi3_window = match file.get_u32(&key("attention.sliding_window")).optional()? {
            Some(w) if arch == "phi3" && w > 0 => Some(w as usize),
            _ => None,
        };
        let layers = (0..n_layers)
            .map(|i| LlamaLayer {
                intermediate_size: ff[i],
                num_heads: heads[i],
                num_kv_heads: kv_heads[i],
                // llama.cpp's `llama` graph has no sliding window; Phi-3's config has one for
                // every layer, which the converter records.
                sliding_window: phi3_window,
            })
            .collect();
        let c = LlamaConfig {
            // A `deci` file is a LLaMA graph with per-layer sizes.
            arch: match arch {
                "qwen2" => ArchId::Qwen2,
                "qwen3" => ArchId::Qwen3,
                "phi3" => ArchId::Phi3,
                _ => ArchId::Llama,
            },
            vocab_size: vocab,
            hidden_size: hidden,
            layers,
            head_dim,
            rotary_dim,
            rope_theta: theta,
            rope_scaling,
            rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            max_position_embeddings: u("context_length").optional()?.unwrap_or(2048),
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            attention_qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: file.tensor("blk.0.attn_q_norm.weight").is_some(),
            bos_token_id: file.get_u32("tokenizer.ggml.bos_token_id").optional()?,
            eos_token_id: file.get_u32("tokenizer.ggml.eos_token_id").optional()?,
        };
        c.validate().map_err(|m| ConfigError::Field {
            field: key("*"),
            message: m,
        })?;
        Ok(c)
    }
}

/// Llama 3's RoPE factors as llama.cpp's converter writes them in `rope_freqs`: per frequency,
/// what its inverse frequency is divided by (1 for short wavelengths, `factor` for long ones,
/// smoothed between).
pub fn llama3_rope_factors(theta: f32, head_dim: usize, scaling: RopeScaling) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_context,
    } = scaling
    else {
        return None;
    };
    let (factor, low, high, old) = (
        factor as f64,
        low as f64,
        high as f64,
        original_context as f64,
    );
    let d = head_dim as f32;
    Some(
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0f32 / theta.powf((2 * i) as f32 / d);
                let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                if wavelen < old / high {
                    1.0
                } else if wavelen > old / low {
                    factor as f32
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect(),
    )
}

/// The Llama 3 scaling whose factors `rope_freqs` holds. The factors fix `factor` and the
/// smoothed band's line, which determines the band edges only up to a common scale of
/// `low_freq_factor`, `high_freq_factor` and `original_max_position_embeddings`: this takes
/// `low_freq_factor = 1` (as every Llama 3 release does) and checks that the result reproduces
/// every factor.
pub(crate) fn llama3_from_factors(
    f: &[f32],
    theta: f32,
    head_dim: usize,
) -> Result<RopeScaling, String> {
    if f.len() != head_dim / 2 {
        return Err(format!(
            "{} factors, but head_dim {head_dim} has {} frequencies",
            f.len(),
            head_dim / 2
        ));
    }
    let factor = f.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(factor.is_finite() && factor >= 1.0) || f.iter().any(|x| x.is_nan() || *x < 1.0) {
        return Err("factors must be finite and at least 1".into());
    }
    if factor == 1.0 {
        return Ok(RopeScaling::None);
    }
    // Points of the smoothed band: s = (1/f - 1/factor) / (1 - 1/factor) = old/wavelen - 1,
    // scaled by 1/(high - 1): solve s·(high - 1) = old·x - 1 with x = 1/wavelen.
    let d = head_dim as f32;
    let (k, inv_k) = (factor as f64, 1.0 / factor as f64);
    let band: Vec<(f64, f64)> = f
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 1.0 + 1e-6 && x < factor - 1e-6 * factor)
        .map(|(i, &x)| {
            let freq = 1.0f32 / theta.powf((2 * i) as f32 / d);
            let s = (1.0 / x as f64 - inv_k) / (1.0 - inv_k);
            (freq as f64 / (2.0 * std::f64::consts::PI), s)
        })
        .collect();
    let (Some(&(x1, s1)), Some(&(x2, s2))) = (band.first(), band.last()) else {
        return Err("fewer than two smoothed factors: Llama 3's band edges cannot be read".into());
    };
    if band.len() < 2 || (x2 - x1).abs() < f64::EPSILON {
        return Err("fewer than two smoothed factors: Llama 3's band edges cannot be read".into());
    }
    // old·x_i - (high - 1)·s_i = 1 for both points.
    let det = -x1 * s2 + x2 * s1;
    let old = (-s2 + s1) / det;
    let span = (x1 - x2) / det;
    let (old, high) = (old.round(), 1.0 + span);
    let high = ((high * 1e4).round() / 1e4) as f32;
    if !(old >= 1.0 && old <= u32::MAX as f64 && high > 1.0) {
        return Err(format!(
            "the factors give no Llama 3 scaling (original context {old}, high_freq_factor {high})"
        ));
    }
    let scaling = RopeScaling::Llama3 {
        factor: k as f32,
        low_freq_factor: 1.0,
        high_freq_factor: high,
        original_context: old as usize,
    };
    let again = llama3_rope_factors(theta, head_dim, scaling).unwrap_or_default();
    if let Some((i, (a, b))) = f
        .iter()
        .zip(&again)
        .enumerate()
        .find(|(_, (a, b))| (*a - *b).abs() > 1e-4 * a.abs())
    {
        return Err(format!(
            "factor {i} ({a}) is not Llama 3's {b} for factor {k}, original context {old}, \
             high_freq_factor {high}"
        ));
    }
    Ok(scaling)
}

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
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
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
/// Each layer's own head counts apply.
pub fn rope_permuted_heads(hf_name: &str, cfg: &LlamaConfig) -> Option<usize> {
    // llama.cpp runs qwen2, qwen3 and phi3 with NeoX RoPE, on Hugging Face's own row order.
    if matches!(cfg.arch, ArchId::Qwen2 | ArchId::Qwen3 | ArchId::Phi3) {
        return None;
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let layer = cfg.layers.get(i.parse::<usize>().ok()?)?;
    if rest.starts_with("self_attn.q_proj.") {
        Some(layer.num_heads)
    } else if rest.starts_with("self_attn.k_proj.") {
        Some(layer.num_kv_heads)
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
    permuted_row_sources(heads, head_dim)
        .flat_map(|src| &w[src * cols..(src + 1) * cols])
        .copied()
        .collect()
}

/// For each row of [`permute_rows`]' output, the input row it is: an exporter writes those
/// rows in this order from the store instead of building the permuted copy.
pub fn permuted_row_sources(heads: usize, head_dim: usize) -> impl Iterator<Item = usize> {
    let half = head_dim / 2;
    (0..heads * head_dim).map(move |r| {
        let (h, d) = (r / head_dim, r % head_dim);
        // An odd head_dim's last row has no pair and stays.
        if d < 2 * half {
            h * head_dim + (d % 2) * half + d / 2
        } else {
            r
        }
    })
}

// ---- Hugging Face config.json ----

/// A `config.json` of the LLaMA family as transformers reads it, in the Hub's form (`rope_theta`
/// and `rope_scaling`) or transformers 5's (`rope_parameters`). Keys that change nothing shrink
/// computes are ignored.
#[derive(Deserialize)]
struct LlamaJson {
    hidden_size: usize,
    num_hidden_layers: usize,
    intermediate_size: PerLayer,
    num_attention_heads: PerLayer,
    num_key_value_heads: Option<PerLayer>,
    vocab_size: usize,
    head_dim: Option<usize>,
    partial_rotary_factor: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<RopeJson>,
    rope_parameters: Option<RopeJson>,
    hidden_act: Option<String>,
    mlp_bias: Option<bool>,
    attention_bias: Option<bool>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<LayerType>>,
    #[serde(default, deserialize_with = "token_id")]
    bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// The config of a `config.json` of this family (`id` is its `model_type`), before
    /// [`LlamaConfig::validate`]. Fields whose value shrink does not compute are refused by name.
    pub(crate) fn from_hf(
        id: ArchId,
        json: &Map<String, Value>,
    ) -> Result<LlamaConfig, ConfigError> {
        let c: LlamaJson = hf_json::read(json)?;
        // Bounded before the per-layer lists are made from it.
        let n_layers = bounded(
            "num_hidden_layers",
            c.num_hidden_layers,
            crate::limits::MAX_LAYERS,
        )?;
        let inter = c
            .intermediate_size
            .per_layer("intermediate_size", n_layers)?;
        let heads = c
            .num_attention_heads
            .per_layer("num_attention_heads", n_layers)?;
        let kv_heads = match &c.num_key_value_heads {
            Some(kv) => kv.per_layer("num_key_value_heads", n_layers)?,
            None => heads.clone(),
        };
        let head_dim = match (c.head_dim, heads.first()) {
            (Some(h), _) => h,
            // transformers' default; per-layer heads give no single quotient.
            (None, _) if heads.windows(2).any(|w| w[0] != w[1]) => {
                return Err(field_err(
                    "head_dim",
                    "missing; required when num_attention_heads differs between layers",
                ));
            }
            (None, Some(&h)) if h > 0 => c.hidden_size / h,
            (None, _) => 0,
        };
        let windows = sliding_windows_from_hf(id, &c, n_layers)?;
        let layers = (0..n_layers)
            .map(|i| LlamaLayer {
                intermediate_size: inter[i],
                num_heads: heads[i],
                num_kv_heads: kv_heads[i],
                sliding_window: windows[i],
            })
            .collect();
        // transformers 5 reads it from `rope_parameters`, else from the top level; only
        // Phi-3's attention applies it (to the first `int(head_dim · factor)` features).
        let (field, factor) = match c
            .rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
        {
            Some(f) => ("rope_parameters.partial_rotary_factor", f),
            None => (
                "partial_rotary_factor",
                c.partial_rotary_factor.map_or(1.0, f64::from),
            ),
        };
        if factor != 1.0 && id != ArchId::Phi3 {
            return Err(field_err(
                field,
                "only 1.0 is supported (partial rotary is Phi-3's)",
            ));
        }
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(field_err(field, format!("{factor} is not in (0, 1]")));
        }
        let rotary_dim = (head_dim as f64 * factor) as usize;
        let (rope_theta, rope_scaling) = rope_from_hf(
            id,
            c.rope_theta,
            c.rope_scaling.as_ref(),
            c.rope_parameters.as_ref(),
            c.max_position_embeddings,
        )?;
        if c.mlp_bias == Some(true) {
            return Err(field_err("mlp_bias", "MLP biases are not supported"));
        }
        let act = c.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(field_err(
                "hidden_act",
                format!("'{act}' is not supported (silu)"),
            ));
        }
        let is_qwen2 = id == ArchId::Qwen2;
        Ok(LlamaConfig {
            arch: id,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            layers,
            head_dim,
            rotary_dim,
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: c.max_position_embeddings.unwrap_or(2048),
            // transformers' defaults: Qwen2 and Qwen3 untied, Qwen2 alone with q/k/v biases.
            tie_word_embeddings: c
                .tie_word_embeddings
                .unwrap_or(!matches!(id, ArchId::Qwen2 | ArchId::Qwen3 | ArchId::Phi3)),
            attention_qkv_bias: c.attention_bias.unwrap_or(is_qwen2),
            qk_norm: id == ArchId::Qwen3,
            bos_token_id: c.bos_token_id,
            eos_token_id: c.eos_token_id,
        })
    }

    /// The `config.json` transformers loads this config from (`torch_dtype` as it names the
    /// weights' type), or why it cannot be written for transformers.
    pub fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        if self.qk_norm != (self.arch == ArchId::Qwen3) {
            return Err(format!(
                "a {} graph {} per-head q/k norms cannot be written for transformers",
                self.arch,
                if self.qk_norm { "with" } else { "without" }
            ));
        }
        let class = match (self.arch, self.attention_qkv_bias) {
            (ArchId::Llama, false) => "LlamaForCausalLM",
            (ArchId::Qwen3, false) => "Qwen3ForCausalLM",
            (ArchId::Phi3, false) => "Phi3ForCausalLM",
            (ArchId::Mistral, false) => "MistralForCausalLM",
            (ArchId::Qwen2, true) => "Qwen2ForCausalLM",
            (ArchId::Qwen2, false) => {
                return Err(
                    "a qwen2 graph without q/k/v biases cannot be written as Qwen2ForCausalLM"
                        .into(),
                )
            }
            (a, true) => {
                return Err(format!(
                    "a {a} graph with q/k/v biases (and none on o_proj) cannot be written for \
                     transformers"
                ))
            }
            (a, false) => return Err(format!("{a} is not of the LLaMA family")),
        };
        let mut m = Map::new();
        m.insert("architectures".into(), json!([class]));
        m.insert("model_type".into(), json!(self.arch.name()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        // Uniform layers write integers, as transformers expects; otherwise one entry per layer.
        let per_layer = |f: fn(&LlamaLayer) -> usize| match self.layers.first() {
            Some(l0) if self.is_uniform() => json!(f(l0)),
            _ => json!(self.layers.iter().map(f).collect::<Vec<_>>()),
        };
        m.insert(
            "intermediate_size".into(),
            per_layer(|l| l.intermediate_size),
        );
        m.insert("num_hidden_layers".into(), json!(self.num_layers()));
        m.insert("num_attention_heads".into(), per_layer(|l| l.num_heads));
        m.insert("num_key_value_heads".into(), per_layer(|l| l.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        if self.rotary_dim != self.head_dim {
            m.insert(
                "partial_rotary_factor".into(),
                json!(self.rotary_dim as f64 / self.head_dim as f64),
            );
        }
        m.insert("hidden_act".into(), json!("silu"));
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert("rms_norm_eps".into(), f32_json(self.rms_norm_eps));
        m.insert("rope_theta".into(), f32_json(self.rope_theta));
        m.insert("rope_scaling".into(), rope_scaling_to_hf(self.rope_scaling));
        let windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.sliding_window).collect();
        let window = windows.iter().flatten().next().copied();
        if windows.iter().flatten().any(|&w| Some(w) != window) {
            return Err("layers with sliding windows of different sizes cannot be written".into());
        }
        match self.arch {
            ArchId::Llama => {
                if window.is_some() {
                    return Err("a llama graph with a sliding window cannot be written".into());
                }
                m.insert("attention_bias".into(), json!(false));
                m.insert("mlp_bias".into(), json!(false));
            }
            ArchId::Mistral | ArchId::Phi3 => {
                if windows.iter().any(|w| w.is_none()) && window.is_some() {
                    return Err(format!(
                        "a {} graph windowed in some layers only cannot be written",
                        self.arch
                    ));
                }
                m.insert("sliding_window".into(), json!(window));
            }
            _ => {
                if self.arch == ArchId::Qwen3 {
                    m.insert("attention_bias".into(), json!(false));
                }
                m.insert("use_sliding_window".into(), json!(window.is_some()));
                m.insert("sliding_window".into(), json!(window));
                let first = windows.iter().position(Option::is_some);
                m.insert(
                    "max_window_layers".into(),
                    json!(first.unwrap_or(self.num_layers())),
                );
                m.insert(
                    "layer_types".into(),
                    layer_types_json(windows.iter().map(Option::is_some)),
                );
            }
        }
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("bos_token_id".into(), token_json(self.bos_token_id));
        m.insert("eos_token_id".into(), token_json(self.eos_token_id));
        m.insert("torch_dtype".into(), json!(torch_dtype));
        m.insert("use_cache".into(), json!(true));
        Ok(m)
    }
}

/// RoPE's base and scaling from either form of `config.json`: transformers 5's
/// `rope_parameters: {rope_type, rope_theta, factor, …}`, or the Hub's top-level `rope_theta`
/// with `rope_scaling: {rope_type (or type), factor, …}` (null or absent: none).
/// `max_positions` is `max_position_embeddings`, the context a scaling starts from by default.
pub(crate) fn rope_from_hf(
    id: ArchId,
    rope_theta: Option<f32>,
    rope_scaling: Option<&RopeJson>,
    rope_parameters: Option<&RopeJson>,
    max_positions: Option<usize>,
) -> Result<(Option<f32>, RopeScaling), ConfigError> {
    match (rope_parameters, rope_scaling) {
        (Some(_), Some(_)) => Err(field_err(
            "rope_scaling",
            "given beside rope_parameters: give one of the two forms",
        )),
        (Some(p), None) => {
            let (theta, scaling) = rope_object(id, "rope_parameters", p, max_positions)?;
            Ok((theta.or(rope_theta), scaling))
        }
        (None, Some(s)) => {
            let (_, scaling) = rope_object(id, "rope_scaling", s, max_positions)?;
            Ok((rope_theta, scaling))
        }
        (None, None) => Ok((rope_theta, RopeScaling::None)),
    }
}

/// The base (when the object gives one) and scaling of one RoPE object of `config.json`
/// (`rope_parameters`, one of its per-layer-type entries, or the Hub's `rope_scaling`), named
/// `field` in errors.
pub(crate) fn rope_object(
    id: ArchId,
    field: &str,
    m: &RopeJson,
    max_positions: Option<usize>,
) -> Result<(Option<f32>, RopeScaling), ConfigError> {
    let err = |k: &str, message: String| field_err(format!("{field}.{k}"), message);
    // A required factor: present, finite and positive.
    let need = |k: &str, v: Option<f64>| -> Result<f64, ConfigError> {
        match v {
            None => Err(err(k, "missing".into())),
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(err(k, format!("{v} must be positive"))),
        }
    };
    // The context the scaling starts from: the object's, else `max_position_embeddings`, as
    // transformers standardises it.
    let original_context = || -> Result<usize, ConfigError> {
        let key = "original_max_position_embeddings";
        match (m.original_max_position_embeddings, max_positions) {
            (Some(v), _) if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => Ok(v as usize),
            (Some(v), _) => Err(err(key, format!("{v} is not a positive integer"))),
            (None, Some(n)) if n >= 1 && n <= u32::MAX as usize => Ok(n),
            (None, Some(n)) => Err(field_err(
                "max_position_embeddings",
                format!("{n} is not a positive integer of 32 bits"),
            )),
            (None, None) => Err(field_err(
                "max_position_embeddings",
                "missing (the context RoPE scaling starts from)",
            )),
        }
    };
    let (type_key, kind) = match (&m.rope_type, &m.kind) {
        (Some(k), _) => ("rope_type", k.as_str()),
        (None, Some(k)) => ("type", k.as_str()),
        (None, None) => return Err(err("rope_type", "missing".into())),
    };
    // transformers' Phi-3 takes `longrope` (and reads `yarn` and `su` as it) and nothing else.
    if id == ArchId::Phi3 && kind != "default" {
        return Err(err(
            type_key,
            format!(
                "'{kind}' is not supported for phi3 (default; its longrope is not implemented)"
            ),
        ));
    }
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor", m.factor)? as f32,
        },
        "llama3" => {
            let context = original_context()?;
            let low = need("low_freq_factor", m.low_freq_factor)?;
            let high = need("high_freq_factor", m.high_freq_factor)?;
            if high <= low {
                return Err(err(
                    "high_freq_factor",
                    format!("{high} must exceed low_freq_factor ({low})"),
                ));
            }
            RopeScaling::Llama3 {
                factor: need("factor", m.factor)? as f32,
                low_freq_factor: low as f32,
                high_freq_factor: high as f32,
                original_context: context,
            }
        }
        "yarn" => {
            let factor = need("factor", m.factor)?;
            // transformers: a value that is absent, null or zero takes the default.
            let or_default = |k: &str, v: Option<f64>, default: f64| match v {
                None | Some(0.0) => Ok(default),
                Some(_) => need(k, v),
            };
            let attention_factor = match (m.attention_factor, m.mscale, m.mscale_all_dim) {
                (Some(_), _, _) => need("attention_factor", m.attention_factor)?,
                (None, Some(a), Some(b)) if a != 0.0 && b != 0.0 => {
                    RopeScaling::yarn_mscale(factor, a) / RopeScaling::yarn_mscale(factor, b)
                }
                _ => RopeScaling::yarn_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor: factor as f32,
                original_context: original_context()?,
                beta_fast: or_default("beta_fast", m.beta_fast, 32.0)? as f32,
                beta_slow: or_default("beta_slow", m.beta_slow, 1.0)? as f32,
                attention_factor: attention_factor as f32,
                truncate: m.truncate.unwrap_or(true),
            }
        }
        other => {
            return Err(err(
                type_key,
                format!("'{other}' is not supported (default, linear, llama3, yarn)"),
            ))
        }
    };
    Ok((m.rope_theta, scaling))
}

/// `rope_scaling` as the Hub's configs write it (transformers 4 and 5 both read this form).
pub(crate) fn rope_scaling_to_hf(s: RopeScaling) -> Value {
    match s {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "factor": f32_json(factor)})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => json!({
            "rope_type": "llama3",
            "factor": f32_json(factor),
            "low_freq_factor": f32_json(low_freq_factor),
            "high_freq_factor": f32_json(high_freq_factor),
            "original_max_position_embeddings": original_context,
        }),
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        } => {
            let mut m = json!({
                "rope_type": "yarn",
                "factor": f32_json(factor),
                "original_max_position_embeddings": original_context,
                "beta_fast": f32_json(beta_fast),
                "beta_slow": f32_json(beta_slow),
                "attention_factor": f32_json(attention_factor),
            });
            if !truncate {
                m["truncate"] = json!(false);
            }
            m
        }
    }
}

/// Each layer's sliding window as transformers reads the config: Mistral's and Phi-3's
/// `sliding_window` applies to every layer; Qwen2's and Qwen3's, when `use_sliding_window` is set, to the layers
/// `layer_types` marks `sliding_attention` (by default those from `max_window_layers` on).
fn sliding_windows_from_hf(
    id: ArchId,
    c: &LlamaJson,
    layers: usize,
) -> Result<Vec<Option<usize>>, ConfigError> {
    match id {
        ArchId::Mistral | ArchId::Phi3 => {
            Ok(vec![window("sliding_window", c.sliding_window)?; layers])
        }
        ArchId::Qwen2 | ArchId::Qwen3 => {
            let w = if c.use_sliding_window.unwrap_or(false) {
                window("sliding_window", c.sliding_window)?
            } else {
                None
            };
            let sliding = match &c.layer_types {
                Some(types) => sliding_flags(types, layers)?,
                None => {
                    let from = c.max_window_layers.unwrap_or(28);
                    (0..layers).map(|i| i >= from).collect()
                }
            };
            Ok(sliding.into_iter().map(|s| w.filter(|_| s)).collect())
        }
        // Llama and the others have no sliding window in transformers.
        _ => Ok(vec![None; layers]),
    }
}

/// The LLaMA family in the registry ([`ArchId::family`]).
pub(crate) static FAMILY: FamilyDef = FamilyDef {
    gguf: Some(GgufForm {
        archs: &GGUF_ARCHS,
        read: |f| Ok(Box::new(LlamaConfig::from_gguf(f)?)),
    }),
    from_hf: |id, c| Ok(Box::new(LlamaConfig::from_hf(id, c)?)),
    from_graph: |g| Ok(Box::new(LlamaConfig::from_graph(g)?)),
};

impl Architecture for LlamaConfig {
    fn id(&self) -> ArchId {
        self.arch
    }
    fn validate(&self) -> Result<(), String> {
        LlamaConfig::validate(self)
    }
    fn build(&self) -> Graph {
        LlamaConfig::build(self)
    }
    fn param_count(&self) -> Result<u64, String> {
        LlamaConfig::param_count(self)
    }
    fn layers(&self) -> (usize, &'static str) {
        (self.num_layers(), "num_hidden_layers")
    }
    decoder_config_fields!();
    fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        LlamaConfig::to_hf(self, torch_dtype)
    }
    fn fused_tensors(&self) -> Vec<FusedTensor> {
        LlamaConfig::fused_tensors(self)
    }
    fn to_gguf(&self) -> Result<(&'static str, GgufMetadata), ConfigError> {
        LlamaConfig::to_gguf(self)
    }
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gguf_name(hf)
    }
    fn gguf_permuted_heads(&self, hf: &str) -> Option<usize> {
        rope_permuted_heads(hf, self)
    }
    /// Llama 3's `rope_freqs`.
    fn gguf_extra_tensors(&self) -> Vec<(String, Vec<f32>)> {
        llama3_rope_factors(self.rope_theta, self.head_dim, self.rope_scaling)
            .map(|f| vec![("rope_freqs.weight".to_string(), f)])
            .unwrap_or_default()
    }
    fn gguf_fused_tensors(&self) -> Vec<FusedTensor> {
        LlamaConfig::gguf_fused_tensors(self)
    }
}
