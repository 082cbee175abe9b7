//! The architectures shrink knows, each defined once: a normalised config and the graph it
//! builds, with parameters named as in Hugging Face checkpoints. Front ends (Hugging Face, GGUF)
//! only translate their config and tensor names into these.

use shrink_ir::{Activation, AttentionSpec, DType, Graph, NormKind, Op, ParamType, Rope, ValueId};

/// The LLaMA family (Llama, SmolLM, Mistral, Qwen2): RMSNorm, RoPE, grouped-query attention,
/// SwiGLU MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`: kept so exports write the same architecture back.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2).
    pub attention_qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

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

/// A declared linear/norm parameter set, to keep the builders short.
struct Builder {
    g: Graph,
}

impl Builder {
    fn param(&mut self, name: &str, shape: Vec<usize>) -> String {
        self.g
            .declare_param(name.to_string(), ParamType::new(DType::F32, shape));
        name.to_string()
    }

    fn op(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        // The builders only make well-typed graphs from validated configs; a failure here is a
        // bug in this file, reported through the verifier by the caller.
        match self.g.add1(op, inputs) {
            Ok(v) => v,
            Err(e) => panic!("architecture builder produced an ill-typed op: {e}"),
        }
    }

    fn linear(&mut self, x: ValueId, name: &str, out: usize, inp: usize, bias: bool) -> ValueId {
        let weight = self.param(&format!("{name}.weight"), vec![out, inp]);
        let bias = bias.then(|| self.param(&format!("{name}.bias"), vec![out]));
        self.op(Op::Linear { weight, bias }, &[x])
    }
}

impl LlamaConfig {
    /// Checks the config's numbers before a graph is built from them.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("{k} must be positive"));
            }
        }
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
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        Ok(())
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
        let attn = AttentionSpec {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: hd,
            rope: Some(Rope {
                theta: c.rope_theta,
                dim: hd,
            }),
            causal: true,
        };
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let norm = |b: &mut Builder, x, name: &str| {
                let weight = b.param(&format!("{p}.{name}.weight"), vec![d]);
                b.op(
                    Op::Norm {
                        kind: NormKind::Rms,
                        eps: c.rms_norm_eps,
                        weight,
                        bias: None,
                    },
                    &[x],
                )
            };
            let x = norm(&mut b, h, "input_layernorm");
            let qkv = c.attention_qkv_bias;
            let q = b.linear(
                x,
                &format!("{p}.self_attn.q_proj"),
                c.num_heads * hd,
                d,
                qkv,
            );
            let k = b.linear(
                x,
                &format!("{p}.self_attn.k_proj"),
                c.num_kv_heads * hd,
                d,
                qkv,
            );
            let v = b.linear(
                x,
                &format!("{p}.self_attn.v_proj"),
                c.num_kv_heads * hd,
                d,
                qkv,
            );
            let a = b.op(Op::Attention(attn), &[q, k, v]);
            let o = b.linear(
                a,
                &format!("{p}.self_attn.o_proj"),
                d,
                c.num_heads * hd,
                false,
            );
            h = b.op(Op::Add, &[h, o]);
            let x = norm(&mut b, h, "post_attention_layernorm");
            let gate = b.linear(
                x,
                &format!("{p}.mlp.gate_proj"),
                c.intermediate_size,
                d,
                false,
            );
            let up = b.linear(
                x,
                &format!("{p}.mlp.up_proj"),
                c.intermediate_size,
                d,
                false,
            );
            let gate = b.op(Op::Activation(Activation::Silu), &[gate]);
            let m = b.op(Op::Mul, &[gate, up]);
            let down = b.linear(
                m,
                &format!("{p}.mlp.down_proj"),
                d,
                c.intermediate_size,
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
            },
            &[h],
        );
        let head = if c.tie_word_embeddings {
            embed
        } else {
            b.param("lm_head.weight", vec![c.vocab_size, d])
        };
        let logits = b.op(
            Op::Linear {
                weight: head,
                bias: None,
            },
            &[h],
        );
        b.g.add_typed(
            Op::Output {
                name: "logits".into(),
            },
            &[logits],
            vec![],
        );
        let m = &mut b.g.meta;
        m.insert("architecture".into(), c.arch.clone());
        m.insert(
            "context_length".into(),
            c.max_position_embeddings.to_string(),
        );
        m.insert(
            "tie_word_embeddings".into(),
            c.tie_word_embeddings.to_string(),
        );
        if let Some(t) = c.bos_token_id {
            m.insert("bos_token_id".into(), t.to_string());
        }
        if let Some(t) = c.eos_token_id {
            m.insert("eos_token_id".into(), t.to_string());
        }
        b.g
    }
}

impl Gpt2Config {
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("n_inner", self.n_inner),
        ] {
            if v == 0 {
                return Err(format!("{k} must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        Ok(())
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
        let logits = b.op(
            Op::Linear {
                weight: head,
                bias: None,
            },
            &[h],
        );
        b.g.add_typed(
            Op::Output {
                name: "logits".into(),
            },
            &[logits],
            vec![],
        );
        let m = &mut b.g.meta;
        m.insert("architecture".into(), "gpt2".into());
        m.insert("context_length".into(), c.n_positions.to_string());
        m.insert("tie_word_embeddings".into(), (!c.untied_head).to_string());
        if let Some(t) = c.bos_token_id {
            m.insert("bos_token_id".into(), t.to_string());
        }
        if let Some(t) = c.eos_token_id {
            m.insert("eos_token_id".into(), t.to_string());
        }
        b.g
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
