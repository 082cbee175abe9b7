use crate::graph_read::ops_in_order;
use crate::*;
use shrink_ir::{Activation, DType, Op, ParamType};

/// The LLaMA-family config behind an [`ArchConfig`].
fn llama_of(c: &ArchConfig) -> &LlamaConfig {
    c.downcast_ref().expect("a LLaMA-family config")
}

fn llama(arch: &str, tied: bool, bias: bool) -> LlamaConfig {
    LlamaConfig {
        arch: ArchId::from_name(arch).expect("a known architecture"),
        vocab_size: 50,
        hidden_size: 32,
        layers: vec![
            LlamaLayer {
                intermediate_size: 48,
                num_heads: 4,
                num_kv_heads: 2,
                sliding_window: None,
            };
            3
        ],
        head_dim: 8,
        rotary_dim: 8,
        rope_theta: 500000.0,
        rope_scaling: shrink_ir::RopeScaling::None,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        attention_qkv_bias: bias,
        qk_norm: arch == "qwen3",
        bos_token_id: Some(1),
        eos_token_id: None,
    }
}

fn gemma(tied: bool) -> GemmaConfig {
    GemmaConfig {
        arch: ArchId::Gemma3,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        sliding: vec![true, true, false],
        sliding_window: 16,
        rope_global: (1_000_000.0, shrink_ir::RopeScaling::Linear { factor: 8.0 }),
        rope_local: (10_000.0, shrink_ir::RopeScaling::None),
        query_pre_attn_scalar: 256.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        bos_token_id: Some(2),
        eos_token_id: Some(1),
    }
}

/// Gemma 2: one RoPE for every layer, both soft-caps, no q/k norms.
fn gemma2() -> GemmaConfig {
    let local = (10_000.0, shrink_ir::RopeScaling::None);
    GemmaConfig {
        arch: ArchId::Gemma2,
        rope_global: local,
        rope_local: local,
        sliding: vec![true, false, true],
        attn_logit_softcapping: Some(50.0),
        final_logit_softcapping: Some(30.0),
        ..gemma(true)
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
        llama("qwen3", true, false),
        llama("phi3", false, false),
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

#[test]
fn every_architecture_round_trips_through_its_config_json() {
    let mut pruned = llama("llama", true, false);
    pruned.layers[1].intermediate_size = 16;
    pruned.layers[2].num_kv_heads = 1;
    let mut mistral_swa = llama("mistral", false, false);
    for l in &mut mistral_swa.layers {
        l.sliding_window = Some(4096);
    }
    let mut phi3_swa = llama("phi3", false, false);
    for l in &mut phi3_swa.layers {
        l.sliding_window = Some(2047);
    }
    let mut qwen2_swa = llama("qwen2", false, true);
    qwen2_swa.layers[2].sliding_window = Some(64);
    let mut qwen3_yarn = llama("qwen3", false, false);
    qwen3_yarn.rope_scaling = shrink_ir::RopeScaling::Yarn {
        factor: 4.0,
        original_context: 32768,
        beta_fast: 16.0,
        beta_slow: 2.0,
        attention_factor: 1.25,
        truncate: false,
    };
    let configs = [
        ArchConfig::from(qwen3_yarn),
        ArchConfig::from(mistral_swa),
        ArchConfig::from(qwen2_swa),
        ArchConfig::from(llama("llama", true, false)),
        ArchConfig::from(llama("mistral", false, false)),
        ArchConfig::from(llama("qwen2", false, true)),
        ArchConfig::from(llama("qwen3", false, false)),
        ArchConfig::from(llama("qwen3", true, false)),
        ArchConfig::from(phi3_swa),
        ArchConfig::from(gemma(true)),
        ArchConfig::from(gemma(false)),
        ArchConfig::from(gemma2()),
        ArchConfig::from(pruned),
        // GPT-2's untied head is the checkpoint's to say (an `lm_head.weight` of its own), so
        // a config.json alone reads back tied.
        ArchConfig::from(gpt2("", false, Activation::GeluTanh)),
        ArchConfig::from(gpt2("", false, Activation::Relu)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for c in configs {
        let json = c.to_hf("bfloat16").unwrap();
        assert_eq!(json["model_type"], c.id().name());
        assert_eq!(ArchConfig::from_hf(&json).unwrap(), c, "{}", c.id());
        assert_eq!(ArchConfig::from_graph(&c.build()).unwrap().id(), c.id());
        seen.insert(c.id());
    }
    assert_eq!(
        seen.len(),
        ArchId::ALL.len(),
        "every architecture is covered"
    );
}

#[test]
fn config_json_errors_name_the_field_or_list_the_architectures() {
    let mut json = ArchConfig::from(llama("llama", true, false))
        .to_hf("float32")
        .unwrap();
    json.insert("model_type".into(), "mamba".into());
    let e = ArchConfig::from_hf(&json).unwrap_err().to_string();
    assert_eq!(
        e,
        "unsupported architecture 'mamba' (supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, gpt2)"
    );
    json.insert("model_type".into(), "qwen2".into());
    json.insert("hidden_act".into(), "gelu".into());
    let e = ArchConfig::from_hf(&json).unwrap_err().to_string();
    assert_eq!(e, "field 'hidden_act': 'gelu' is not supported (silu)");
    json.insert("hidden_act".into(), "silu".into());
    json.insert("rope_theta".into(), (-1.0).into());
    let e = ArchConfig::from_hf(&json).unwrap_err().to_string();
    assert_eq!(e, "field 'rope_theta': rope_theta (-1) must be positive");
}

#[test]
fn arch_ids_are_named_once() {
    for a in ArchId::ALL {
        assert_eq!(ArchId::from_name(a.name()), Some(a));
        assert_eq!(a.to_string(), a.name());
    }
    assert_eq!(ArchId::from_name("Llama"), None);
    let mut g = llama("llama", true, false).build();
    g.meta.insert("architecture".into(), "gpt3".into());
    assert!(ArchId::of_graph(&g).unwrap_err().contains("'gpt3'"));
}

#[test]
fn sliding_windows_follow_transformers_per_architecture() {
    let base = ArchConfig::from(llama("qwen2", false, true))
        .to_hf("float32")
        .unwrap();
    let windows =
        |json: &serde_json::Map<String, serde_json::Value>| match ArchConfig::from_hf(json) {
            Ok(c) => Ok(llama_of(&c)
                .layers
                .iter()
                .map(|l| l.sliding_window)
                .collect()),
            Err(e) => Err(e.to_string()),
        };
    // Qwen2: off unless use_sliding_window; then from max_window_layers on, or by layer_types.
    let mut j = base.clone();
    j.remove("layer_types");
    j.insert("sliding_window".into(), 32.into());
    j.insert("max_window_layers".into(), 1.into());
    assert_eq!(windows(&j), Ok(vec![None; 3]));
    j.insert("use_sliding_window".into(), true.into());
    assert_eq!(windows(&j), Ok(vec![None, Some(32), Some(32)]));
    j.insert(
        "layer_types".into(),
        serde_json::json!(["sliding_attention", "full_attention", "sliding_attention"]),
    );
    assert_eq!(windows(&j), Ok(vec![Some(32), None, Some(32)]));
    j.insert(
        "layer_types".into(),
        serde_json::json!(["chunked_attention", "full_attention", "full_attention"]),
    );
    assert_eq!(
        windows(&j).unwrap_err(),
        "field 'layer_types[0]': unknown variant `chunked_attention`, expected \
         `full_attention` or `sliding_attention`"
    );
    j.insert("layer_types".into(), serde_json::json!(["full_attention"]));
    assert_eq!(
        windows(&j).unwrap_err(),
        "field 'layer_types': a list of 1 layer types, but num_hidden_layers is 3"
    );
    // Mistral: every layer, when given.
    let mut m = ArchConfig::from(llama("mistral", false, false))
        .to_hf("float32")
        .unwrap();
    assert_eq!(windows(&m), Ok(vec![None; 3]));
    m.insert("sliding_window".into(), 4096.into());
    assert_eq!(windows(&m), Ok(vec![Some(4096); 3]));
    m.insert("sliding_window".into(), 0.into());
    assert!(windows(&m)
        .unwrap_err()
        .starts_with("field 'sliding_window'"));
}

#[test]
fn qwen3_has_per_head_qk_norms_and_refuses_what_its_formats_cannot_hold() {
    let c = llama("qwen3", false, false);
    let g = c.build();
    for name in ["q_norm", "k_norm"] {
        let p = g
            .param(&format!("model.layers.2.self_attn.{name}.weight"))
            .unwrap();
        assert_eq!(p.shape, vec![8]);
    }
    let (arch, meta) = c.to_gguf().unwrap();
    assert_eq!(arch, "qwen3");
    assert!(meta.iter().any(|(k, _)| k == "qwen3.attention.key_length"));
    assert_eq!(
        gguf_name("model.layers.3.self_attn.k_norm.weight").as_deref(),
        Some("blk.3.attn_k_norm.weight")
    );
    assert_eq!(
        rope_permuted_heads("model.layers.0.self_attn.q_proj.weight", &c),
        None
    );
    // transformers' Qwen3 has no q/k/v biases; llama.cpp's qwen3 reads none either.
    let mut biased = c.clone();
    biased.attention_qkv_bias = true;
    assert!(biased.to_hf("float32").unwrap_err().contains("biases"));
    assert!(biased
        .to_gguf()
        .unwrap_err()
        .to_string()
        .contains("q/k/v biases"));
    // q/k norms on another architecture have no form in either format.
    let mut normed = llama("llama", true, false);
    normed.qk_norm = true;
    assert!(normed.to_hf("float32").unwrap_err().contains("q/k norms"));
    assert!(normed
        .to_gguf()
        .unwrap_err()
        .to_string()
        .contains("q/k norms"));
    // transformers' default for an absent tie_word_embeddings is untied.
    let mut json = ArchConfig::from(c.clone()).to_hf("float32").unwrap();
    json.remove("tie_word_embeddings");
    json.remove("attention_bias");
    assert_eq!(ArchConfig::from_hf(&json).unwrap(), ArchConfig::from(c));
}

#[test]
fn phi3_checkpoints_stack_qkv_and_gate_up() {
    let c = ArchConfig::from(llama("phi3", false, false));
    let fused = c.fused_tensors();
    assert_eq!(fused.len(), 2 * 3);
    assert_eq!(fused[0].name, "model.layers.0.self_attn.qkv_proj.weight");
    assert_eq!(
        fused[0].parts,
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight"
        ]
    );
    assert_eq!(fused[5].name, "model.layers.2.mlp.gate_up_proj.weight");
    assert!(ArchConfig::from(llama("llama", true, false))
        .fused_tensors()
        .is_empty());
    // A partial rotary factor: Phi-3's (transformers 5 reads `rope_parameters` first), and
    // refused by name for the architectures whose attention ignores it.
    let mut json = c.to_hf("float32").unwrap();
    json.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}),
    );
    json.remove("rope_theta");
    json.remove("rope_scaling");
    let p = llama_of(&ArchConfig::from_hf(&json).expect("Phi-3 with partial rotary loads")).clone();
    assert_eq!((p.head_dim, p.rotary_dim), (8, 6));
    let back = ArchConfig::from(p.clone()).to_hf("float32").unwrap();
    assert_eq!(back["partial_rotary_factor"].as_f64(), Some(0.75));
    assert_eq!(LlamaConfig::from_graph(&p.build()).unwrap().rotary_dim, 6);
    json.insert("model_type".into(), "llama".into());
    let e = ArchConfig::from_hf(&json).unwrap_err().to_string();
    assert!(
        e.starts_with("field 'rope_parameters.partial_rotary_factor'"),
        "{e}"
    );
}

#[test]
fn gemma3_reads_both_config_forms_and_keeps_norm_offsets_to_its_norms() {
    let c = gemma(true);
    assert_eq!(GemmaConfig::from_graph(&c.build()).unwrap(), c);
    let hub = ArchConfig::from(c.clone()).to_hf("bfloat16").unwrap();
    // transformers 5's form: one RoPE object per layer type; no layer_types (the default
    // pattern: every 6th layer global).
    let mut v5 = hub.clone();
    for k in [
        "rope_theta",
        "rope_local_base_freq",
        "rope_scaling",
        "layer_types",
    ] {
        v5.remove(k);
    }
    v5.insert(
        "rope_parameters".into(),
        serde_json::json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }),
    );
    v5.insert("sliding_window_pattern".into(), 3.into());
    assert_eq!(
        ArchConfig::from_hf(&v5).unwrap(),
        ArchConfig::from(c.clone())
    );
    // Gemma 3 soft-caps the logits when its config says so, and never the attention (as
    // transformers' Gemma 3 does).
    let mut capped = hub.clone();
    capped.insert("final_logit_softcapping".into(), 30.0.into());
    capped.insert("attn_logit_softcapping".into(), 50.0.into());
    let g = ArchConfig::from_hf(&capped).expect("a capped Gemma 3 config loads");
    let g = g.downcast_ref::<GemmaConfig>().expect("gemma").clone();
    assert_eq!(
        (g.final_logit_softcapping, g.attn_logit_softcapping),
        (Some(30.0), None)
    );
    let json = ArchConfig::from(g.clone()).to_hf("float32").unwrap();
    assert_eq!(ArchConfig::from_hf(&json).unwrap(), ArchConfig::from(g));
    let arch = ArchConfig::from(c);
    assert_eq!(
        arch.stored_offset("model.layers.0.self_attn.q_norm.weight"),
        1.0
    );
    assert_eq!(arch.stored_offset("model.norm.weight"), 1.0);
    assert_eq!(arch.stored_offset("model.layers.0.mlp.up_proj.weight"), 0.0);
    assert_eq!(
        ArchConfig::from(llama("llama", true, false)).stored_offset("model.norm.weight"),
        0.0
    );
}

#[test]
fn llama3_rope_factors_read_back_to_their_scaling() {
    // Llama 3.1 8B and Llama 3.2 1B's RoPE: what their GGUFs' rope_freqs hold reads back to
    // the same scaling.
    for (factor, head_dim) in [(8.0, 128), (32.0, 64)] {
        let mut c = llama("llama", true, false);
        c.head_dim = head_dim;
        c.rotary_dim = head_dim;
        c.rope_theta = 500000.0;
        c.max_position_embeddings = 131072;
        c.rope_scaling = shrink_ir::RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let f = llama::llama3_rope_factors(c.rope_theta, head_dim, c.rope_scaling).unwrap();
        assert_eq!(f.len(), head_dim / 2);
        assert_eq!(
            llama::llama3_from_factors(&f, c.rope_theta, head_dim),
            Ok(c.rope_scaling)
        );
        // Factors no Llama 3 scaling makes are refused by index.
        let mut bent = f.clone();
        bent[head_dim / 4] *= 1.5;
        let e = llama::llama3_from_factors(&bent, c.rope_theta, head_dim);
        assert!(e.is_err(), "{e:?}");
    }
    assert!(llama::llama3_from_factors(&[1.0, f32::NAN], 10000.0, 4).is_err());
}

#[test]
fn a_rope_factor_past_f32_is_refused_not_built() {
    // 1e300 is a finite positive JSON number that becomes f32 infinity: the config is refused
    // by the verifier's RoPE check before any graph is built (the fuzzer found the panic).
    for arch in [ArchId::Llama, ArchId::Gemma3] {
        let mut json = match arch {
            ArchId::Gemma3 => ArchConfig::from(gemma(true)).to_hf("float32").unwrap(),
            _ => ArchConfig::from(llama("llama", true, false))
                .to_hf("float32")
                .unwrap(),
        };
        json.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "linear", "factor": 1e300}),
        );
        let e = ArchConfig::from_hf(&json).unwrap_err().to_string();
        assert!(
            e.contains("rope factor inf must be positive"),
            "{arch}: {e}"
        );
    }
}

#[test]
fn yarn_reads_every_field_transformers_reads() {
    let base = ArchConfig::from(llama("qwen3", false, false))
        .to_hf("float32")
        .unwrap();
    let read = |rope: serde_json::Value| {
        let mut json = base.clone();
        json.insert("max_position_embeddings".into(), 131072.into());
        json.insert("rope_scaling".into(), rope);
        ArchConfig::from_hf(&json).map(|c| llama_of(&c).rope_scaling)
    };
    let yarn = |original_context, beta_fast, beta_slow, attention_factor: f64| {
        shrink_ir::RopeScaling::Yarn {
            factor: 4.0,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor: attention_factor as f32,
            truncate: true,
        }
    };
    let mscale = |m: f64| 0.1 * m * 4f64.ln() + 1.0;
    // Qwen's published form: the defaults, 0.1·ln(4) + 1 on cos and sin.
    let qwen = serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
    assert_eq!(read(qwen).unwrap(), yarn(32768, 32.0, 1.0, mscale(1.0)));
    // No original context: transformers takes max_position_embeddings; zero betas are defaults.
    let rope =
        serde_json::json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": 0, "beta_slow": null});
    assert_eq!(read(rope).unwrap(), yarn(131072, 32.0, 1.0, mscale(1.0)));
    // DeepSeek's mscale pair gives the attention factor when none is given.
    let rope = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5, "original_max_position_embeddings": 4096});
    assert_eq!(
        read(rope).unwrap(),
        yarn(4096, 32.0, 1.0, mscale(1.0) / mscale(0.5))
    );
    for (rope, want) in [
        (
            serde_json::json!({"rope_type": "yarn", "factor": -2.0}),
            "field 'rope_scaling.factor': -2 must be positive",
        ),
        (
            serde_json::json!({"rope_type": "yarn", "factor": 2.0, "truncate": "no"}),
            "field 'rope_scaling.truncate': invalid type: string \"no\", expected a boolean",
        ),
        (
            serde_json::json!({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0.5}),
            "field 'rope_scaling.original_max_position_embeddings': 0.5 is not a positive integer",
        ),
        (
            serde_json::json!({"rope_type": "longrope", "factor": 2.0}),
            "field 'rope_scaling.rope_type': 'longrope' is not supported (default, linear, llama3, yarn)",
        ),
    ] {
        assert_eq!(read(rope).unwrap_err().to_string(), want);
    }
    // transformers' Phi-3 reads `yarn` as longrope and refuses the rest.
    let mut phi3 = ArchConfig::from(llama("phi3", false, false))
        .to_hf("float32")
        .unwrap();
    phi3.insert(
        "rope_scaling".into(),
        serde_json::json!({"rope_type": "linear", "factor": 2.0}),
    );
    let e = ArchConfig::from_hf(&phi3).unwrap_err().to_string();
    assert!(
        e.starts_with("field 'rope_scaling.rope_type': 'linear' is not supported for phi3"),
        "{e}"
    );
}

#[test]
fn each_gguf_architecture_is_read_by_one_family() {
    let mut seen = std::collections::BTreeSet::new();
    for f in families() {
        for a in f.gguf.iter().flat_map(|g| g.archs) {
            assert!(
                seen.insert(*a),
                "GGUF architecture {a} is read by two families"
            );
        }
    }
    assert!(
        seen.contains("llama") && seen.contains("gemma3"),
        "{seen:?}"
    );
}

#[test]
fn config_json_mirrors_name_the_path_of_a_bad_field() {
    let base = ArchConfig::from(llama("llama", true, false))
        .to_hf("float32")
        .unwrap();
    let err = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut j = base.clone();
        edit(&mut j);
        ArchConfig::from_hf(&j).unwrap_err().to_string()
    };
    assert_eq!(
        err(&|j| {
            j.remove("hidden_size");
        }),
        "field 'hidden_size': missing"
    );
    assert_eq!(
        err(&|j| {
            j.remove("model_type");
        }),
        "field 'model_type': missing"
    );
    assert_eq!(
        err(&|j| {
            j.insert("num_hidden_layers".into(), (-3).into());
        }),
        "field 'num_hidden_layers': invalid value: integer `-3`, expected usize"
    );
    assert_eq!(
        err(&|j| {
            j.insert("intermediate_size".into(), serde_json::json!([64, "x", 64]));
        }),
        "field 'intermediate_size': a non-negative integer, or a list of one per layer"
    );
    assert_eq!(
        err(&|j| {
            j.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "linear", "factor": "8"}),
            );
        }),
        "field 'rope_scaling.factor': invalid type: string \"8\", expected f64"
    );
    assert_eq!(
        err(&|j| {
            j.insert("eos_token_id".into(), "</s>".into());
        }),
        "field 'eos_token_id': a token id or a list of token ids"
    );
    // Several EOS ids: the first is the one generation stops on; null is none.
    let mut j = base.clone();
    j.insert("eos_token_id".into(), serde_json::json!([7, 9]));
    j.insert("bos_token_id".into(), serde_json::Value::Null);
    let c = ArchConfig::from_hf(&j).unwrap();
    assert_eq!((c.bos_token_id(), c.eos_token_id()), (None, Some(7)));

    // Gemma 3's per-layer-type RoPE: the path goes through the layer type.
    let mut g = ArchConfig::from(gemma(true)).to_hf("float32").unwrap();
    g.remove("rope_scaling");
    g.insert(
        "rope_parameters".into(),
        serde_json::json!({"full_attention": {"rope_type": "linear", "factor": true}}),
    );
    assert_eq!(
        ArchConfig::from_hf(&g).unwrap_err().to_string(),
        "field 'rope_parameters.full_attention.factor': invalid type: boolean `true`, expected f64"
    );
    // Gemma 2: an absent cap is transformers' default, a null one none.
    let g2 = ArchConfig::from(gemma2()).to_hf("float32").unwrap();
    let caps = |j: &serde_json::Map<String, serde_json::Value>| {
        let c = ArchConfig::from_hf(j).unwrap();
        let c = c.downcast_ref::<GemmaConfig>().unwrap();
        (c.attn_logit_softcapping, c.final_logit_softcapping)
    };
    let mut j = g2.clone();
    j.remove("attn_logit_softcapping");
    j.insert("final_logit_softcapping".into(), serde_json::Value::Null);
    assert_eq!(caps(&j), (Some(50.0), None));
}
