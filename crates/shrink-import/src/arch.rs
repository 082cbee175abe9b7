//! The architectures shrink knows, each defined once: a normalised config and the graph it
//! builds, with parameters named as in Hugging Face checkpoints. Front ends (Hugging Face, GGUF)
//! only translate their config and tensor names into these.

use shrink_ir::{Activation, AttentionSpec, DType, Graph, NormKind, Op, ParamType, Rope, ValueId};

/// The LLaMA family (Llama, SmolLM, Mistral, Qwen2): RMSNorm, RoPE, grouped-query attention,
/// SwiGLU MLP. Layers may differ in MLP width and head counts (structured pruning makes such
/// models); `head_dim` is shared.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`: kept so exports write the same architecture back.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// One entry per decoder layer, in order: their number is `num_hidden_layers`.
    pub layers: Vec<LlamaLayer>,
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

/// The sizes of one LLaMA decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaLayer {
    /// Rows of `gate_proj`/`up_proj`, columns of `down_proj`.
    pub intermediate_size: usize,
    /// Query heads; a multiple of `num_kv_heads`.
    pub num_heads: usize,
    pub num_kv_heads: usize,
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

/// Model-level facts every architecture records in the graph's metadata.
struct Meta<'a> {
    arch: &'a str,
    context_length: usize,
    tied: bool,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl Builder {
    /// The output head over the final hidden state `h`, the `logits` output, and the metadata.
    fn finish(mut self, h: ValueId, head: String, meta: &Meta<'_>) -> Graph {
        let logits = self.op(
            Op::Linear {
                weight: head,
                bias: None,
                lora: None,
            },
            &[h],
        );
        self.g.add_typed(
            Op::Output {
                name: "logits".into(),
            },
            &[logits],
            vec![],
        );
        let m = &mut self.g.meta;
        m.insert("architecture".into(), meta.arch.to_string());
        m.insert("context_length".into(), meta.context_length.to_string());
        m.insert("tie_word_embeddings".into(), meta.tied.to_string());
        if let Some(t) = meta.bos {
            m.insert("bos_token_id".into(), t.to_string());
        }
        if let Some(t) = meta.eos {
            m.insert("eos_token_id".into(), t.to_string());
        }
        self.g
    }

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
        self.op(
            Op::Linear {
                weight,
                bias,
                lora: None,
            },
            &[x],
        )
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
        self.layers.windows(2).all(|w| w[0] == w[1])
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
        self.param_count()?;
        Ok(())
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
                    dim: hd,
                }),
                causal: true,
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
                    },
                    &[x],
                )
            };
            let x = norm(&mut b, h, "input_layernorm");
            let qkv = c.attention_qkv_bias;
            let q = b.linear(
                x,
                &format!("{p}.self_attn.q_proj"),
                l.num_heads * hd,
                d,
                qkv,
            );
            let k = b.linear(
                x,
                &format!("{p}.self_attn.k_proj"),
                l.num_kv_heads * hd,
                d,
                qkv,
            );
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
                arch: &c.arch,
                context_length: c.max_position_embeddings,
                tied: c.tie_word_embeddings,
                bos: c.bos_token_id,
                eos: c.eos_token_id,
            },
        )
    }
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
        b.finish(
            h,
            head,
            &Meta {
                arch: "gpt2",
                context_length: c.n_positions,
                tied: !c.untied_head,
                bos: c.bos_token_id,
                eos: c.eos_token_id,
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

// ---- reading a config back from a graph (the exporters' side) ----

/// Shape of a declared parameter, or an error naming it.
fn param_shape<'g>(g: &'g Graph, name: &str) -> Result<&'g [usize], String> {
    g.param(name)
        .map(|p| p.shape.as_slice())
        .ok_or_else(|| format!("parameter '{name}' is missing"))
}

/// Shape of a declared rank-2 parameter.
fn param_2d(g: &Graph, name: &str) -> Result<(usize, usize), String> {
    match param_shape(g, name)? {
        [a, b] => Ok((*a, *b)),
        s => Err(format!(
            "parameter '{name}' has shape {s:?}, expected rank 2"
        )),
    }
}

/// The layer a parameter belongs to (`model.layers.3.…`, `transformer.h.3.…`).
fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layers" || w[0] == "h")
        .and_then(|w| w[1].parse().ok())
}

/// Number of layers: the parameters under `prefix{i}.` must be numbered 0..n without gaps.
fn count_layers(g: &Graph, prefix: &str) -> Result<usize, String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in g.params().keys() {
        if let Some(rest) = name.strip_prefix(prefix) {
            let idx = rest.split('.').next().unwrap_or("");
            let i: usize = idx
                .parse()
                .map_err(|_| format!("parameter '{name}' has a non-numeric layer index"))?;
            seen.insert(i);
        }
    }
    let n = seen.len();
    if n == 0 {
        return Err(format!("no layers (no parameters named '{prefix}<i>.*')"));
    }
    if let Some(gap) = (0..n).find(|i| !seen.contains(i)) {
        return Err(format!(
            "layers are not numbered 0..{n}: layer {gap} is missing"
        ));
    }
    Ok(n)
}

/// The ops of the graph in its deterministic order.
fn ops_in_order(g: &Graph) -> Result<Vec<&Op>, String> {
    let order = g.order().map_err(|_| "the graph has a cycle".to_string())?;
    Ok(order
        .into_iter()
        .filter_map(|id| g.node(id).map(|n| &n.op))
        .collect())
}

/// The weight of the linear that produces the output `logits`.
fn head_weight(g: &Graph) -> Result<String, String> {
    let outs = g.outputs();
    let (_, v) = match outs.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(format!(
                "expected one output 'logits', found {}",
                outs.len()
            ))
        }
    };
    match g.producer(v).and_then(|p| g.node(p)).map(|n| &n.op) {
        Some(Op::Linear {
            weight,
            bias: None,
            lora: None,
        }) => Ok(weight.clone()),
        Some(op) => Err(format!(
            "the output is computed by '{}', expected a linear head without bias",
            op.name()
        )),
        None => Err("the output has no producer".into()),
    }
}

/// Attention specs of the graph, one per layer in layer order (the residual stream orders them);
/// head_dim, RoPE and causality must agree with layer 0's, head counts may differ.
fn layer_attention_specs(ops: &[&Op], layers: usize) -> Result<Vec<AttentionSpec>, String> {
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
    let a0 = specs[0];
    for (i, a) in specs.iter().enumerate().skip(1) {
        if a.head_dim != a0.head_dim {
            return Err(format!(
                "layer {i}: attention head_dim={} differs from layer 0's head_dim={}",
                a.head_dim, a0.head_dim
            ));
        }
        if a.rope != a0.rope {
            return Err(format!(
                "layer {i}: attention rope {:?} differs from layer 0's {:?}",
                a.rope, a0.rope
            ));
        }
        if a.causal != a0.causal {
            return Err(format!(
                "layer {i}: attention causality differs from layer 0's"
            ));
        }
    }
    if !a0.causal {
        return Err("attention is not causal".into());
    }
    Ok(specs)
}

/// The attention spec every layer shares (GPT-2 has no per-layer head counts).
fn uniform_attention_spec(ops: &[&Op], layers: usize) -> Result<AttentionSpec, String> {
    let specs = layer_attention_specs(ops, layers)?;
    let a0 = specs[0];
    for (i, a) in specs.iter().enumerate().skip(1) {
        for (k, got, want) in [
            ("heads", a.heads, a0.heads),
            ("kv_heads", a.kv_heads, a0.kv_heads),
        ] {
            if got != want {
                return Err(format!(
                    "layer {i}: attention {k}={got} differs from layer 0's {k}={want}"
                ));
            }
        }
    }
    Ok(a0)
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

/// The single epsilon of every norm op of `kind`.
fn norm_eps(ops: &[&Op], kind: NormKind) -> Result<f32, String> {
    let mut eps: Option<(f32, String)> = None;
    for op in ops {
        if let Op::Norm {
            kind: k,
            eps: e,
            weight,
            ..
        } = op
        {
            if *k != kind {
                return Err(format!(
                    "norm '{weight}' is {}, expected {}",
                    op.name(),
                    if kind == NormKind::Rms {
                        "rms_norm"
                    } else {
                        "layer_norm"
                    }
                ));
            }
            match &eps {
                None => eps = Some((*e, weight.clone())),
                Some((e0, w0)) if e0.to_bits() != e.to_bits() => {
                    return Err(format!(
                        "norm '{weight}' has eps={e}, but '{w0}' has eps={e0}"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    eps.map(|(e, _)| e)
        .ok_or_else(|| "the graph has no norm op".to_string())
}

fn meta_token(g: &Graph, key: &str) -> Result<Option<u32>, String> {
    g.meta
        .get(key)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| format!("meta '{key}' = '{v}' is not a token id"))
        })
        .transpose()
}

fn meta_usize(g: &Graph, key: &str) -> Result<Option<usize>, String> {
    g.meta
        .get(key)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| format!("meta '{key}' = '{v}' is not a non-negative integer"))
        })
        .transpose()
}

/// Checks that `g` computes what `built` (made by a config's `build()`) computes: the same
/// parameters with the same shapes (dtypes and quantization schemes may differ) and the same
/// dataflow into every output, regardless of the order the nodes were added in.
pub fn same_structure(g: &Graph, built: &Graph, arch: &str) -> Result<(), String> {
    for (name, ty) in g.params() {
        match built.param(name) {
            None => {
                return Err(format!(
                    "parameter '{name}' is not part of the {arch} graph of these sizes"
                ))
            }
            Some(b) if b.shape != ty.shape => {
                let layer = layer_of(name).map_or(String::new(), |i| format!("layer {i}: "));
                return Err(format!(
                    "{layer}parameter '{name}' has shape {:?}, but the model's sizes imply {:?}",
                    ty.shape, b.shape
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = built.params().keys().find(|n| g.param(n).is_none()) {
        return Err(format!("parameter '{name}' is missing"));
    }
    let mut interner = std::collections::HashMap::new();
    let want = canonical(built, &mut interner)?;
    let known = interner.len();
    let got = canonical(g, &mut interner)?;
    if got.0 == want.0 {
        return Ok(());
    }
    // Name the first node (in the graph's order) that the built graph does not have.
    let printer = shrink_ir::text::Printer::new(g);
    let culprit = got
        .1
        .iter()
        .find(|(_, c)| *c >= known)
        .map(|(id, _)| printer.node_line(*id));
    Err(match culprit {
        Some(line) => {
            format!("the graph is not the {arch} graph of these sizes: no counterpart for `{line}`")
        }
        None => format!("the graph is not the {arch} graph of these sizes (its outputs differ)"),
    })
}

/// Canonical ids of a graph's nodes: equal ids mean equal op, attributes and (recursively)
/// operands. Returns the sorted (output name, id) list and each node's id in order.
#[allow(clippy::type_complexity)]
fn canonical(
    g: &Graph,
    interner: &mut std::collections::HashMap<String, usize>,
) -> Result<(Vec<(String, usize)>, Vec<(shrink_ir::NodeId, usize)>), String> {
    let order = g.order().map_err(|_| "the graph has a cycle".to_string())?;
    let mut value_ids: std::collections::HashMap<ValueId, (usize, usize)> =
        std::collections::HashMap::new();
    let mut outputs = Vec::new();
    let mut nodes = Vec::new();
    for id in order {
        let Some(n) = g.node(id) else { continue };
        let ins: Vec<(usize, usize)> = n
            .inputs
            .iter()
            .map(|v| value_ids.get(v).copied().unwrap_or((usize::MAX, 0)))
            .collect();
        let key = format!("{:?}|{ins:?}", n.op);
        let next = interner.len();
        let c = *interner.entry(key).or_insert(next);
        for (k, v) in n.outputs.iter().enumerate() {
            value_ids.insert(*v, (c, k));
        }
        if let Op::Output { name } = &n.op {
            outputs.push((name.clone(), c));
        }
        nodes.push((id, c));
    }
    outputs.sort();
    Ok((outputs, nodes))
}

impl LlamaConfig {
    /// Reads the config back from a graph of this family (the inverse of [`LlamaConfig::build`],
    /// whatever the parameters' dtypes or schemes): sizes from the parameter shapes, heads, RoPE
    /// and norm epsilon from the ops, whether the head is tied from the output linear's weight,
    /// and the architecture, context length and BOS/EOS from `graph.meta`. Layers may differ in
    /// MLP width and head counts (each read from its own layer). Fails with the layer and tensor
    /// at fault when the graph is not that shape.
    pub fn from_graph(g: &Graph) -> Result<LlamaConfig, String> {
        let arch = g
            .meta
            .get("architecture")
            .ok_or("meta 'architecture' is missing")?
            .clone();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(format!(
                "architecture '{arch}' is not of the LLaMA family (llama, mistral, qwen2)"
            ));
        }
        let embed = "model.embed_tokens.weight";
        let (vocab, hidden) = param_2d(g, embed)?;
        let layers = count_layers(g, "model.layers.")?;
        let ops = ops_in_order(g)?;
        let specs = layer_attention_specs(&ops, layers)?;
        let (rope, head_dim) = (specs[0].rope, specs[0].head_dim);
        let rope = rope.ok_or("attention has no RoPE")?;
        if rope.dim != head_dim {
            return Err(format!(
                "partial rotary (rope dim {} of head_dim {head_dim}) is not supported",
                rope.dim
            ));
        }
        let eps = norm_eps(&ops, NormKind::Rms)?;
        let qkv_bias = g.param("model.layers.0.self_attn.q_proj.bias").is_some();
        // Each layer's sizes: MLP width from its gate projection, heads from its attention op;
        // every other shape must agree with them (here, then against `build()` below).
        let mut sizes = Vec::with_capacity(layers);
        for (i, a) in specs.iter().enumerate() {
            let (inter, _) = param_2d(g, &format!("model.layers.{i}.mlp.gate_proj.weight"))?;
            let l = LlamaLayer {
                intermediate_size: inter,
                num_heads: a.heads,
                num_kv_heads: a.kv_heads,
            };
            check_llama_layer(g, i, &l, head_dim)?;
            sizes.push(l);
        }
        let head = head_weight(g)?;
        let tied = head == embed;
        if !tied && head != "lm_head.weight" {
            return Err(format!(
                "the output linear reads '{head}', expected '{embed}' (tied) or 'lm_head.weight'"
            ));
        }
        let c = LlamaConfig {
            arch: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            layers: sizes,
            head_dim,
            rope_theta: rope.theta,
            rms_norm_eps: eps,
            max_position_embeddings: meta_usize(g, "context_length")?
                .ok_or("meta 'context_length' is missing")?,
            tie_word_embeddings: tied,
            attention_qkv_bias: qkv_bias,
            bos_token_id: meta_token(g, "bos_token_id")?,
            eos_token_id: meta_token(g, "eos_token_id")?,
        };
        c.validate()?;
        same_structure(g, &c.build(), &arch)?;
        Ok(c)
    }
}

impl Gpt2Config {
    /// Reads the config back from a GPT-2 graph (the inverse of [`Gpt2Config::build`], whatever
    /// the parameters' dtypes or schemes); see [`LlamaConfig::from_graph`].
    pub fn from_graph(g: &Graph) -> Result<Gpt2Config, String> {
        match g.meta.get("architecture").map(String::as_str) {
            Some("gpt2") => {}
            Some(other) => return Err(format!("architecture '{other}' is not gpt2")),
            None => return Err("meta 'architecture' is missing".into()),
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
        same_structure(g, &c.build(), "gpt2")?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(arch: &str, tied: bool, bias: bool) -> LlamaConfig {
        LlamaConfig {
            arch: arch.into(),
            vocab_size: 50,
            hidden_size: 32,
            layers: vec![
                LlamaLayer {
                    intermediate_size: 48,
                    num_heads: 4,
                    num_kv_heads: 2,
                };
                3
            ],
            head_dim: 8,
            rope_theta: 500000.0,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 64,
            tie_word_embeddings: tied,
            attention_qkv_bias: bias,
            bos_token_id: Some(1),
            eos_token_id: None,
        }
    }

    fn gpt2(prefix: &str, untied: bool, activation: Activation) -> Gpt2Config {
        Gpt2Config {
            vocab_size: 50,
            n_embd: 32,
            n_layer: 2,
            n_head: 4,
            n_positions: 40,
            n_inner: 72,
            layer_norm_epsilon: 1e-5,
            activation,
            prefix: prefix.into(),
            untied_head: untied,
            bos_token_id: Some(0),
            eos_token_id: Some(0),
        }
    }

    #[test]
    fn llama_config_round_trips_through_its_graph() {
        for c in [
            llama("llama", true, false),
            llama("mistral", false, false),
            llama("qwen2", false, true),
        ] {
            let mut g = c.build();
            assert_eq!(LlamaConfig::from_graph(&g).unwrap(), c);
            // Dtypes do not matter.
            let p = g.param_mut("model.layers.1.mlp.up_proj.weight").unwrap();
            p.dtype = DType::BF16;
            assert_eq!(LlamaConfig::from_graph(&g).unwrap(), c);
        }
    }

    /// `llama("llama", …)` with layer 0's MLP narrowed and layer 1 down to one KV group.
    fn pruned_llama(tied: bool) -> LlamaConfig {
        let mut c = llama("llama", tied, false);
        c.layers[0].intermediate_size = 24;
        c.layers[1].num_heads = 2;
        c.layers[1].num_kv_heads = 1;
        c
    }

    #[test]
    fn layers_of_different_sizes_round_trip_through_their_graph() {
        for c in [pruned_llama(true), pruned_llama(false)] {
            assert!(!c.is_uniform());
            c.validate().unwrap();
            let g = c.build();
            let shape = |n: &str| g.param(n).unwrap().shape.clone();
            assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [32, 24]);
            assert_eq!(shape("model.layers.1.self_attn.q_proj.weight"), [16, 32]);
            assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), [8, 32]);
            assert_eq!(shape("model.layers.1.self_attn.o_proj.weight"), [32, 16]);
            assert_eq!(shape("model.layers.2.self_attn.q_proj.weight"), [32, 32]);
            let heads: Vec<(usize, usize)> = ops_in_order(&g)
                .unwrap()
                .into_iter()
                .filter_map(|op| match op {
                    Op::Attention(a) => Some((a.heads, a.kv_heads)),
                    _ => None,
                })
                .collect();
            assert_eq!(heads, [(4, 2), (2, 1), (4, 2)]);
            assert_eq!(LlamaConfig::from_graph(&g).unwrap(), c);
        }
        assert!(llama("llama", true, false).is_uniform());
    }

    #[test]
    fn validate_names_the_layer_of_a_non_uniform_config() {
        let mut c = pruned_llama(true);
        c.layers[2].num_heads = 3;
        assert_eq!(
            c.validate().unwrap_err(),
            "layer 2: num_attention_heads (3) is not a multiple of num_key_value_heads (2)"
        );
        c.layers[2].num_heads = 4;
        c.layers[0].intermediate_size = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            "layer 0: intermediate_size must be positive"
        );
        // A uniform config's errors name no layer, as before.
        let mut c = llama("llama", true, false);
        for l in &mut c.layers {
            l.num_kv_heads = 3;
        }
        assert_eq!(
            c.validate().unwrap_err(),
            "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"
        );
        c.layers.clear();
        assert_eq!(
            c.validate().unwrap_err(),
            "num_hidden_layers must be positive"
        );
    }

    #[test]
    fn from_graph_checks_each_layers_projections_against_its_sizes() {
        let c = pruned_llama(true);
        // Layer 0's up projection keeps the unpruned width.
        let mut g = c.build();
        g.param_mut("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .shape = vec![48, 32];
        assert_eq!(
            LlamaConfig::from_graph(&g).unwrap_err(),
            "layer 0: parameter 'model.layers.0.mlp.up_proj.weight' has shape [48, 32], but \
             intermediate_size 24 (from 'model.layers.0.mlp.gate_proj.weight') implies [24, 32]"
        );
        // Layer 1's k projection still holds two KV heads.
        let mut g = c.build();
        g.param_mut("model.layers.1.self_attn.k_proj.weight")
            .unwrap()
            .shape = vec![16, 32];
        assert_eq!(
            LlamaConfig::from_graph(&g).unwrap_err(),
            "layer 1: parameter 'model.layers.1.self_attn.k_proj.weight' has shape [16, 32], \
             but attention heads=2 kv_heads=1 head_dim=8 implies [8, 32]"
        );
        // head_dim is shared by every layer.
        let mut g = c.build();
        let id = g
            .node_ids()
            .into_iter()
            .filter(|&id| matches!(g.node(id).unwrap().op, Op::Attention(_)))
            .nth(2)
            .unwrap();
        if let Op::Attention(a) = &mut g.node_mut(id).unwrap().op {
            a.head_dim = 4;
        }
        assert_eq!(
            LlamaConfig::from_graph(&g).unwrap_err(),
            "layer 2: attention head_dim=4 differs from layer 0's head_dim=8"
        );
    }

    #[test]
    fn gpt2_config_round_trips_through_its_graph() {
        for c in [
            gpt2("transformer.", false, Activation::GeluTanh),
            gpt2("", true, Activation::Gelu),
        ] {
            assert_eq!(Gpt2Config::from_graph(&c.build()).unwrap(), c);
        }
    }

    #[test]
    fn node_order_does_not_matter() {
        // Rebuild layer 0's q projection as the newest node, as a rewriting pass would.
        let c = llama("llama", true, false);
        let mut g = c.build();
        let id = g
            .node_ids()
            .into_iter()
            .find(|&id| {
                matches!(&g.node(id).unwrap().op,
                    Op::Linear { weight, .. } if weight == "model.layers.0.self_attn.q_proj.weight")
            })
            .unwrap();
        let node = g.node(id).unwrap().clone();
        let new = g.add1(node.op.clone(), &node.inputs).unwrap();
        g.replace_uses(node.outputs[0], new);
        g.remove_node(id);
        assert_ne!(
            shrink_ir::text::print(&g),
            shrink_ir::text::print(&c.build())
        );
        assert_eq!(LlamaConfig::from_graph(&g).unwrap(), c);
    }

    #[test]
    fn from_graph_names_the_layer_and_size_at_fault() {
        let c = llama("llama", true, false);
        let mut g = c.build();
        g.param_mut("model.layers.2.mlp.down_proj.weight")
            .unwrap()
            .shape = vec![32, 40];
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert!(
            e.contains("layer 2") && e.contains("down_proj") && e.contains("[32, 48]"),
            "{e}"
        );

        let mut g = c.build();
        let id = g
            .node_ids()
            .into_iter()
            .filter(|&id| matches!(g.node(id).unwrap().op, Op::Attention(_)))
            .nth(1)
            .unwrap();
        if let Op::Attention(a) = &mut g.node_mut(id).unwrap().op {
            a.heads = 2;
        }
        // Layer 1's attention now claims 2 heads, but its projections still hold 4.
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert_eq!(
            e,
            "layer 1: parameter 'model.layers.1.self_attn.q_proj.weight' has shape [32, 32], \
             but attention heads=2 kv_heads=2 head_dim=8 implies [16, 32]"
        );

        let mut g = c.build();
        g.declare_param("extra.weight", ParamType::new(DType::F32, vec![3]));
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert!(
            e.contains("'extra.weight' is not part of the llama graph"),
            "{e}"
        );

        let mut g = c.build();
        for id in g.node_ids() {
            if let Op::Activation(a) = &mut g.node_mut(id).unwrap().op {
                *a = Activation::Gelu;
            }
        }
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert!(
            e.contains("no counterpart for") && e.contains("gelu("),
            "{e}"
        );

        let g = gpt2("", false, Activation::GeluTanh).build();
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert!(e.contains("'gpt2' is not of the LLaMA family"), "{e}");
        let e = Gpt2Config::from_graph(&c.build()).unwrap_err();
        assert!(e.contains("'llama' is not gpt2"), "{e}");

        let mut g = c.build();
        g.meta.remove("context_length");
        let e = LlamaConfig::from_graph(&g).unwrap_err();
        assert!(e.contains("context_length"), "{e}");
    }
}
