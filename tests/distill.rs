//! The training passes on the tiny LLaMA: `distill` recovers a pruned model toward its
//! teacher, `finetune` learns the text, `--resume` continues a run from its checkpoint, and bad
//! options fail before anything runs. (Gradients against finite differences, the KD loss
//! against a direct computation and resume equality of the loop are unit tests of
//! `shrink-runtime`'s `train` module.)

use std::path::{Path, PathBuf};

use serde_json::Value;
use shrink::runtime::{Device, Engine};

use crate::common::{data, fixture, scratch, shrink};

/// Training and held-out text for the tiny model: two disjoint slices of tiny Shakespeare.
fn texts(dir: &Path) -> (PathBuf, PathBuf) {
    let all = std::fs::read_to_string(data("tinyshakespeare/input.txt")).expect("text");
    let (train, heldout) = (dir.join("train.txt"), dir.join("heldout.txt"));
    std::fs::write(&train, &all[..30_000]).expect("write");
    std::fs::write(&heldout, &all[100_000..110_000]).expect("write");
    (train, heldout)
}

fn train_options(train: &Path, heldout: &Path, extra: &str) -> String {
    format!(
        "(data: {train:?}, steps: 24, batch: 4, seq_len: 32, lr: 3e-3, warmup: 2, \
         heldout: (data: {heldout:?}, ctx: 64, chunks: 8, second_half: false){extra})"
    )
}

/// Runs `shrink run` on pipeline text; returns (exit code, JSON report or Null, stderr).
fn run(dir: &Path, name: &str, pipeline: &str, extra_args: &[&str]) -> (i32, Value, String) {
    let file = dir.join(format!("{name}.ron"));
    std::fs::write(&file, pipeline).expect("write pipeline");
    let out = dir.join(format!("{name}-out"));
    let model = fixture("tiny-llama");
    let mut args = vec![
        "run",
        file.to_str().expect("utf-8"),
        "--model",
        model.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
    ];
    args.extend_from_slice(extra_args);
    let (code, stdout, stderr) = shrink(&args);
    (
        code,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

fn mean(curve: &[Value], key: &str, range: std::ops::Range<usize>) -> f64 {
    let n = range.len() as f64;
    curve[range]
        .iter()
        .map(|p| p[key].as_f64().expect(key))
        .sum::<f64>()
        / n
}

const PRUNE: &str = r#"(pass: "prune-structured", options: (target: mlp, ratio: 0.5, importance: magnitude, allocation: uniform))"#;

#[test]
fn finetune_prune_distill_pulls_the_pruned_model_toward_its_teacher() {
    let dir = scratch("distill-tiny");
    let (train, heldout) = texts(&dir);
    // A teacher worth learning from: the random tiny model first learns the text; then it
    // loses one of its two layers.
    let teacher = train_options(&train, &heldout, "").replace("lr: 3e-3", "lr: 1e-2");
    let prune = r#"(pass: "prune-structured", options: (target: layers, layers: [0]))"#;
    let pipeline = format!(
        r#"(passes: [(pass: "finetune", options: (train: {teacher})), {prune}, (pass: "distill", options: (teacher: "prune-structured", alpha: 0.2, temperature: 2.0, hidden: [(loss: cosine, student_layer: 0, teacher_layer: 1, weight: 0.5)], train: {})) ])"#,
        train_options(&train, &heldout, "")
    );
    let (code, report, stderr) = run(&dir, "distill", &pipeline, &[]);
    assert_eq!(code, 0, "{stderr}");
    let stats = &report["passes"][2]["stats"];
    let curve = stats["curve"].as_array().expect("curve");
    assert_eq!(curve.len(), 24);
    assert_eq!(stats["tokens"], 24 * 4 * 32);
    // The KL to the teacher falls, and with it the held-out perplexity.
    let (kl0, kl1) = (mean(curve, "kl", 0..4), mean(curve, "kl", 20..24));
    assert!(kl1 < 0.5 * kl0, "KL {kl0} → {kl1}");
    let before = stats["heldout_ppl_before"].as_f64().expect("before");
    let after = stats["heldout_ppl_after"].as_f64().expect("after");
    assert!(after < before, "held-out ppl {before} → {after}");
    // The student's last layer (the teacher's second) moves toward the teacher's output.
    let (h0, h1) = (mean(curve, "hidden", 0..4), mean(curve, "hidden", 20..24));
    assert!(h1 < h0, "hidden term {h0} → {h1}");
    // The pruned, trained model is what was written, and it still verifies and runs.
    let out = shrink::import::load(&dir.join("distill-out")).expect("written model");
    out.model.verify().expect("verifies");
    let logits = Engine::new(&out.model, Device::Cpu)
        .expect("engine")
        .logits(&[vec![1, 2, 3]])
        .expect("logits");
    assert!(logits.iter().all(|x| x.is_finite()));
}

/// `quantized: scales` after `quantize`: the weights stay q4_0 with the codes
/// round-to-nearest chose, only their scales (and the norms) move, and the KL to the float
/// model falls.
#[test]
fn distill_trains_the_scales_of_a_quantized_model() {
    let dir = scratch("distill-scales");
    let (train, heldout) = texts(&dir);
    let quantize = r#"(pass: "quantize", options: (method: rtn, scheme: "q4_0"))"#;
    let (code, _, stderr) = run(&dir, "rtn", &format!("(passes: [{quantize}])"), &[]);
    assert_eq!(code, 0, "{stderr}");
    let options = train_options(
        &train,
        &heldout,
        r#", params: (include: ["*proj*", "*norm*"]), quantized: scales"#,
    )
    .replace("lr: 3e-3", "lr: 1e-2");
    let pipeline = format!(
        r#"(passes: [{quantize}, (pass: "distill", options: (alpha: 0.0, temperature: 1.0, train: {options}))])"#
    );
    let (code, report, stderr) = run(&dir, "scales", &pipeline, &[]);
    assert_eq!(code, 0, "{stderr}");
    let stats = &report["passes"][1]["stats"];
    assert_eq!(stats["tensors_scales_trained"], 14, "{stats}");
    assert_eq!(stats["tensors_widened_to_f32"], 0, "{stats}");
    let curve = stats["curve"].as_array().expect("curve");
    let (kl0, kl1) = (mean(curve, "kl", 0..4), mean(curve, "kl", 20..24));
    assert!(kl1 < 0.8 * kl0, "KL {kl0} → {kl1}");
    let before = shrink::import::load(&dir.join("rtn-out")).expect("rtn model");
    let after = shrink::import::load(&dir.join("scales-out")).expect("trained model");
    let mut moved = 0;
    for (name, ty) in before.model.graph.params() {
        let (a, b) = (
            before.model.weights.get(name).expect("data"),
            after.model.weights.get(name).expect("data"),
        );
        if ty.quant.is_none() {
            continue;
        }
        assert_eq!(
            after.model.graph.param(name),
            Some(ty),
            "{name} keeps its scheme"
        );
        // q4_0 blocks: an f16 scale, then 16 bytes of codes, which must not change.
        for (x, y) in a.bytes().chunks(18).zip(b.bytes().chunks(18)) {
            assert_eq!(x[2..], y[2..], "{name}: codes changed");
            moved += usize::from(x[..2] != y[..2]);
        }
    }
    assert!(moved > 100, "only {moved} scales moved");
}

/// `quantized: scales` on a scheme without plain scales (q4_1 keeps a minimum beside each
/// scale) is refused from the shapes, before the quantize pass before it runs.
#[test]
fn scale_training_of_a_scheme_without_plain_scales_is_refused_before_any_pass() {
    let dir = scratch("distill-scales-q4_1");
    let (train, heldout) = texts(&dir);
    let options = train_options(&train, &heldout, ", quantized: scales");
    let pipeline = format!(
        r#"(passes: [(pass: "quantize", options: (method: rtn, scheme: "q4_1")),
            (pass: "distill", options: (alpha: 0.0, train: {options}))])"#
    );
    let (code, report, stderr) = run(&dir, "q4_1", &pipeline, &[]);
    assert_ne!(code, 0, "{report}");
    // `plan:` errors come from the shapes, checked before the first pass starts.
    assert!(stderr.contains("plan: pass 1 (distill)"), "{stderr}");
    assert!(stderr.contains("stored as q4_1"), "{stderr}");
    assert!(stderr.contains("model.layers.0."), "{stderr}");
    assert!(!dir.join("q4_1-out").exists());
}

#[test]
fn finetune_learns_the_text_and_resume_continues_a_run() {
    let dir = scratch("finetune-tiny");
    let (train, heldout) = texts(&dir);
    let ckpt = dir.join("ckpt");
    let extra = format!(", checkpoint: (dir: {ckpt:?}, every: 12)");
    let pipeline = format!(
        r#"(passes: [(pass: "finetune", options: (train: {}))])"#,
        train_options(&train, &heldout, &extra)
    );
    let (code, whole, stderr) = run(&dir, "whole", &pipeline, &[]);
    assert_eq!(code, 0, "{stderr}");
    let stats = &whole["passes"][0]["stats"];
    let curve = stats["curve"].as_array().expect("curve");
    let (ce0, ce1) = (mean(curve, "ce", 0..4), mean(curve, "ce", 20..24));
    assert!(ce1 < ce0 - 0.5, "training CE {ce0} → {ce1}");
    let before = stats["heldout_ppl_before"].as_f64().expect("before");
    let after = stats["heldout_ppl_after"].as_f64().expect("after");
    assert!(after < 0.8 * before, "held-out ppl {before} → {after}");
    assert!(ckpt.join("step-000012.safetensors").is_file());

    // Resume from the middle: the curve up to the checkpoint is the recorded one, and the
    // result equals the uninterrupted run's up to the float noise of the CPU backend.
    let mid = ckpt.join("step-000012.safetensors");
    let mid = mid.to_str().expect("utf-8");
    let (code, resumed, stderr) = run(&dir, "whole", &pipeline, &["--resume", mid]);
    assert_eq!(code, 0, "{stderr}");
    let rstats = &resumed["passes"][0]["stats"];
    assert_eq!(rstats["resumed_at_step"], 12);
    assert_eq!(
        rstats["curve"].as_array().expect("curve")[..12],
        curve[..12]
    );
    let (a, b) = (after, rstats["heldout_ppl_after"].as_f64().expect("after"));
    assert!((a - b).abs() < 1e-3 * a, "held-out ppl {a} vs resumed {b}");

    // A checkpoint of another pipeline is refused before anything runs.
    let other = pipeline.replace("lr: 3e-3", "lr: 2e-3");
    let (code, _, stderr) = run(&dir, "other", &other, &["--resume", mid]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("step-000012.safetensors") && stderr.contains("no pass of this pipeline"),
        "{stderr}"
    );
}

#[test]
fn bad_training_options_fail_before_anything_runs() {
    let dir = scratch("distill-bad");
    let (train, heldout) = texts(&dir);
    let opts = train_options(&train, &heldout, "");
    let cases = [
        (
            format!(
                r#"(passes: [{PRUNE}, (pass: "distill", options: (teacher: "quantize", train: {opts}))])"#
            ),
            "no pass 'quantize' comes before it",
        ),
        (
            format!(
                r#"(passes: [{PRUNE}, (pass: "distill", options: (temperature: 0.0, train: {opts}))])"#
            ),
            "temperature 0 is out of range",
        ),
        (
            format!(
                r#"(passes: [{PRUNE}, (pass: "distill", options: (alpha: 1.5, train: {opts}))])"#
            ),
            "alpha 1.5 is not in [0, 1]",
        ),
        (
            format!(
                r#"(passes: [{PRUNE}, (pass: "finetune", options: (train: {}))])"#,
                opts.replace("lr: 3e-3", "lr: 0.0")
            ),
            "train.lr 0 is out of range",
        ),
        (
            format!(
                r#"(passes: [{PRUNE}, (pass: "finetune", options: (train: {}))])"#,
                opts.replace("lr: 3e-3", "lr: 3e-3, tokens: 100")
            ),
            "give steps or tokens, not both",
        ),
        (
            r#"(passes: [(pass: "finetune", options: (train: (steps: 3)))])"#.to_string(),
            "train.data is not set",
        ),
    ];
    for (i, (pipeline, want)) in cases.iter().enumerate() {
        let (code, _, stderr) = run(&dir, &format!("bad{i}"), pipeline, &[]);
        assert_ne!(code, 0, "case {i} ran");
        assert!(
            stderr.contains(want),
            "case {i}: want '{want}' in:\n{stderr}"
        );
        // Named with the pipeline file and position; nothing written.
        assert!(
            stderr.contains(&format!("bad{i}.ron:1:")),
            "case {i}: {stderr}"
        );
        assert!(!dir.join(format!("bad{i}-out")).exists());
    }
    // A layer the student lacks: refused when the pass starts, naming it.
    let pipeline = format!(
        r#"(passes: [(pass: "distill", options: (hidden: [(loss: mse, student_layer: 9, teacher_layer: 0, weight: 1.0)], train: {opts}))])"#
    );
    let (code, _, stderr) = run(&dir, "layer", &pipeline, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("student_layer 9, but the student has 2 layers"),
        "{stderr}"
    );
    // A text shorter than one batch: refused when the pass starts, before training.
    let short = dir.join("short.txt");
    std::fs::write(&short, "To be, or not to be").expect("write");
    let pipeline = format!(
        r#"(passes: [(pass: "finetune", options: (train: (data: {short:?}, steps: 3, batch: 4, seq_len: 32)))])"#
    );
    let (code, _, stderr) = run(&dir, "short", &pipeline, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("short.txt") && stderr.contains("fewer than one batch of 4"),
        "{stderr}"
    );
    assert!(!dir.join("short-out").exists());
}

#[test]
#[ignore = "real model: needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-smollm2.sh)"]
fn smollm2_distillation_recovers_a_damaged_prune() {
    let dir = scratch("distill-smollm2");
    let model = crate::common::smollm2();
    let calib = data("wikitext-2/calib.txt");
    let test = data("wikitext-2/test.txt");
    // 10% of every layer's MLP channels by weight norm (uniform): the damaging prune of the
    // pruning issue, milder. Then 6 steps of 2 × 128 tokens of pure KL.
    let pipeline = format!(
        r#"(passes: [
            (pass: "prune-structured", options: (target: mlp, ratio: 0.1, importance: magnitude, allocation: uniform)),
            (pass: "distill", options: (alpha: 0.0, temperature: 1.0, train: (data: {calib:?}, steps: 6, batch: 2, seq_len: 128, lr: 1e-4, warmup: 1,
                heldout: (data: {test:?}, ctx: 256, chunks: 2, second_half: true)))),
        ])"#
    );
    let file = dir.join("p.ron");
    std::fs::write(&file, pipeline).expect("write");
    let (code, stdout, stderr) = shrink(&[
        "run",
        file.to_str().expect("utf-8"),
        "--model",
        model.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    let stats = &report["passes"][1]["stats"];
    let before = stats["heldout_ppl_before"].as_f64().expect("before");
    let after = stats["heldout_ppl_after"].as_f64().expect("after");
    assert!(after < 0.9 * before, "held-out ppl {before} → {after}");
    assert_eq!(
        stats["trained_params"].as_u64(),
        report["passes"][1]["params"].as_u64()
    );
}
