//! GPT-2: LayerNorm, learned positions, fused `c_attn`, GELU-tanh.

use shrink_ir::{Activation, AttentionSpec, Graph, NormKind, Op};

use serde_json::{json, Map, Value};

use crate::builder::{Builder, Meta};
use crate::family::{Architecture, FamilyDef};
use crate::graph_read::*;
use crate::hf_json::{self, bounded, f32_json, field_err, token_id, token_json};
use crate::{ArchId, ConfigError};
use serde::Deserialize;

/// GPT-2: LayerNorm, learned positions, fused `c_attn`, GELU-tanh.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub n_inner: usize,
    pub layer_norm_epsilon: f32,
    pub activation: Activation,
    /// Checkpoint key prefix: `transformer.` for `GPT2LMHeadModel` saves, empty for the
    /// original hub files.
    pub prefix: String,
    /// Whether the checkpoint has a separate `lm_head.weight`.
    pub untied_head: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{
            dim, MAX_HEADS, MAX_LAYERS, MAX_LEARNED_POSITIONS, MAX_VOCAB, MAX_WIDTH,
        };
        for (k, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("n_embd", self.n_embd, MAX_WIDTH),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_HEADS),
            ("n_positions", self.n_positions, MAX_LEARNED_POSITIONS),
            ("n_inner", self.n_inner, MAX_WIDTH),
        ] {
            dim(k, v, max)?;
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        crate::limits::epsilon("layer_norm_epsilon", self.layer_norm_epsilon)?;
        self.param_count()?;
        Ok(())
    }

    /// Parameters of the model, counted from the graph it builds in checked arithmetic.
    pub fn param_count(&self) -> Result<u64, String> {
        crate::limits::graph_params(&self.build())
    }

    pub fn build(&self) -> Graph {
        let c = self;
        let d = c.n_embd;
        let p0 = &c.prefix;
        let mut b = Builder { g: Graph::new() };
        let tokens = b.op(
            Op::Input {
                name: "tokens".into(),
            },
            &[],
        );
        let wte = b.param(&format!("{p0}wte.weight"), vec![c.vocab_size, d]);
        let wpe = b.param(&format!("{p0}wpe.weight"), vec![c.n_positions, d]);
        let e = b.op(
            Op::Embedding {
                weight: wte.clone(),
            },
            &[tokens],
        );
        let pe = b.op(Op::PositionEmbedding { weight: wpe }, &[tokens]);
        let mut h = b.op(Op::Add, &[e, pe]);
        let ln = |b: &mut Builder, x, name: &str| {
            let weight = b.param(&format!("{name}.weight"), vec![d]);
            let bias = Some(b.param(&format!("{name}.bias"), vec![d]));
            b.op(
                Op::Norm {
                    kind: NormKind::Layer,
                    eps: c.layer_norm_epsilon,
                    weight,
                    bias,
                    group: None,
                },
                &[x],
            )
        };
        for i in 0..c.n_layer {
            let p = format!("{p0}h.{i}");
            let x = ln(&mut b, h, &format!("{p}.ln_1"));
            let qkv = b.linear(x, &format!("{p}.attn.c_attn"), 3 * d, d, true);
            let parts = match b.g.add(Op::Split { sizes: vec![d; 3] }, &[qkv]) {
                Ok(v) => v,
                Err(e) => panic!("architecture builder produced an ill-typed split: {e}"),
            };
            let a = b.op(
                Op::Attention(AttentionSpec {
                    heads: c.n_head,
                    kv_heads: c.n_head,
                    head_dim: d / c.n_head,
                    rope: None,
                    causal: true,
                    window: None,
                    scale: None,
                    softcap: None,
                }),
                &[parts[0], parts[1], parts[2]],
            );
            let o = b.linear(a, &format!("{p}.attn.c_proj"), d, d, true);
            h = b.op(Op::Add, &[h, o]);
            let x = ln(&mut b, h, &format!("{p}.ln_2"));
            let f = b.linear(x, &format!("{p}.mlp.c_fc"), c.n_inner, d, true);
            let f = b.op(Op::Activation(c.activation), &[f]);
            let f = b.linear(f, &format!("{p}.mlp.c_proj"), d, c.n_inner, true);
            h = b.op(Op::Add, &[h, f]);
        }
        h = ln(&mut b, h, &format!("{p0}ln_f"));
        let head = if c.untied_head {
            b.param("lm_head.weight", vec![c.vocab_size, d])
        } else {
            wte
        };
        b.finish(
            h,
            head,
            &Meta {
                arch: ArchId::Gpt2.name(),
                context_length: c.n_positions,
                tied: !c.untied_head,
                bos: c.bos_token_id,
                eos: c.eos_token_id,
                logit_softcap: None,
            },
        )
    }
}

/// Whether a GPT-2 parameter is stored transposed (`Conv1D`, `[in, out]`) in checkpoints; the
/// IR keeps every linear weight as `[out, in]`.
pub fn gpt2_is_conv1d(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.contains(".attn.c_attn.")
            || name.contains(".attn.c_proj.")
            || name.contains(".mlp.c_fc.")
            || name.contains(".mlp.c_proj."))
}

impl Gpt2Config {
    /// Reads the config back from a GPT-2 graph (the inverse of [`Gpt2Config::build`], whatever
    /// the parameters' dtypes or schemes); see [`LlamaConfig::from_graph`].
    pub fn from_graph(g: &Graph) -> Result<Gpt2Config, String> {
        match ArchId::of_graph(g)? {
            ArchId::Gpt2 => {}
            other => return Err(format!("architecture '{other}' is not gpt2")),
        }
        let ops = ops_in_order(g)?;
        let wte = ops
            .iter()
            .find_map(|op| match op {
                Op::Embedding { weight } => Some(weight.clone()),
                _ => None,
            })
            .ok_or("the graph has no embedding op")?;
        let prefix = wte
            .strip_suffix("wte.weight")
            .ok_or_else(|| format!("the token embedding '{wte}' is not named '…wte.weight'"))?
            .to_string();
        let (vocab, d) = param_2d(g, &wte)?;
        let (positions, _) = param_2d(g, &format!("{prefix}wpe.weight"))?;
        let layers = count_layers(g, &format!("{prefix}h."))?;
        let a = uniform_attention_spec(&ops, layers)?;
        if a.rope.is_some() {
            return Err("GPT-2 attention has no RoPE, but this graph's has".into());
        }
        if a.kv_heads != a.heads || a.heads * a.head_dim != d {
            return Err(format!(
                "attention heads={} kv_heads={} head_dim={} do not fit GPT-2 with n_embd={d}",
                a.heads, a.kv_heads, a.head_dim
            ));
        }
        let eps = norm_eps(&ops, NormKind::Layer)?;
        let acts: Vec<Activation> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Activation(a) => Some(*a),
                _ => None,
            })
            .collect();
        let activation = *acts.first().ok_or("the graph has no activation op")?;
        if let Some(i) = acts.iter().position(|x| *x != activation) {
            return Err(format!(
                "layer {i}: activation {} differs from layer 0's {}",
                acts[i].name(),
                activation.name()
            ));
        }
        let (inner, _) = param_2d(g, &format!("{prefix}h.0.mlp.c_fc.weight"))?;
        // Per-layer sizes must agree; every other shape is checked against `build()` below.
        for i in 0..layers {
            let p = format!("{prefix}h.{i}");
            let (li, _) = param_2d(g, &format!("{p}.mlp.c_fc.weight"))?;
            if li != inner {
                return Err(format!(
                    "layer {i}: n_inner {li} ({p}.mlp.c_fc.weight) differs from layer 0's {inner}"
                ));
            }
        }
        let head = head_weight(g)?;
        let untied = head != wte;
        if untied && head != "lm_head.weight" {
            return Err(format!(
                "the output linear reads '{head}', expected '{wte}' (tied) or 'lm_head.weight'"
            ));
        }
        let c = Gpt2Config {
            vocab_size: vocab,
            n_embd: d,
            n_layer: layers,
            n_head: a.heads,
            n_positions: positions,
            n_inner: inner,
            layer_norm_epsilon: eps,
            activation,
            prefix,
            untied_head: untied,
            bos_token_id: meta_token(g, "bos_token_id")?,
            eos_token_id: meta_token(g, "eos_token_id")?,
        };
        c.validate()?;
        same_structure(g, &c.build(), ArchId::Gpt2.name())?;
        Ok(c)
    }
}

// ---- Hugging Face config.json ----

/// A GPT-2 `config.json` as transformers reads it.
#[derive(Deserialize)]
struct Gpt2Json {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_positions: usize,
    n_inner: Option<usize>,
    layer_norm_epsilon: Option<f32>,
    activation_function: Option<String>,
    #[serde(default, deserialize_with = "token_id")]
    bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// The config of a GPT-2 `config.json`, before [`Gpt2Config::validate`]; the checkpoint
    /// decides `prefix` and `untied_head`.
    pub(crate) fn from_hf(json: &Map<String, Value>) -> Result<Gpt2Config, ConfigError> {
        let c: Gpt2Json = hf_json::read(json)?;
        let activation = match c.activation_function.as_deref().unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => {
                return Err(field_err(
                    "activation_function",
                    format!("'{other}' is not supported"),
                ))
            }
        };
        Ok(Gpt2Config {
            vocab_size: c.vocab_size,
            n_embd: c.n_embd,
            n_layer: bounded("n_layer", c.n_layer, crate::limits::MAX_LAYERS)?,
            n_head: c.n_head,
            n_positions: c.n_positions,
            n_inner: c.n_inner.unwrap_or(c.n_embd.saturating_mul(4)),
            layer_norm_epsilon: c.layer_norm_epsilon.unwrap_or(1e-5),
            activation,
            prefix: String::new(),
            untied_head: false,
            bos_token_id: c.bos_token_id,
            eos_token_id: c.eos_token_id,
        })
    }

    /// The `config.json` transformers loads this config from, or why it cannot be written.
    pub fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        let act = match self.activation {
            Activation::GeluTanh => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
            other => {
                return Err(format!(
                    "GPT-2 with activation {} is not supported",
                    other.name()
                ))
            }
        };
        let mut m = Map::new();
        m.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
        m.insert("model_type".into(), json!(ArchId::Gpt2.name()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("n_embd".into(), json!(self.n_embd));
        m.insert("n_layer".into(), json!(self.n_layer));
        m.insert("n_head".into(), json!(self.n_head));
        m.insert("n_positions".into(), json!(self.n_positions));
        m.insert("n_ctx".into(), json!(self.n_positions));
        m.insert("n_inner".into(), json!(self.n_inner));
        m.insert("activation_function".into(), json!(act));
        m.insert(
            "layer_norm_epsilon".into(),
            f32_json(self.layer_norm_epsilon),
        );
        m.insert("tie_word_embeddings".into(), json!(!self.untied_head));
        m.insert("bos_token_id".into(), token_json(self.bos_token_id));
        m.insert("eos_token_id".into(), token_json(self.eos_token_id));
        m.insert("torch_dtype".into(), json!(torch_dtype));
        m.insert("use_cache".into(), json!(true));
        Ok(m)
    }
}

/// GPT-2 in the registry ([`ArchId::family`]): no GGUF form.
pub(crate) static FAMILY: FamilyDef = FamilyDef {
    gguf: None,
    from_hf: |_, json| Ok(Box::new(Gpt2Config::from_hf(json)?)),
    from_graph: |g| Ok(Box::new(Gpt2Config::from_graph(g)?)),
};

impl Architecture for Gpt2Config {
    fn id(&self) -> ArchId {
        ArchId::Gpt2
    }
    fn validate(&self) -> Result<(), String> {
        Gpt2Config::validate(self)
    }
    fn build(&self) -> Graph {
        Gpt2Config::build(self)
    }
    fn param_count(&self) -> Result<u64, String> {
        Gpt2Config::param_count(self)
    }
    fn layers(&self) -> (usize, &'static str) {
        (self.n_layer, "n_layer")
    }
    fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn context_length(&self) -> usize {
        self.n_positions
    }
    fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }
    fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }
    fn to_hf(&self, torch_dtype: &str) -> Result<Map<String, Value>, String> {
        Gpt2Config::to_hf(self, torch_dtype)
    }
    /// The key prefix, and an untied head (an `lm_head` of its own data).
    fn fit_checkpoint(
        &mut self,
        has: &dyn Fn(&str) -> bool,
        head_shares_embedding: &dyn Fn(&str) -> bool,
    ) {
        if has("transformer.wte.weight") {
            self.prefix = "transformer.".into();
        }
        self.untied_head = has("lm_head.weight") && !head_shares_embedding(&self.prefix);
    }
    /// `GPT2LMHeadModel` saves under `transformer.`.
    fn use_saved_names(&mut self) {
        self.prefix = "transformer.".into();
    }
    /// GPT-2's `Conv1D` weights are `[in, out]`.
    fn stored_transposed(&self, name: &str) -> bool {
        gpt2_is_conv1d(name)
    }
}
