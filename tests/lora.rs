//! LoRA: PEFT's trainable-parameter line on GPT-2, PEFT adapters (written by PEFT,
//! `fixtures/lora/make_peft_golden.py`) giving PEFT's logits, export that reads back the same,
//! folding equal to the adapters applied (dense exactly; quantized with the error reported),
//! adapter-only training (LoRA and QLoRA), the IR text, and bad input.

use std::path::Path;

use serde_json::Value;
use shrink::ir::{lora, Model};
use shrink::runtime::{Device, Engine};

use crate::common::{data, fixture, golden, run_in_process, run_on, scratch, shrink};

const MODELS: [&str; 2] = ["tiny-llama", "tiny-gpt2"];

fn logits(model: &Model, ids: &[Vec<u32>]) -> Vec<f32> {
    Engine::new(model, Device::Cpu)
        .expect("engine")
        .logits(ids)
        .expect("logits")
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

/// Golden input ids and PEFT's logits (adapter applied) of a tiny model.
fn peft_golden(name: &str) -> (Vec<Vec<u32>>, Vec<f32>) {
    let path = fixture("lora/golden.safetensors");
    let (shape, ids) = golden(&path, &format!("{name}.input_ids"));
    let ids = ids
        .chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect();
    let (_, l) = golden(&path, &format!("{name}.logits"));
    (ids, l.into_iter().map(|v| v as f32).collect())
}

/// The tiny base model with PEFT's golden adapter applied.
fn with_golden_adapter(name: &str) -> Model {
    let mut model = shrink::import::load(&fixture(name)).expect("base").model;
    let n = shrink::import::peft::apply(&mut model, &fixture(&format!("lora/{name}-adapter")))
        .expect("apply adapter");
    assert_eq!(n, if name == "tiny-gpt2" { 4 } else { 14 });
    model
}

#[test]
fn seed_example_prints_peft_trainable_line_on_gpt2() {
    let (code, stdout, stderr) = shrink(&["run", "pipelines/seed-lora-gpt2.ron"]);
    assert_eq!(code, 0, "{stderr}");
    // The line PEFT prints for the same model and config (fixtures/lora/peft_count_gpt2.py).
    let line = "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364";
    assert!(
        stdout.lines().any(|l| l == line),
        "no exact PEFT line in:\n{stdout}"
    );
}

#[test]
fn peft_adapters_give_peft_logits() {
    for name in MODELS {
        let model = with_golden_adapter(name);
        let (ids, want) = peft_golden(name);
        let got = logits(&model, &ids);
        let d = max_diff(&got, &want);
        eprintln!("{name}: max |shrink - PEFT| {d:.3e}");
        assert!(d <= 1e-4, "{name}: max |logit - PEFT| = {d:.3e}");
        // The adapter matters: without it the logits are far from PEFT's.
        let base = shrink::import::load(&fixture(name)).expect("base").model;
        assert!(max_diff(&logits(&base, &ids), &want) > 0.1, "{name}");
    }
}

#[test]
fn exported_adapters_read_back_with_peft_names_and_config() {
    for name in MODELS {
        let model = with_golden_adapter(name);
        let dir = scratch(&format!("lora-export-{name}"));
        let out = dir.join("adapter");
        shrink::export::peft::write_adapter(&model, &format!("fixtures/{name}"), &out)
            .expect("export");
        // The same tensor names and shapes as PEFT's own file.
        let keys = |d: &Path| -> Vec<(String, Vec<usize>)> {
            let bytes = std::fs::read(d.join("adapter_model.safetensors")).expect("read");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            let mut k: Vec<_> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec()))
                .collect();
            k.sort();
            k
        };
        let golden_dir = fixture(&format!("lora/{name}-adapter"));
        assert_eq!(keys(&out), keys(&golden_dir), "{name}");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).expect("config"),
        )
        .expect("json");
        let peft: Value = serde_json::from_str(
            &std::fs::read_to_string(golden_dir.join("adapter_config.json")).expect("config"),
        )
        .expect("json");
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["r"], peft["r"]);
        assert_eq!(config["target_modules"], peft["target_modules"], "{name}");
        assert_eq!(config["fan_in_fan_out"], peft["fan_in_fan_out"], "{name}");
        // The scale, whether PEFT wrote it as rsLoRA or not.
        let scale = |c: &Value| {
            let (a, r) = (
                c["lora_alpha"].as_f64().expect("alpha"),
                c["r"].as_f64().expect("r"),
            );
            if c["use_rslora"] == true {
                a / r.sqrt()
            } else {
                a / r
            }
        };
        assert!((scale(&config) - scale(&peft)).abs() < 1e-6, "{name}");
        // Read back onto a fresh base: PEFT's logits again.
        let mut again = shrink::import::load(&fixture(name)).expect("base").model;
        shrink::import::peft::apply(&mut again, &out).expect("apply exported");
        let (ids, want) = peft_golden(name);
        let d = max_diff(&logits(&again, &ids), &want);
        assert!(d <= 1e-4, "{name}: re-imported max diff {d:.3e}");
    }
}

/// Runs `lora-fold` with `options` on a copy of `model`; returns it and the report figures.
fn fold_pass(model: &Model, options: &str) -> Result<(Model, Value), String> {
    let registry = shrink::passes::Registry::builtin();
    let repo = crate::common::repo();
    let info = registry.get("lora-fold").expect("registered");
    let raw = ron::value::RawValue::from_ron(options).map_err(|e| e.to_string())?;
    let pass = (info.build)(Some(raw)).map_err(|e| e.to_string())?;
    let mut out = model.clone();
    let before = std::collections::BTreeMap::new();
    let mut progress = shrink::passes::NoProgress;
    let mut cx = shrink::passes::PassContext {
        device: Device::Cpu,
        original: model,
        before: &before,
        index: 0,
        resume: None,
        tokenizer: None,
        rng: <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
        base_dir: &repo,
        load_model: None,
        progress: &mut progress,
    };
    let report = pass.run(&mut out, &mut cx).map_err(|e| e.to_string())?;
    out.verify().map_err(|e| e.to_string())?;
    Ok((out, serde_json::to_value(&report.stats).expect("json")))
}

#[test]
fn folding_equals_the_adapters_applied() {
    for name in MODELS {
        let model = with_golden_adapter(name);
        let (ids, _) = peft_golden(name);
        let want = logits(&model, &ids);
        let (folded, stats) = fold_pass(&model, "(quantized: requantize)").expect("fold");
        assert!(lora::adapters(&folded).is_empty());
        assert_eq!(stats["folded"], lora::adapters(&model).len());
        // Same parameter count as the base: the adapters are gone.
        let base = shrink::import::load(&fixture(name)).expect("base").model;
        assert_eq!(folded.size().params, base.size().params);
        let d = max_diff(&logits(&folded, &ids), &want);
        eprintln!("{name}: max |folded - adapters| {d:.3e}");
        assert!(d <= 1e-4, "{name}: folded vs adapters max diff {d:.3e}");
    }
}

#[test]
fn folding_onto_a_quantized_base_requantizes_and_reports_or_refuses() {
    // Q8_0 base (tiny-llama's rows are 64 or 160 wide: multiples of 32), PEFT adapter on it.
    let (_, mut q, _) = run_in_process(
        &fixture("tiny-llama"),
        "(pass: \"quantize\", options: (method: rtn, scheme: \"q8_0\"))",
    )
    .expect("quantize");
    shrink::import::peft::apply(&mut q, &fixture("lora/tiny-llama-adapter")).expect("apply");
    let (ids, _) = peft_golden("tiny-llama");
    let want = logits(&q, &ids);
    let (folded, stats) = fold_pass(&q, "(quantized: requantize)").expect("fold");
    let req = stats["requantized"].as_object().expect("per-tensor report");
    assert_eq!(req.len(), 14);
    for (name, r) in req {
        assert_eq!(r["scheme"], "q8_0", "{name}");
        let (e, u) = (
            r["rms_error"].as_f64().expect("rms"),
            r["update_rms"].as_f64().expect("u"),
        );
        // Q8_0 rounding: far below the update it carries, but not zero.
        assert!(
            e > 0.0 && e < 0.05 * u,
            "{name}: rms error {e} vs update {u}"
        );
    }
    assert!(folded
        .graph
        .params()
        .iter()
        .filter(|(n, _)| n.contains("_proj"))
        .all(|(_, t)| t.quant.is_some()));
    let d = max_diff(&logits(&folded, &ids), &want);
    assert!(d > 0.0 && d < 0.1, "requantized fold diff {d}");
    // Dequantize: exact, in f32.
    let (exact, _) = fold_pass(&q, "(quantized: dequantize)").expect("fold");
    let d = max_diff(&logits(&exact, &ids), &want);
    assert!(d <= 1e-4, "dequantized fold diff {d:.3e}");
    // Refuse: the error names the module.
    let err = fold_pass(&q, "(quantized: refuse)").expect_err("refused");
    assert!(
        err.contains("model.layers.0.") && err.contains("quantized"),
        "{err}"
    );
}

/// `shrink run` of pipeline text on a tiny model; returns (exit code, JSON report, stderr).
fn run(name: &str, model: &str, pipeline: &str, out: Option<&str>) -> (i32, Value, String) {
    let dir = scratch(&format!("lora-run-{name}"));
    let file = dir.join("p.ron");
    std::fs::write(&file, pipeline).expect("write");
    let model = fixture(model);
    let out_path = dir.join(out.unwrap_or("out"));
    let (code, stdout, stderr) = shrink(&[
        "run",
        file.to_str().expect("utf-8"),
        "--model",
        model.to_str().expect("utf-8"),
        "--out",
        out_path.to_str().expect("utf-8"),
        "--json",
    ]);
    (
        code,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

fn train_text() -> (String, String) {
    let dir = scratch("lora-texts");
    let all = std::fs::read_to_string(data("tinyshakespeare/input.txt")).expect("text");
    let (t, h) = (dir.join("train.txt"), dir.join("heldout.txt"));
    std::fs::write(&t, &all[..30_000]).expect("write");
    std::fs::write(&h, &all[100_000..110_000]).expect("write");
    (t.display().to_string(), h.display().to_string())
}

#[test]
fn lora_and_qlora_train_the_adapters_alone() {
    let (train, heldout) = train_text();
    let ft = format!(
        "(pass: \"finetune\", options: (train: (data: {train:?}, steps: 24, batch: 4, seq_len: 32, \
         lr: 1e-2, warmup: 2, heldout: (data: {heldout:?}, ctx: 64, chunks: 8, second_half: false))))"
    );
    let lora = "(pass: \"lora\", options: (r: 4, alpha: 8.0, dropout: 0.1, seed: 3))";
    // Distillation from the model before the adapters (the input model), adapters alone trained.
    let kd = ft.replace("\"finetune\"", "\"distill\"").replace(
        "options: (train:",
        "options: (alpha: 0.5, temperature: 2.0, train:",
    );
    for (label, prefix, train) in [
        ("lora", String::new(), &ft),
        (
            "qlora",
            "(pass: \"quantize\", options: (method: rtn, scheme: \"nf4_b32\")),".to_string(),
            &ft,
        ),
        ("lora-distill", String::new(), &kd),
    ] {
        let p = format!("(passes: [{prefix} {lora}, {train}], output_format: \"peft-adapter\")");
        let (code, report, stderr) = run(label, "tiny-llama", &p, Some("adapter"));
        assert_eq!(code, 0, "{label}: {stderr}");
        let passes = report["passes"].as_array().expect("passes");
        let (l, f) = (
            &passes[passes.len() - 2]["stats"],
            &passes[passes.len() - 1]["stats"],
        );
        // Only the adapters trained: 14 linears, A [4, in] + B [out, 4].
        assert_eq!(f["trained_params"], l["trainable_params"], "{label}");
        assert_eq!(l["adapters"], 14);
        let (before, after) = (
            f["heldout_ppl_before"].as_f64().expect("before"),
            f["heldout_ppl_after"].as_f64().expect("after"),
        );
        assert!(after < 0.95 * before, "{label}: ppl {before} -> {after}");
        // The adapter written applies onto the base: on the float base it scores what the
        // trained model scored (for QLoRA the base it trained over was NF4, so only that it
        // applies).
        let out = report["outputs"][0].as_str().expect("output");
        let base = fixture("tiny-llama");
        let (code, stdout, stderr) = shrink(&[
            "eval",
            "--model",
            base.to_str().expect("utf-8"),
            "--adapter",
            out,
            "--data",
            &heldout,
            "--ctx",
            "64",
            "--chunks",
            "8",
            "--json",
        ]);
        assert_eq!(code, 0, "{label}: {stderr}");
        let e: Value = serde_json::from_str(&stdout).expect("eval json");
        let with_adapter = e["ppl"].as_f64().expect("ppl");
        if label == "qlora" {
            assert!(with_adapter.is_finite(), "{label}: {with_adapter}");
        } else {
            assert!(
                (with_adapter - after).abs() <= 1e-4 * after,
                "{label}: the adapter scores {with_adapter} on the base, the trained model {after}"
            );
        }
    }
    // QLoRA folded: NF4 weights requantized with the update, errors reported.
    let p = format!(
        "(passes: [(pass: \"quantize\", options: (method: rtn, scheme: \"nf4_b32\")), {lora}, {ft}, \
         (pass: \"lora-fold\")])"
    );
    let (code, report, stderr) = run("qlora-fold", "tiny-llama", &p, None);
    assert_eq!(code, 0, "{stderr}");
    let fold = &report["passes"][3]["stats"];
    assert_eq!(fold["requantized"].as_object().map(|m| m.len()), Some(14));
}

#[test]
fn the_ir_text_shows_adapters_on_their_linear_and_parses_back() {
    let model = with_golden_adapter("tiny-llama");
    let text = shrink::ir::text::print(&model.graph);
    let line = text
        .lines()
        .find(|l| l.contains("q_proj.weight") && l.contains("linear"))
        .expect("q_proj line");
    assert!(
        line.contains("lora_a=model.layers.0.self_attn.q_proj.lora_A.weight")
            && line.contains("lora_b=model.layers.0.self_attn.q_proj.lora_B.weight")
            && line.contains("lora_scale=2.0"),
        "{line}"
    );
    let parsed = shrink::ir::text::parse(&text).expect("parse");
    assert_eq!(shrink::ir::text::print(&parsed), text);
}

#[test]
fn bad_lora_input_is_refused_with_the_module_named() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "no-match",
            "(passes: [(pass: \"lora\", options: (targets: [\"qq_proj\"]))], output_format: \"peft-adapter\")",
            "target 'qq_proj' matches no linear",
        ),
        (
            "rank",
            "(passes: [(pass: \"lora\", options: (r: 80, targets: [\"k_proj\"]))], output_format: \"peft-adapter\")",
            "model.layers.0.self_attn.k_proj: r = 80 is larger",
        ),
        (
            "fold-first",
            "(passes: [(pass: \"lora-fold\")])",
            "no 'lora' pass comes before it",
        ),
        (
            "gguf-with-adapters",
            "(passes: [(pass: \"lora\")], output: \"x.gguf\")",
            "still carries LoRA adapters",
        ),
        (
            "adapter-without-lora",
            "(passes: [(pass: \"cast\", options: (to: f32))], output_format: \"peft-adapter\")",
            "has no LoRA adapters",
        ),
    ];
    for (name, p, want) in cases {
        let out = if name == "gguf-with-adapters" {
            Some("x.gguf")
        } else {
            None
        };
        let (code, _, stderr) = run(name, "tiny-llama", p, out);
        assert_ne!(code, 0, "{name}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    // Adapters that do not fit the base, and configs PEFT features shrink does not run.
    let dir = scratch("lora-bad-adapters");
    let copy = |name: &str, edit: &dyn Fn(&mut Value)| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        let src = fixture("lora/tiny-llama-adapter");
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            d.join("adapter_model.safetensors"),
        )
        .expect("copy");
        let mut c: Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).expect("config"),
        )
        .expect("json");
        edit(&mut c);
        std::fs::write(d.join("adapter_config.json"), c.to_string()).expect("write");
        d
    };
    let base = || {
        shrink::import::load(&fixture("tiny-llama"))
            .expect("base")
            .model
    };
    let err = |d: &Path| {
        shrink::import::peft::apply(&mut base(), d)
            .expect_err("refused")
            .to_string()
    };
    let e = err(&copy("dora", &|c| c["use_dora"] = true.into()));
    assert!(e.contains("field 'use_dora'"), "{e}");
    let e = err(&copy("rank", &|c| c["r"] = 8.into()));
    assert!(
        e.contains("model.layers.0.mlp.down_proj") && e.contains("r = 8"),
        "{e}"
    );
    // An adapter for the full model onto one whose MLPs were pruned to half: A no longer fits.
    let (_, mut pruned, _) = run_in_process(
        &fixture("tiny-llama"),
        "(pass: \"prune-structured\", options: (target: mlp, ratio: 0.5, importance: magnitude, allocation: uniform))",
    )
    .expect("prune");
    let e = shrink::import::peft::apply(&mut pruned, &fixture("lora/tiny-llama-adapter"))
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.down_proj")
            && e.contains("do not fit the base weight [64, 80]"),
        "{e}"
    );
    // The GPT-2 adapter onto the LLaMA: no such module.
    let e = shrink::import::peft::apply(&mut base(), &fixture("lora/tiny-gpt2-adapter"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("transformer.h.0.attn.c_attn"), "{e}");
    // `--adapter` on the command line says the same.
    let (code, _, stderr) = shrink(&[
        "eval",
        "--model",
        "fixtures/tiny-llama",
        "--adapter",
        "fixtures/lora/tiny-gpt2-adapter",
        "--data",
        "data/tinyshakespeare/heldout.txt",
        "--chunks",
        "1",
        "--ctx",
        "64",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("transformer.h.0.attn.c_attn"), "{stderr}");
}

#[test]
fn eval_and_generate_apply_an_adapter_directory() {
    let args = |adapter: bool| {
        let mut a = vec![
            "eval",
            "--model",
            "fixtures/tiny-llama",
            "--data",
            "data/tinyshakespeare/heldout.txt",
            "--ctx",
            "64",
            "--chunks",
            "4",
            "--json",
        ];
        if adapter {
            a.extend(["--adapter", "fixtures/lora/tiny-llama-adapter"]);
        }
        a
    };
    let ppl = |adapter: bool| {
        let (code, stdout, stderr) = shrink(&args(adapter));
        assert_eq!(code, 0, "{stderr}");
        let v: Value = serde_json::from_str(&stdout).expect("json");
        v["ppl"].as_f64().expect("ppl")
    };
    let (plain, adapted) = (ppl(false), ppl(true));
    // The random adapter moves the logits by ~1: the perplexity changes.
    assert!((plain - adapted).abs() > 1.0, "{plain} vs {adapted}");
    let gen = |adapter: bool| {
        let mut a = vec![
            "generate",
            "--model",
            "fixtures/tiny-llama",
            "--prompt",
            "First Citizen:",
            "--max-tokens",
            "8",
        ];
        if adapter {
            a.extend(["--adapter", "fixtures/lora/tiny-llama-adapter"]);
        }
        let (code, stdout, stderr) = shrink(&a);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    assert_ne!(gen(false), gen(true));
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn smollm2_random_adapters_fold_to_the_same_logits() {
    let dir = scratch("lora-smollm2");
    let model = crate::common::smollm2();
    let adapter = dir.join("adapter");
    let folded = dir.join("folded");
    for (p, out) in [
        ("pipelines/smollm2-lora-random.ron", &adapter),
        ("pipelines/smollm2-lora-random-fold.ron", &folded),
    ] {
        let (code, _, stderr) = shrink(&[
            "run",
            p,
            "--model",
            model.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{p}: {stderr}");
    }
    let mut with = shrink::import::load(&model).expect("base").model;
    let n = shrink::import::peft::apply(&mut with, &adapter).expect("apply");
    assert_eq!(n, 30 * 7);
    let folded = shrink::import::load(&folded).expect("folded").model;
    assert!(lora::adapters(&folded).is_empty());
    let ids: Vec<Vec<u32>> = vec![(0..48).map(|i| (i * 997 + 13) % 49152).collect()];
    let (a, b) = (logits(&with, &ids), logits(&folded, &ids));
    let base = logits(&shrink::import::load(&model).expect("base").model, &ids);
    assert!(max_diff(&a, &base) > 0.1, "random B must change the logits");
    let d = max_diff(&a, &b);
    eprintln!(
        "SmolLM2: max |adapters - base| {:.3e}, max |folded - adapters| {d:.3e}",
        max_diff(&a, &base)
    );
    assert!(d <= 1e-4, "SmolLM2: folded vs adapters max diff {d:.3e}");
}

#[test]
fn fresh_adapters_leave_the_output_unchanged() {
    for name in MODELS {
        let (base, with, records) = run_in_process(
            &fixture(name),
            "(pass: \"lora\", options: (r: 4, alpha: 16.0, rslora: true))",
        )
        .expect("lora");
        // all-linear: every linear but the output head.
        let linears = if name == "tiny-gpt2" { 8 } else { 14 };
        assert_eq!(lora::adapters(&with).len(), linears, "{name}");
        assert_eq!(records[0].stats["scale"], 8.0);
        let (ids, _) = peft_golden(name);
        assert_eq!(logits(&base, &ids), logits(&with, &ids), "{name}");
    }
}

/// Root-mean-square difference of two logit vectors.
fn rms_diff(a: &[f32], b: &[f32]) -> f64 {
    let se: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (se / a.len().max(1) as f64).sqrt()
}

#[test]
fn gptq_fold_keeps_more_of_a_small_update_than_round_to_nearest() {
    // A q4_0 base with adapters whose update is of the order of q4_0's rounding step:
    // requantizing by round-to-nearest rounds most of it away; GPTQ on calibration text
    // compensates each column's rounding in the others and keeps more of it.
    let loaded = shrink::import::load(&crate::common::repo().join("fixtures/shakespeare-llama"))
        .expect("bundled model");
    let tok = loaded.tokenizer.as_ref().expect("tokenizer");
    let base = "(pass: \"quantize\", options: (method: rtn, scheme: \"q4_0\")), \
                (pass: \"lora\", options: (r: 8, alpha: 1.0, init: random, seed: 3))";
    let (_, adapted, _) = run_on(loaded.model.clone(), Some(tok), base).expect("lora");
    let text =
        std::fs::read_to_string(crate::common::repo().join("data/tinyshakespeare/heldout.txt"))
            .expect("heldout");
    let all = tok.clone().encode(&text[..20_000], false).expect("encode");
    let ids: Vec<Vec<u32>> = all.chunks(64).take(8).map(<[u32]>::to_vec).collect();
    let want = logits(&adapted, &ids);
    let plain = {
        let mut m = adapted.clone();
        for a in lora::adapters(&adapted) {
            lora::detach(&mut m, a.node);
        }
        logits(&m, &ids)
    };
    let calib =
        "calibration: (data: \"data/tinyshakespeare/train.txt\", samples: 16, seq_len: 128)";
    let fold = |how: &str| {
        let (_, m, records) = run_on(
            loaded.model.clone(),
            Some(tok),
            &format!("{base}, (pass: \"lora-fold\", options: (quantized: {how}, {calib}))"),
        )
        .expect("fold");
        assert!(lora::adapters(&m).is_empty());
        assert!(m
            .graph
            .params()
            .iter()
            .filter(|(n, _)| n.contains("_proj"))
            .all(|(_, t)| t.quant.map(|q| q.to_string()) == Some("q4_0".into())));
        (rms_diff(&logits(&m, &ids), &want), records[2].stats.clone())
    };
    let update = rms_diff(&plain, &want);
    let (rtn, _) = fold("requantize");
    let (gptq, stats) = fold("gptq");
    eprintln!("update {update:.4}, left by requantize {rtn:.4}, by gptq {gptq:.4}");
    let ratio = stats["requantized_by_gptq"]["output_error_vs_rtn"]
        .as_f64()
        .expect("output error vs rtn");
    assert!(ratio < 1.0, "GPTQ's output error against RTN's: {ratio}");
    assert!(
        rtn > 0.3 * update,
        "the update is not below the rounding step: {rtn} vs {update}"
    );
    assert!(gptq < 0.8 * rtn, "gptq fold {gptq} vs requantize {rtn}");
    // Without calibration text the pipeline is refused when read.
    let err = run_on(
        loaded.model.clone(),
        Some(tok),
        &format!("{base}, (pass: \"lora-fold\", options: (quantized: gptq))"),
    )
    .expect_err("refused");
    assert!(err.contains("calibration.data"), "{err}");
    let err = run_on(
        loaded.model.clone(),
        Some(tok),
        &format!(
            "{base}, (pass: \"lora-fold\", options: (quantized: gptq, calibration: (data: [])))"
        ),
    )
    .expect_err("refused");
    assert!(err.contains("calibration.data"), "{err}");
}
