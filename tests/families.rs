//! Every pass over every family: each tiny fixture through quantization (AWQ, GPTQ), pruning
//! (Wanda 2:4; structured heads and MLP), LoRA fine-tuning folded back, and distillation, by
//! `shrink run`; each written output (a Hugging Face directory, and for ggml-typed quantization
//! a GGUF file too) must load back, verify and give finite logits.

use shrink::runtime::{Device, Engine};

use crate::common::{data, fixture, scratch, shrink};

/// Every architecture's tiny fixture, and the linears LoRA targets in it.
const FAMILIES: [(&str, &str); 8] = [
    ("tiny-llama", r#"["q_proj", "v_proj", "down_proj"]"#),
    ("tiny-llama3", r#"["q_proj", "v_proj"]"#),
    ("tiny-qwen2", r#"["q_proj", "v_proj"]"#),
    ("tiny-qwen3", r#"["q_proj", "k_proj", "up_proj"]"#),
    ("tiny-phi3", r#"["q_proj", "gate_proj"]"#),
    ("tiny-gemma2", r#"["q_proj", "o_proj"]"#),
    ("tiny-gemma3", r#"["k_proj", "down_proj"]"#),
    ("tiny-gpt2", r#"["c_attn", "c_fc"]"#),
];

/// The pipelines, by name: `{data}` is the training text, `{targets}` the LoRA targets.
const PIPELINES: [(&str, &str); 5] = [
    (
        "awq-q4_0",
        r#"(passes: [(pass: "quantize", options: (method: awq, scheme: "q4_0",
            calibration: (data: "{data}", samples: 4, seq_len: 32)))])"#,
    ),
    (
        "gptq-int4",
        r#"(passes: [(pass: "quantize", options: (method: gptq, scheme: "int4_g32_asym",
            calibration: (data: "{data}", samples: 4, seq_len: 32)))])"#,
    ),
    (
        "wanda-2of4",
        r#"(passes: [(pass: "prune", options: (criterion: wanda, nm: (2, 4),
            calibration: (data: "{data}", samples: 4, seq_len: 32)))])"#,
    ),
    (
        "structured-then-distill",
        r#"(passes: [
            (pass: "prune-structured", options: (target: mlp, ratio: 0.25, importance: magnitude,
                allocation: uniform, multiple: 8)),
            (pass: "distill", options: (teacher: "prune-structured", alpha: 0.5,
                train: (data: "{data}", steps: 2, batch: 1, seq_len: 32, lr: 1e-3, warmup: 0))),
        ])"#,
    ),
    (
        "lora-finetune-fold",
        r#"(passes: [
            (pass: "lora", options: (r: 4, alpha: 8.0, init: random, seed: 1, targets: {targets})),
            (pass: "finetune", options: (
                train: (data: "{data}", steps: 2, batch: 1, seq_len: 32, lr: 1e-3, warmup: 0))),
            (pass: "lora-fold"),
        ])"#,
    ),
];

/// The logits of the model at `model` on `text`: all finite, or the test fails.
fn finite_logits(model: &std::path::Path, text: &[Vec<u32>]) -> Vec<f32> {
    let loaded = shrink::import::load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    loaded.model.verify().expect("the output verifies");
    let engine = Engine::new(&loaded.model, Device::Cpu).expect("engine");
    let logits = engine.logits(text).expect("forward");
    assert!(
        logits.iter().all(|x| x.is_finite()),
        "{}: non-finite logits",
        model.display()
    );
    logits
}

#[test]
fn every_pass_runs_on_every_family() {
    let train = data("tinyshakespeare/train.txt");
    let ids = vec![(0..20u32).map(|i| (i * 53 + 7) % 384).collect::<Vec<_>>()];
    let dir = scratch("families");
    for (family, targets) in FAMILIES {
        for (name, text) in PIPELINES {
            let text = text
                .replace("{data}", &train.to_string_lossy())
                .replace("{targets}", targets);
            let pipeline = dir.join(format!("{family}-{name}.ron"));
            std::fs::write(&pipeline, text).expect("write pipeline");
            let out = dir.join(format!("{family}-{name}"));
            let model = fixture(family);
            let (code, _, stderr) = shrink(&[
                "run",
                pipeline.to_str().expect("utf-8"),
                "--model",
                model.to_str().expect("utf-8"),
                "--out",
                out.to_str().expect("utf-8"),
            ]);
            assert_eq!(code, 0, "{family} / {name}: {stderr}");
            finite_logits(&out, &ids);
        }
    }
    // GGUF outputs of ggml-typed quantization, for the families llama.cpp holds as they are
    // (the Gemma fixtures' query_pre_attn_scalar is not the one llama.cpp assumes).
    for family in [
        "tiny-llama",
        "tiny-llama3",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-phi3",
    ] {
        let pipeline = dir.join(format!("{family}-awq-q4_0.ron"));
        let out = dir.join(format!("{family}-awq-q4_0.gguf"));
        let model = fixture(family);
        let (code, _, stderr) = shrink(&[
            "run",
            pipeline.to_str().expect("utf-8"),
            "--model",
            model.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{family} / GGUF: {stderr}");
        finite_logits(&out, &ids);
    }
}
