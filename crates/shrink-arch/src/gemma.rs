//! Gemma 2 and Gemma 3 (text, `gemma3_text`): RMSNorms scaled by `(1 + w)`, the embedding
//! scaled by √hidden, norms before and after both attention and the MLP, GeGLU with tanh GELU,
//! scores scaled by `query_pre_attn_scalar^-0.5`, and local layers (a sliding window) between
//! global ones. Gemma 2 soft-caps the attention scores and the logits; Gemma 3 has per-head q/k
//! norms instead and gives its local layers their own RoPE base.
//!
//! The IR holds each norm's effective weight `1 + w` (as llama.cpp's converter stores it):
//! [`GemmaConfig::NORM_OFFSET`] is added on import and taken off on export, so every pass sees
//! an ordinary RMSNorm.

use shrink_ir::{Activation, AttentionSpec, Graph, NormKind, Op, Rope, RopeScaling};

use serde_json::{json, Map, Value};

use crate::builder::{Builder, Meta};
use crate::family::{decoder_config_fields, Architecture, FamilyDef, GgufForm};
use crate::graph_read::*;
use crate::hf_json::{
    self, bounded, f32_json, field_err, layer_types_json, nullable, sliding_flags, token_id,
    token_json, window, LayerType, RopeJson,
};
use crate::llama::GgufMetadata;
use crate::llama::{rope_from_hf, rope_object};
use crate::{ArchId, ConfigError};
use serde::Deserialize;

/// The normalised config of a Gemma 2 or Gemma 3 text model (layers of one size).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// Gemma 2 or Gemma 3.
    pub arch: ArchId,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// One entry per decoder layer: whether it is local (`sliding_attention`).
    pub sliding: Vec<bool>,
    pub sliding_window: usize,
    /// RoPE of the global layers (`rope_theta`, `rope_scaling`).
    pub rope_global: (f32, RopeScaling),
    /// RoPE of the local layers (`rope_local_base_freq`).
    pub rope_local: (f32, RopeScaling),
    /// Scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f32,
    /// Gemma 2's soft-caps: of the scaled attention scores, and of the logits.
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The four norms of a decoder layer, in the order they apply.
const LAYER_NORMS: [&str; 4] = [
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

impl GemmaConfig {
    /// What checkpoints store of a norm's weight is the IR's minus this.
    pub const NORM_OFFSET: f32 = 1.0;

    /// Whether a checkpoint tensor is a norm weight stored as `w` of `(1 + w)`.
    pub fn is_offset_norm(name: &str) -> bool {
        name.ends_with("norm.weight")
    }

    pub fn num_layers(&self) -> usize {
        self.sliding.len()
    }

    fn score_scale(&self) -> f32 {
        self.query_pre_attn_scalar.powf(-0.5)
    }

    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{dim, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
        dim("vocab_size", self.vocab_size, MAX_VOCAB)?;
        dim("hidden_size", self.hidden_size, MAX_WIDTH)?;
        dim("intermediate_size", self.intermediate_size, MAX_WIDTH)?;
        dim("num_hidden_layers", self.num_layers(), MAX_LAYERS)?;
        dim("num_attention_heads", self.num_heads, MAX_HEADS)?;
        dim("num_key_value_heads", self.num_kv_heads, MAX_HEADS)?;
        dim("head_dim", self.head_dim, MAX_HEAD_DIM)?;
        dim(
            "max_position_embeddings",
            self.max_position_embeddings,
            crate::limits::MAX_CONTEXT,
        )?;
        dim(
            "sliding_window",
            self.sliding_window,
            crate::limits::MAX_CONTEXT,
        )?;
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        for (field, (theta, _)) in [
            ("rope_theta", self.rope_global),
            ("rope_local_base_freq", self.rope_local),
        ] {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(format!("{field} ({theta}) must be positive"));
            }
        }
        let q = self.query_pre_attn_scalar;
        if !(q.is_finite() && q > 0.0) {
            return Err(format!("query_pre_attn_scalar ({q}) must be positive"));
        }
        for (field, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(c) = cap.filter(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(format!("{field} ({c}) must be positive"));
            }
        }
        crate::limits::epsilon("rms_norm_eps", self.rms_norm_eps)?;
        for (theta, scaling) in [self.rope_global, self.rope_local] {
            Rope {
                theta,
                dim: self.head_dim,
                scaling,
            }
            .check(self.head_dim)
            .map_err(|m| format!("rope_scaling: {m}"))?;
        }
        self.param_count()?;
        Ok(())
    }

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
        let e = b.op(
            Op::Embedding {
                weight: embed.clone(),
            },
            &[tokens],
        );
        let mut h = b.op(
            Op::Scale {
                factor: (d as f32).sqrt(),
            },
            &[e],
        );
        let norm = |b: &mut Builder, x, name: String, n: usize, group: Option<usize>| {
            let weight = b.param(&name, vec![n]);
            b.op(
                Op::Norm {
                    kind: NormKind::Rms,
                    eps: c.rms_norm_eps,
                    weight,
                    bias: None,
                    group,
                },
                &[x],
            )
        };
        for (i, &local) in c.sliding.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (theta, scaling) = if local { c.rope_local } else { c.rope_global };
            let attn = AttentionSpec {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                rope: Some(Rope {
                    theta,
                    dim: hd,
                    scaling,
                }),
                causal: true,
                window: local.then_some(c.sliding_window),
                scale: Some(c.score_scale()),
                softcap: c.attn_logit_softcapping,
            };
            let [pre_attn, post_attn, pre_mlp, post_mlp] =
                LAYER_NORMS.map(|n| format!("{p}.{n}.weight"));
            let x = norm(&mut b, h, pre_attn, d, None);
            let (q_rows, kv_rows) = (c.num_heads * hd, c.num_kv_heads * hd);
            let q = b.linear(x, &format!("{p}.self_attn.q_proj"), q_rows, d, false);
            let k = b.linear(x, &format!("{p}.self_attn.k_proj"), kv_rows, d, false);
            let (q, k) = if c.arch == ArchId::Gemma3 {
                (
                    norm(
                        &mut b,
                        q,
                        format!("{p}.self_attn.q_norm.weight"),
                        hd,
                        Some(hd),
                    ),
                    norm(
                        &mut b,
                        k,
                        format!("{p}.self_attn.k_norm.weight"),
                        hd,
                        Some(hd),
                    ),
                )
            } else {
                (q, k)
            };
            let v = b.linear(x, &format!("{p}.self_attn.v_proj"), kv_rows, d, false);
            let a = b.op(Op::Attention(attn), &[q, k, v]);
            let o = b.linear(a, &format!("{p}.self_attn.o_proj"), d, q_rows, false);
            let o = norm(&mut b, o, post_attn, d, None);
            h = b.op(Op::Add, &[h, o]);
            let x = norm(&mut b, h, pre_mlp, d, None);
            let m = c.intermediate_size;
            let gate = b.linear(x, &format!("{p}.mlp.gate_proj"), m, d, false);
            let up = b.linear(x, &format!("{p}.mlp.up_proj"), m, d, false);
            let gate = b.op(Op::Activation(Activation::GeluTanh), &[gate]);
            let y = b.op(Op::Mul, &[gate, up]);
            let down = b.linear(y, &format!("{p}.mlp.down_proj"), d, m, false);
            let down = norm(&mut b, down, post_mlp, d, None);
            h = b.op(Op::Add, &[h, down]);
        }
        h = norm(&mut b, h, "model.norm.weight".into(), d, None);
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
                logit_softcap: c.final_logit_softcapping,
            },
        )
    }

    /// Reads the config back from a graph of this family (the inverse of
    /// [`GemmaConfig::build`]): sizes from the parameters, heads, windows, RoPEs and the score
    /// scale from the attention ops (local layers are the windowed ones).
    pub fn from_graph(g: &Graph) -> Result<GemmaConfig, String> {
        let arch = ArchId::of_graph(g)?;
        if !FAMILY.reads(arch) {
            return Err(format!("architecture '{arch}' is not of the Gemma family"));
        }
        let embed = "model.embed_tokens.weight";
        let (vocab, hidden) = param_2d(g, embed)?;
        let layers = count_layers(g, "model.layers.")?;
        let ops = ops_in_order(g)?;
        // Local and global layers differ in RoPE and window: the rebuilt graph checks the rest.
        let specs: Vec<AttentionSpec> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Attention(a) => Some(*a),
                _ => None,
            })
            .collect();
        if specs.len() != layers {
            return Err(format!("{} attention ops for {layers} layers", specs.len()));
        }
        let a0 = specs.first().ok_or("the graph has no decoder layers")?;
        let scale = a0.scale.ok_or("attention has no score scale")?;
        // query_pre_attn_scalar is an integer in every released config: read it back as one
        // when the scale is that integer's (the rebuilt graph is compared below).
        let q = 1.0 / (scale * scale);
        let q = if (q - q.round()).abs() < 1e-3 {
            q.round()
        } else {
            q
        };
        let rope_of = |local: bool| {
            specs
                .iter()
                .find(|s| s.window.is_some() == local)
                .and_then(|s| s.rope)
                .map(|r| (r.theta, r.scaling))
        };
        let window = specs.iter().find_map(|s| s.window);
        let (inter, _) = param_2d(g, "model.layers.0.mlp.gate_proj.weight")?;
        let tied = head_is_tied(g, embed)?;
        let final_cap = ops.iter().find_map(|op| match op {
            Op::SoftCap { cap } => Some(*cap),
            _ => None,
        });
        let c = GemmaConfig {
            arch,
            attn_logit_softcapping: a0.softcap,
            final_logit_softcapping: final_cap,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_heads: a0.heads,
            num_kv_heads: a0.kv_heads,
            head_dim: a0.head_dim,
            sliding: specs.iter().map(|s| s.window.is_some()).collect(),
            sliding_window: window.unwrap_or(4096),
            rope_global: rope_of(false).unwrap_or((1_000_000.0, RopeScaling::None)),
            rope_local: rope_of(true).unwrap_or((10_000.0, RopeScaling::None)),
            query_pre_attn_scalar: q,
            rms_norm_eps: norm_eps(&ops, NormKind::Rms)?,
            max_position_embeddings: meta_usize(g, "context_length")?
                .ok_or("meta 'context_length' is missing")?,
            tie_word_embeddings: tied,
            bos_token_id: meta_token(g, "bos_token_id")?,
            eos_token_id: meta_token(g, "eos_token_id")?,
        };
        c.validate()?;
        same_structure(g, &c.build(), arch.name())?;
        Ok(c)
    }

    /// The config of a `gemma3_text` `config.json`, in either form: transformers 5's
    /// `rope_parameters` with an entry per layer type, or the Hub's `rope_theta`,
    /// `rope_local_base_freq` and `rope_scaling` (global layers only). Local layers come from
    /// `layer_types`, or every `sliding_window_pattern`-th layer is global (default 6).
    pub(crate) fn from_hf(
        id: ArchId,
        json: &Map<String, Value>,
    ) -> Result<GemmaConfig, ConfigError> {
        let c: GemmaJson = hf_json::read(json)?;
        let gemma2 = id == ArchId::Gemma2;
        let n_layers = bounded(
            "num_hidden_layers",
            c.num_hidden_layers,
            crate::limits::MAX_LAYERS,
        )?;
        // Gemma 2 soft-caps by default (transformers' 50 and 30). Gemma 3 soft-caps only the
        // logits, when its config says so; transformers' Gemma 3 attention reads no cap.
        let cap = |given: Option<Option<f32>>, default: f32| match given {
            Some(cap) => cap,
            None => Some(default).filter(|_| gemma2),
        };
        let attn_cap = cap(c.attn_logit_softcapping, 50.0).filter(|_| gemma2);
        let final_cap = cap(c.final_logit_softcapping, 30.0);
        if c.use_bidirectional_attention == Some(true) {
            return Err(field_err(
                "use_bidirectional_attention",
                "only causal attention is supported",
            ));
        }
        if c.attention_bias == Some(true) {
            return Err(field_err(
                "attention_bias",
                "attention biases are not supported",
            ));
        }
        let act = c
            .hidden_activation
            .as_deref()
            .unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(field_err(
                "hidden_activation",
                format!("'{act}' is not supported (gelu_pytorch_tanh)"),
            ));
        }
        let sliding = match &c.layer_types {
            Some(types) => sliding_flags(types, n_layers)?,
            None => {
                let every = c
                    .sliding_window_pattern
                    .unwrap_or(if gemma2 { 2 } else { 6 });
                if every == 0 {
                    return Err(field_err("sliding_window_pattern", "must be at least 1"));
                }
                (0..n_layers).map(|i| (i + 1) % every != 0).collect()
            }
        };
        let max_positions = c.max_position_embeddings;
        let (rope_global, rope_local) = match &c.rope_parameters {
            // Gemma 2: one RoPE for every layer, in either form.
            params if gemma2 => {
                let params: Option<RopeJson> = params
                    .as_ref()
                    .map(|m| hf_json::read_at("rope_parameters", m))
                    .transpose()?;
                let (theta, scaling) = rope_from_hf(
                    id,
                    c.rope_theta,
                    c.rope_scaling.as_ref(),
                    params.as_ref(),
                    max_positions,
                )?;
                let rope = (theta.unwrap_or(10_000.0), scaling);
                (rope, rope)
            }
            Some(m) => {
                let per_type: RopePerLayerType = hf_json::read_at("rope_parameters", m)?;
                let entry = |t: &str, e: &Option<RopeJson>, default: f32| match e {
                    Some(o) => {
                        let field = format!("rope_parameters.{t}");
                        let (theta, s) = rope_object(id, &field, o, max_positions)?;
                        Ok::<_, ConfigError>((theta.unwrap_or(default), s))
                    }
                    None => Ok((default, RopeScaling::None)),
                };
                (
                    entry("full_attention", &per_type.full_attention, 1_000_000.0)?,
                    entry("sliding_attention", &per_type.sliding_attention, 10_000.0)?,
                )
            }
            // The Hub's form: `rope_theta` and `rope_scaling` for the global layers.
            None => {
                let (theta, scaling) = rope_from_hf(
                    id,
                    c.rope_theta,
                    c.rope_scaling.as_ref(),
                    None,
                    max_positions,
                )?;
                (
                    (theta.unwrap_or(1_000_000.0), scaling),
                    (
                        c.rope_local_base_freq.unwrap_or(10_000.0),
                        RopeScaling::None,
                    ),
                )
            }
        };
        Ok(GemmaConfig {
            arch: id,
            attn_logit_softcapping: attn_cap,
            final_logit_softcapping: final_cap,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(256),
            sliding,
            sliding_window: window("sliding_window", c.sliding_window)?.unwrap_or(4096),
            rope_global,
            rope_local,
            query_pre_attn_scalar: c.query_pre_attn_scalar.unwrap_or(256.0),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: max_positions.unwrap_or(if gemma2 { 8192 } else { 131_072 }),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(true),
            bos_token_id: c.bos_token_id,
            eos_token_id: c.eos_token_id,
        })
    }

    /// The `config.json` transformers loads this config from, in the Hub's form (which
    /// transformers 4 and 5 both read).
    pub fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        let gemma2 = self.arch == ArchId::Gemma2;
        if self.rope_local.1 != RopeScaling::None {
            return Err(
                "local layers with RoPE scaling cannot be written in the Hub's form".into(),
            );
        }
        if gemma2 && self.rope_local != self.rope_global {
            return Err("a gemma2 graph whose layers differ in RoPE cannot be written".into());
        }
        if !gemma2 && self.attn_logit_softcapping.is_some() {
            return Err(
                "a gemma3_text graph with soft-capped attention cannot be written (transformers' \
                 Gemma 3 reads no attention cap)"
                    .into(),
            );
        }
        let mut m = Map::new();
        let class = if gemma2 {
            "Gemma2ForCausalLM"
        } else {
            "Gemma3ForCausalLM"
        };
        m.insert("architectures".into(), json!([class]));
        m.insert("model_type".into(), json!(self.arch.name()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers()));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert("rms_norm_eps".into(), f32_json(self.rms_norm_eps));
        m.insert("rope_theta".into(), f32_json(self.rope_global.0));
        if !gemma2 {
            m.insert("rope_local_base_freq".into(), f32_json(self.rope_local.0));
        }
        m.insert(
            "rope_scaling".into(),
            crate::llama::rope_scaling_to_hf(self.rope_global.1),
        );
        m.insert(
            "query_pre_attn_scalar".into(),
            f32_json(self.query_pre_attn_scalar),
        );
        m.insert("sliding_window".into(), json!(self.sliding_window));
        m.insert(
            "layer_types".into(),
            layer_types_json(self.sliding.iter().copied()),
        );
        m.insert("attention_bias".into(), json!(false));
        let cap = |c: Option<f32>| c.map_or(Value::Null, f32_json);
        m.insert(
            "attn_logit_softcapping".into(),
            cap(self.attn_logit_softcapping),
        );
        m.insert(
            "final_logit_softcapping".into(),
            cap(self.final_logit_softcapping),
        );
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

// ---- GGUF ----

/// llama.cpp's architectures of this family, by `general.architecture`.
pub const GGUF_ARCHS: [&str; 2] = ["gemma2", "gemma3"];

/// The GGUF name of a Gemma parameter (llama.cpp's names for the sandwich norms; the rest as
/// the LLaMA family's).
pub fn gguf_name(hf: &str) -> Option<String> {
    let Some((layer, module)) = hf
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return crate::llama::gguf_name(hf);
    };
    let g = match module {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "post_attention_norm",
        "pre_feedforward_layernorm.weight" => "ffn_norm",
        "post_feedforward_layernorm.weight" => "post_ffw_norm",
        _ => return crate::llama::gguf_name(hf),
    };
    Some(format!("blk.{layer}.{g}.weight"))
}

impl GemmaConfig {
    /// The score scale llama.cpp gives a Gemma file: `1/sqrt(head_dim)`, or for the 27B
    /// models (recognised by their layer count) `1/sqrt(hidden / heads)`; GGUF has no key for
    /// `query_pre_attn_scalar`.
    fn llamacpp_query_pre_attn_scalar(
        arch: ArchId,
        layers: usize,
        hidden: usize,
        heads: usize,
        head_dim: usize,
    ) -> f32 {
        let is_27b = match arch {
            ArchId::Gemma2 => layers == 46,
            _ => layers == 62,
        };
        if is_27b && heads > 0 {
            (hidden / heads) as f32
        } else {
            head_dim as f32
        }
    }

    /// `general.architecture` and the hyperparameters llama.cpp reads (gemma2 or gemma3).
    pub fn to_gguf(&self) -> Result<(&'static str, crate::llama::GgufMetadata), ConfigError> {
        use shrink_formats::gguf::MetaValue;
        let (gguf_arch, gemma2) = match self.arch {
            ArchId::Gemma2 => ("gemma2", true),
            _ => ("gemma3", false),
        };
        let bad = |field: &str, message: String| ConfigError::Field {
            field: field.into(),
            message,
        };
        let q = Self::llamacpp_query_pre_attn_scalar(
            self.arch,
            self.num_layers(),
            self.hidden_size,
            self.num_heads,
            self.head_dim,
        );
        if q != self.query_pre_attn_scalar {
            return Err(bad(
                "query_pre_attn_scalar",
                format!(
                    "{} has no form in llama.cpp's {gguf_arch}, which scales scores by \
                     1/sqrt({q})",
                    self.query_pre_attn_scalar
                ),
            ));
        }
        if self.rope_local.1 != RopeScaling::None {
            return Err(bad(
                "rope_scaling",
                "local layers with RoPE scaling have no GGUF form".into(),
            ));
        }
        let key = |k: &str| format!("{gguf_arch}.{k}");
        let u32_of = |k: &str, v: usize| {
            u32::try_from(v)
                .map(MetaValue::U32)
                .map_err(|_| bad(k, format!("{v} does not fit a u32")))
        };
        let mut meta = Vec::new();
        for (k, v) in [
            ("context_length", self.max_position_embeddings),
            ("embedding_length", self.hidden_size),
            ("block_count", self.num_layers()),
            ("feed_forward_length", self.intermediate_size),
            ("attention.head_count", self.num_heads),
            ("attention.head_count_kv", self.num_kv_heads),
            ("attention.key_length", self.head_dim),
            ("attention.value_length", self.head_dim),
            ("rope.dimension_count", self.head_dim),
            ("attention.sliding_window", self.sliding_window),
            ("vocab_size", self.vocab_size),
        ] {
            meta.push((key(k), u32_of(&key(k), v)?));
        }
        meta.push((
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(self.rms_norm_eps),
        ));
        meta.push((key("rope.freq_base"), MetaValue::F32(self.rope_global.0)));
        meta.push((key("rope.freq_base_swa"), MetaValue::F32(self.rope_local.0)));
        match self.rope_global.1 {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                meta.push((key("rope.scaling.type"), MetaValue::String("linear".into())));
                meta.push((key("rope.scaling.factor"), MetaValue::F32(factor)));
            }
            other => {
                return Err(bad(
                    "rope_scaling",
                    format!("{other:?} has no GGUF form for Gemma yet"),
                ))
            }
        }
        // One flag per layer: llama.cpp's default patterns (every 2nd or 6th layer global)
        // would not hold a pruned model's layers.
        meta.push((
            key("attention.sliding_window_pattern"),
            MetaValue::Array(self.sliding.iter().map(|&s| MetaValue::Bool(s)).collect()),
        ));
        for (k, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            match cap {
                Some(c) => meta.push((key(k), MetaValue::F32(c))),
                None if gemma2 => return Err(bad(k, "llama.cpp's gemma2 always soft-caps".into())),
                None => {}
            }
        }
        if !gemma2 && self.attn_logit_softcapping.is_some() {
            return Err(bad(
                "attn_logit_softcapping",
                "llama.cpp's gemma3 has no attention soft-cap".into(),
            ));
        }
        Ok((gguf_arch, meta))
    }

    /// The config of a GGUF file of this family, validated.
    pub(crate) fn from_gguf(
        file: &shrink_formats::gguf::GgufFile,
    ) -> Result<GemmaConfig, ConfigError> {
        use shrink_formats::gguf::{MetaValue, OptionalKey};
        let gguf_arch = file.get_str("general.architecture")?;
        let arch = if gguf_arch == "gemma2" {
            ArchId::Gemma2
        } else {
            ArchId::Gemma3
        };
        let key = |k: &str| format!("{gguf_arch}.{k}");
        let u = |k: &str| file.get_u32(&key(k)).map(|v| v as usize);
        let n_layers = u("block_count")?;
        if n_layers > file.tensors.len() {
            return Err(ConfigError::Field {
                field: key("block_count"),
                message: format!(
                    "{n_layers} layers, but the file holds {} tensors",
                    file.tensors.len()
                ),
            });
        }
        let (hidden, heads) = (u("embedding_length")?, u("attention.head_count")?);
        let head_dim = match u("attention.key_length").optional()? {
            Some(v) => v,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let sliding = match file.get(&key("attention.sliding_window_pattern")) {
            Some(MetaValue::Array(items)) => {
                if items.len() != n_layers {
                    return Err(ConfigError::Field {
                        field: key("attention.sliding_window_pattern"),
                        message: format!("{} flags for {n_layers} layers", items.len()),
                    });
                }
                items
                    .iter()
                    .map(|v| match v {
                        MetaValue::Bool(b) => Ok(*b),
                        other => Err(ConfigError::Field {
                            field: key("attention.sliding_window_pattern"),
                            message: format!("expected bools, got {}", other.type_name()),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            _ => {
                let every = u("attention.sliding_window_pattern")
                    .optional()?
                    .unwrap_or(if arch == ArchId::Gemma2 { 2 } else { 6 })
                    .max(1);
                (0..n_layers).map(|i| (i + 1) % every != 0).collect()
            }
        };
        let global_theta =
            file.get_f32(&key("rope.freq_base"))
                .optional()?
                .unwrap_or(if arch == ArchId::Gemma2 {
                    10_000.0
                } else {
                    1_000_000.0
                });
        let scaling = match file.get_str(&key("rope.scaling.type")).optional()? {
            Some("linear") => RopeScaling::Linear {
                factor: file.get_f32(&key("rope.scaling.factor"))?,
            },
            Some("none") | None => RopeScaling::None,
            Some(t) => {
                return Err(ConfigError::Field {
                    field: key("rope.scaling.type"),
                    message: format!("'{t}' is not supported for Gemma (none, linear)"),
                })
            }
        };
        let local_theta = file
            .get_f32(&key("rope.freq_base_swa"))
            .optional()?
            .unwrap_or(if arch == ArchId::Gemma2 {
                global_theta
            } else {
                10_000.0
            });
        let cap = |k: &str| {
            file.get_f32(&key(k))
                .optional()
                .map(|c| c.filter(|c| *c != 0.0))
        };
        let c = GemmaConfig {
            arch,
            vocab_size: match u("vocab_size").optional()? {
                Some(v) => v,
                None => file.get_str_array("tokenizer.ggml.tokens")?.len(),
            },
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_heads: heads,
            num_kv_heads: u("attention.head_count_kv").optional()?.unwrap_or(heads),
            head_dim,
            sliding,
            sliding_window: u("attention.sliding_window").optional()?.unwrap_or(4096),
            rope_global: (global_theta, scaling),
            rope_local: (local_theta, RopeScaling::None),
            query_pre_attn_scalar: Self::llamacpp_query_pre_attn_scalar(
                arch, n_layers, hidden, heads, head_dim,
            ),
            // llama.cpp's gemma2 always soft-caps (50 and 30 unless the file says).
            attn_logit_softcapping: match arch {
                ArchId::Gemma2 => Some(cap("attn_logit_softcapping")?.unwrap_or(50.0)),
                _ => None,
            },
            final_logit_softcapping: match arch {
                ArchId::Gemma2 => Some(cap("final_logit_softcapping")?.unwrap_or(30.0)),
                _ => cap("final_logit_softcapping")?,
            },
            rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            max_position_embeddings: u("context_length").optional()?.unwrap_or(8192),
            tie_word_embeddings: file.tensor("output.weight").is_none(),
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

/// A `gemma2` or `gemma3_text` `config.json` as transformers reads it, in the Hub's form or
/// transformers 5's. `rope_parameters` is one RoPE object for Gemma 2 and one per layer type
/// for Gemma 3, so it is read once the family is known.
#[derive(Deserialize)]
struct GemmaJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    /// Absent takes Gemma 2's default cap; null is none.
    #[serde(default, deserialize_with = "nullable")]
    attn_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "nullable")]
    final_logit_softcapping: Option<Option<f32>>,
    use_bidirectional_attention: Option<bool>,
    attention_bias: Option<bool>,
    hidden_activation: Option<String>,
    layer_types: Option<Vec<LayerType>>,
    sliding_window_pattern: Option<usize>,
    sliding_window: Option<usize>,
    rope_theta: Option<f32>,
    rope_local_base_freq: Option<f32>,
    rope_scaling: Option<RopeJson>,
    rope_parameters: Option<Map<String, Value>>,
    query_pre_attn_scalar: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    #[serde(default, deserialize_with = "token_id")]
    bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    eos_token_id: Option<u32>,
}

/// Gemma 3's `rope_parameters` in transformers 5: one RoPE object per layer type.
#[derive(Deserialize)]
struct RopePerLayerType {
    full_attention: Option<RopeJson>,
    sliding_attention: Option<RopeJson>,
}

/// The Gemma family in the registry ([`ArchId::family`]).
pub(crate) static FAMILY: FamilyDef = FamilyDef {
    gguf: Some(GgufForm {
        archs: &GGUF_ARCHS,
        read: |f| Ok(Box::new(GemmaConfig::from_gguf(f)?)),
    }),
    from_hf: |id, c| Ok(Box::new(GemmaConfig::from_hf(id, c)?)),
    from_graph: |g| Ok(Box::new(GemmaConfig::from_graph(g)?)),
};

impl Architecture for GemmaConfig {
    fn id(&self) -> ArchId {
        self.arch
    }
    fn validate(&self) -> Result<(), String> {
        GemmaConfig::validate(self)
    }
    fn build(&self) -> Graph {
        GemmaConfig::build(self)
    }
    fn param_count(&self) -> Result<u64, String> {
        GemmaConfig::param_count(self)
    }
    fn layers(&self) -> (usize, &'static str) {
        (self.num_layers(), "num_hidden_layers")
    }
    decoder_config_fields!();
    fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        GemmaConfig::to_hf(self, torch_dtype)
    }
    /// Gemma's norms store `w` of `1 + w`.
    fn stored_offset(&self, name: &str) -> f32 {
        if GemmaConfig::is_offset_norm(name) {
            GemmaConfig::NORM_OFFSET
        } else {
            0.0
        }
    }
    fn to_gguf(&self) -> Result<(&'static str, GgufMetadata), ConfigError> {
        GemmaConfig::to_gguf(self)
    }
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gguf_name(hf)
    }
}
