//! Pipelines: files, errors with positions, the pass manager's dumps and reproducers, exports.

use std::path::{Path, PathBuf};

use shrink_passes::{Pass, PassContext, PassError, PassInfo, PassReport, Registry};
use shrink_pipeline::instrument::IrDump;
use shrink_pipeline::{Instrumentation, Pipeline, RunOptions};
use shrink_runtime::{Device, Engine};

use crate::common::{fixture, repo, scratch, shrink};

fn pipeline_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("pipelines"))
        .expect("pipelines/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_pipeline_round_trips_through_its_canonical_form() {
    let registry = Registry::builtin();
    let files = pipeline_files();
    assert!(files.len() >= 2);
    for f in files {
        let p = Pipeline::from_file(&f, &registry).unwrap_or_else(|e| panic!("{e}"));
        let canonical = p.canonical();
        let again = Pipeline::parse(&f, &canonical, &registry).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.canonical(), canonical, "{}", f.display());
        assert_eq!(again.passes.len(), p.passes.len());
    }
}

/// Writes a pipeline into a scratch dir and runs `shrink run` on it; returns (code, stderr).
fn run_bad(name: &str, text: &str) -> (i32, String, PathBuf) {
    let dir = scratch(name);
    let path = dir.join("p.ron");
    std::fs::write(&path, text).expect("write");
    let out = dir.join("out.gguf");
    let (code, _, stderr) = shrink(&[
        "run",
        path.to_str().expect("utf-8"),
        "--model",
        fixture("tiny-llama").to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!out.exists(), "nothing may be written");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (code, stderr, path)
}

#[test]
fn unknown_pass_fails_with_position_before_any_pass_runs() {
    let text = "(\n    passes: [\n        (pass: \"cast\"),\n        (pass: \"quantise\", options: (bits: 4)),\n    ],\n)\n";
    let (code, stderr, path) = run_bad("p-unknown-pass", text);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}:4:16: unknown pass 'quantise' (known: cast, dead-code, distill, finetune, lora, lora-fold, prune, prune-structured, quantize)",
            path.display()
        )
    );
}

#[test]
fn misspelt_option_fails_with_position() {
    let text = "(\n    passes: [\n        (pass: \"cast\", options: (to: f16, exclde: [\"*norm*\"])),\n    ],\n)\n";
    let (code, stderr, path) = run_bad("p-misspelt", text);
    assert_eq!(code, 1);
    let want = format!(
        "error: {}:3:49: pass 'cast': Unexpected field named `exclde`",
        path.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
}

/// Nested option structs refuse unknown fields too (a misspelt `exclude` once passed silently),
/// and `exclude` may be left out.
#[test]
fn misspelt_nested_option_fails_with_position() {
    let text = "(\n    passes: [\n        (pass: \"cast\", options: (to: f16)),\n        (pass: \"finetune\", options: (train: (data: \"t.txt\", params: (include: [\"*norm*\"], exlude: [])))),\n    ],\n)\n";
    let (code, stderr, path) = run_bad("p-misspelt-nested", text);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("error: {}:4:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("Unexpected field named `exlude`"),
        "{stderr}"
    );
    let text = "(\n    passes: [\n        (pass: \"finetune\", options: (train: (data: \"t.txt\", params: (include: [\"*norm*\"])))),\n    ],\n)\n";
    let (code, stderr, _) = run_bad("p-include-only", text);
    assert_eq!(code, 1);
    // Past parsing: the missing data file is what stops it.
    assert!(stderr.contains("t.txt"), "{stderr}");
    assert!(
        stderr.contains("does not exist") && !stderr.contains("missing field"),
        "{stderr}"
    );
}

#[test]
fn mistyped_option_fails_with_position() {
    let text =
        "(\n    passes: [\n        (pass: \"cast\",\n         options: (to: f61)),\n    ],\n)\n";
    let (code, stderr, path) = run_bad("p-mistyped", text);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("error: {}:4:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("f61"), "{stderr}");
}

#[test]
fn missing_data_file_fails_with_position() {
    let text =
        "(\n    passes: [(pass: \"dead-code\")],\n    eval: (data: \"no-such.txt\", ctx: 64),\n)\n";
    let (code, stderr, path) = run_bad("p-missing-file", text);
    assert_eq!(code, 1);
    let want = format!(
        "error: {}:3:18: eval data file '{}' does not exist",
        path.display(),
        path.parent().expect("dir").join("no-such.txt").display()
    );
    assert_eq!(stderr.trim(), want);
}

#[test]
fn missing_model_named_by_the_pipeline_fails_with_position() {
    let dir = scratch("p-missing-model");
    let path = dir.join("p.ron");
    std::fs::write(&path, "(\n  model: \"nope.gguf\",\n  passes: [],\n)\n").expect("write");
    let (code, _, stderr) = shrink(&["run", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("error: {}:2:10: model '", path.display())),
        "{stderr}"
    );
}

#[test]
fn syntax_error_fails_with_position() {
    let (code, stderr, path) = run_bad(
        "p-syntax",
        "(\n    passes: [\n        (pass: \"cast\",\n    ],\n)\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("error: {}:4:", path.display())),
        "{stderr}"
    );
}

#[test]
fn ir_dumps_of_a_pipeline_run() {
    let dir = scratch("dump-gpt2");
    let dump = dir.join("ir");
    let out = dir.join("out");
    let (code, stdout, stderr) = shrink(&[
        "run",
        "pipelines/tiny-llama-f16.ron",
        "--model",
        "fixtures/tiny-gpt2",
        "--out",
        out.to_str().expect("utf-8"),
        "--dump-ir",
        dump.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let names: Vec<&str> = report["passes"]
        .as_array()
        .expect("passes")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["cast", "dead-code"]);
    assert_eq!(report["passes"][0]["stats"]["params_cast"], 10);
    assert!(report["eval"]["ppl"].as_f64().expect("ppl") > 1.0);
    let mut files: Vec<String> = std::fs::read_dir(&dump)
        .expect("dump dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["00_input.ir", "01_cast.ir", "02_dead-code.ir"]);
    for f in files {
        let text = std::fs::read_to_string(dump.join(&f)).expect("dump");
        // The first line names the input by absolute path: keep the snapshot machine-free.
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("; input model:") {
                    "; input model: <path>"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(format!("dump_gpt2_{f}"), text);
    }
}

/// A pass that always fails, registered by the test (the registry is a value, not a global).
struct Breaks;

impl Pass for Breaks {
    fn name(&self) -> &'static str {
        "breaks"
    }
    fn options(&self) -> String {
        "()".into()
    }
    fn run(
        &self,
        _: &mut shrink_ir::Model,
        _: &mut PassContext<'_>,
    ) -> Result<PassReport, PassError> {
        Err(PassError::Failed {
            pass: "breaks",
            message: "on purpose".into(),
        })
    }
}

#[test]
fn a_failing_pass_leaves_a_reproducer() {
    let mut registry = Registry::builtin();
    registry.register(PassInfo {
        name: "breaks",
        summary: "Fails (tests only).",
        build: |_| Ok(Box::new(Breaks)),
    });
    let dir = scratch("reproducer");
    let path = dir.join("p.ron");
    let text = "(passes: [(pass: \"cast\", options: (to: bf16)), (pass: \"breaks\")])";
    std::fs::write(&path, text).expect("write");
    let pipeline = Pipeline::from_file(&path, &registry).expect("pipeline");
    let model = fixture("tiny-llama");
    let lines = pipeline
        .passes
        .iter()
        .map(|e| format!("(pass: {:?}, options: {})", e.pass.name(), e.pass.options()))
        .collect();
    let mut dump = IrDump::new(&dir.join("ir"), &model, lines).expect("dump");
    let opts = RunOptions {
        model: Some(model.clone()),
        out: Some(dir.join("never.gguf")),
        device: Device::Cpu,
        resume: None,
        memory_limit: None,
    };
    let mut hooks: Vec<&mut dyn Instrumentation> = vec![&mut dump];
    let err = shrink_pipeline::run(&pipeline, &opts, &mut hooks, &mut shrink_passes::NoProgress)
        .expect_err("the run fails");
    assert_eq!(
        err.to_string(),
        "pass 1 (breaks) failed: breaks: on purpose"
    );
    assert!(!dir.join("never.gguf").exists());
    let before = std::fs::read_to_string(dir.join("ir/02_breaks.before.ir")).expect("before.ir");
    assert!(before
        .starts_with("; before pass 2: breaks ()\n; failed: breaks: on purpose\nshrink-ir 1\n"));
    // The IR before the failing pass is the cast model's: bf16 matrices.
    assert!(before.contains("param model.layers.0.mlp.up_proj.weight: bf16[160, 64]"));
    let repro = std::fs::read_to_string(dir.join("ir/02_breaks.reproducer.ron")).expect("ron");
    let again =
        Pipeline::parse(&dir.join("ir/r.ron"), &repro, &registry).expect("reproducer parses");
    let names: Vec<&str> = again.passes.iter().map(|e| e.pass.name()).collect();
    assert_eq!(names, ["cast", "breaks"]);
}

fn logits(model: &Path, ids: &[Vec<u32>]) -> Vec<f32> {
    let loaded = shrink_import::load(model).expect("load");
    Engine::new(&loaded.model, Device::Cpu)
        .expect("engine")
        .logits(ids)
        .expect("logits")
}

#[test]
fn f16_exports_load_back_with_identical_logits() {
    let dir = scratch("export-f16");
    let ids = vec![vec![3, 17, 99, 200, 5, 42, 7, 300]];
    let mut outs = Vec::new();
    for out in [dir.join("m.gguf"), dir.join("m-hf")] {
        let (code, _, stderr) = shrink(&[
            "run",
            "pipelines/tiny-llama-f16.ron",
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{stderr}");
        outs.push(logits(&out, &ids));
    }
    assert_eq!(
        outs[0], outs[1],
        "GGUF and HF exports of the same model differ"
    );
    // And the f16 model is close to the f32 original, but not equal (it was cast).
    let orig = logits(&fixture("tiny-llama"), &ids);
    let d = orig
        .iter()
        .zip(&outs[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d > 0.0 && d < 1e-2, "f16 vs f32 logits: {d}");
}

#[test]
fn docs_passes_md_is_generated_from_the_registry() {
    let want = shrink::passes::Registry::builtin().markdown();
    let path = crate::common::repo().join("docs/passes.md");
    let have = std::fs::read_to_string(&path).expect("docs/passes.md");
    assert!(
        have == want,
        "docs/passes.md is stale: run `cargo run --release -- passes --markdown > docs/passes.md`"
    );
    // Every registered pass and each of its options is there.
    for info in shrink::passes::Registry::builtin().iter() {
        assert!(
            have.contains(&format!("## `{}`", info.name)),
            "{}",
            info.name
        );
    }
    assert!(have.contains("| `train.lr` | `0.0001` |"));
    assert!(have.contains("| `targets` | `[\"all-linear\"]` |"));
}

#[test]
fn passes_in_an_order_that_undoes_quantization_are_refused_by_name() {
    let q = "(pass: \"quantize\", options: (method: rtn, scheme: \"q8_0\"))";
    let data = "train: (data: \"../../../data/tinyshakespeare/train.txt\", steps: 1)";
    let cases = [
        (
            "p-prune-after-quantize",
            format!("(passes: [{q}, (pass: \"prune\")])"),
            "pass 'prune': it rewrites weights in f32, but the 'quantize' pass at 1:11",
        ),
        (
            "p-train-after-quantize",
            format!("(passes: [{q}, (pass: \"finetune\", options: ({data}))])"),
            "pass 'finetune': it would train the weights that the 'quantize' pass at 1:11",
        ),
        (
            "p-missing-train-data",
            "(passes: [(pass: \"finetune\", options: (train: (data: \"nope.txt\", steps: 1)))])"
                .to_string(),
            "pass 'finetune': train.data",
        ),
    ];
    for (name, text, want) in cases {
        let (code, stderr, _) = run_bad(name, &text);
        assert_eq!(code, 1, "{name}");
        assert!(stderr.contains(want), "{name}: {stderr}");
    }
    // QLoRA is the sanctioned order: quantize, then adapters, then training.
    let ok = format!(
        "(passes: [{q}, (pass: \"lora\"), (pass: \"finetune\", options: ({data})), (pass: \"lora-fold\")])"
    );
    let p = Pipeline::parse(
        &crate::common::repo().join("target/x/y/p.ron"),
        &ok,
        &shrink::passes::Registry::builtin(),
    );
    assert!(p.is_ok(), "{:?}", p.err());
}

/// Predicted rows of a dry run: (params, bytes, exact).
type Predicted = Vec<(u64, u64, bool)>;

/// `shrink run --dry-run --json` then the real run of the same pipeline text on the tiny LLaMA:
/// (predicted rows, actual input + pass rows as (params, bytes)).
fn predicted_and_actual(name: &str, passes: &str) -> (Predicted, Vec<(u64, u64)>) {
    let dir = scratch(name);
    let path = dir.join("p.ron");
    std::fs::write(
        &path,
        format!("(passes: [{passes}], output_format: \"hf\")"),
    )
    .expect("write");
    let model = fixture("tiny-llama");
    let args = |dry: bool| {
        let mut a = vec![
            "run".to_string(),
            path.display().to_string(),
            "--model".into(),
            model.display().to_string(),
            "--json".into(),
        ];
        if dry {
            a.push("--dry-run".into());
        }
        a
    };
    let run = |dry: bool| -> serde_json::Value {
        let a = args(dry);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = shrink(&refs);
        assert_eq!(code, 0, "{name} (dry {dry}): {stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    let plan = run(true);
    let predicted = plan["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .map(|r| {
            (
                r["params"].as_u64().expect("params"),
                r["bytes"].as_u64().expect("bytes"),
                r["exact"].as_bool().expect("exact"),
            )
        })
        .collect();
    let report = run(false);
    let mut actual = vec![(
        report["input"]["params"].as_u64().expect("params"),
        report["input"]["bytes"].as_u64().expect("bytes"),
    )];
    for p in report["passes"].as_array().expect("passes") {
        actual.push((
            p["params"].as_u64().expect("params"),
            p["bytes"].as_u64().expect("bytes"),
        ));
    }
    (predicted, actual)
}

#[test]
fn dry_run_predicts_each_pass_size_from_shapes() {
    let data = "data/tinyshakespeare/train.txt";
    let calib = format!("calibration: (data: \"../../../{data}\", samples: 4, seq_len: 32)");
    let train = format!("train: (data: \"../../../{data}\", steps: 2, batch: 2, seq_len: 16)");
    let cases = [
        ("plan-cast", "(pass: \"cast\", options: (to: f16, vectors: true)), (pass: \"dead-code\")".to_string()),
        (
            "plan-prune-quantize",
            format!(
                "(pass: \"prune-structured\", options: (target: mlp, ratio: 0.2, importance: magnitude, allocation: uniform, multiple: 32)), \
                 (pass: \"prune\", options: (criterion: magnitude, sparsity: 0.5)), \
                 (pass: \"quantize\", options: (method: gptq, scheme: \"q8_0\", {calib}))"
            ),
        ),
        (
            "plan-heads-layers",
            "(pass: \"prune-structured\", options: (target: heads, count: 1, importance: magnitude, allocation: uniform)), \
             (pass: \"prune-structured\", options: (target: layers, layers: [1]))"
                .to_string(),
        ),
        (
            "plan-qlora-fold",
            format!(
                "(pass: \"quantize\", options: (method: rtn, scheme: \"nf4_b32\", embedding: \"q8_0\")), \
                 (pass: \"lora\", options: (r: 4)), (pass: \"finetune\", options: ({train})), \
                 (pass: \"lora-fold\", options: (quantized: dequantize))"
            ),
        ),
        (
            "plan-train-widens",
            format!(
                "(pass: \"finetune\", options: ({train})), (pass: \"quantize\", options: (method: rtn, scheme: \"q4_0\")), \
                 (pass: \"lora\"), (pass: \"lora-fold\")"
            ),
        ),
    ];
    for (name, passes) in cases {
        let (predicted, actual) = predicted_and_actual(name, &passes);
        assert_eq!(predicted.len(), actual.len(), "{name}");
        for (i, ((pp, pb, exact), (ap, ab))) in predicted.iter().zip(&actual).enumerate() {
            assert!(*exact, "{name} row {i}");
            assert_eq!(pp, ap, "{name} row {i}: params");
            let rel = (*pb as f64 - *ab as f64).abs() / *ab as f64;
            assert!(
                rel <= 0.01,
                "{name} row {i}: predicted {pb} bytes, real {ab}"
            );
        }
        // Something changed along the way, so the check had something to predict.
        assert!(actual.windows(2).any(|w| w[0] != w[1]), "{name}");
    }
}

#[test]
fn dry_run_predicts_memory_and_run_refuses_a_pipeline_over_the_limit() {
    let dir = scratch("plan-memory");
    let path = dir.join("p.ron");
    let data = "data/tinyshakespeare/train.txt";
    std::fs::write(
        &path,
        format!(
            "(passes: [(pass: \"quantize\", options: (method: gptq, scheme: \"q8_0\", \
             calibration: (data: \"../../../{data}\", samples: 4, seq_len: 32)))])"
        ),
    )
    .expect("write");
    let model = fixture("tiny-llama");
    let (p, m) = (path.display().to_string(), model.display().to_string());
    // `shrink run PIPELINE --model MODEL --dry-run --json [extra]`, parsed.
    let dry = |pipeline: &str, model: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["run", pipeline, "--model", model, "--dry-run", "--json"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = shrink(&args);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    let v = dry(&p, &m, &[]);
    let rows = v["plan"].as_array().expect("plan");
    let mem = |r: &serde_json::Value, k: &str| r["memory"][k].as_u64().expect(k);
    // As loaded, the safetensors file is mapped and nothing works yet.
    let (input, gptq) = (&rows[0], &rows[1]);
    assert_eq!(
        mem(input, "mapped"),
        input["bytes"].as_u64().expect("bytes")
    );
    assert_eq!(mem(input, "weights") + mem(input, "working_set"), 0);
    // GPTQ holds what it quantized, reads the embedding and norms from the file, and at
    // down_proj's site (160 inputs) its Hessians: at least 36 bytes per entry of 160 × 160.
    assert_eq!(
        mem(gptq, "weights") + mem(gptq, "mapped"),
        gptq["bytes"].as_u64().expect("bytes")
    );
    assert!(
        mem(gptq, "mapped") > 0 && mem(gptq, "weights") > 0,
        "{gptq}"
    );
    assert!(mem(gptq, "working_set") >= 36 * 160 * 160, "{gptq}");
    assert_eq!(
        mem(gptq, "peak"),
        mem(gptq, "weights") + mem(gptq, "working_set")
    );
    // More calibration tokens, more activations in flight.
    let more = std::fs::read_to_string(&path)
        .expect("read")
        .replace("samples: 4", "samples: 64");
    let more_path = dir.join("more.ron");
    std::fs::write(&more_path, more).expect("write");
    let w = dry(&more_path.display().to_string(), &m, &[]);
    assert!(mem(&w["plan"][1], "working_set") > mem(gptq, "working_set"));

    // A limit below the prediction refuses the run before its first pass; nothing is written.
    let out = dir.join("out.gguf");
    let o = out.display().to_string();
    let run_limited = |limit: &str| {
        shrink(&[
            "run",
            &p,
            "--model",
            &m,
            "--out",
            &o,
            "--memory-limit",
            limit,
        ])
    };
    let (code, _, stderr) = run_limited(&format!("{}", mem(gptq, "peak") - 1));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("pass 0 (quantize)") && stderr.contains("over the memory limit"),
        "{stderr}"
    );
    assert!(!out.exists());
    let (code, _, stderr) = run_limited("none");
    assert_eq!(code, 0, "{stderr}");
    // A config.json alone is planned from its shapes, its random weights never built: Phi-3-mini
    // in bf16 is predicted to hold its 7.6 GB as loaded.
    let config = repo().join("fixtures/real-shapes/phi-3-mini-4k.json");
    let c = config.display().to_string();
    let v = dry("pipelines/convert.ron", &c, &["--memory-limit", "none"]);
    assert_eq!(mem(&v["plan"][0], "weights"), 2 * 3_821_079_552);
    assert!(v["memory_limit"].is_null());
    for bad in ["0%", "lots", "3Q"] {
        let (code, _, stderr) = shrink(&["run", &p, "--model", &m, "--memory-limit", bad]);
        assert_ne!(code, 0, "{bad}");
        assert!(stderr.contains(bad), "{bad}: {stderr}");
    }
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn dry_run_succeeds_on_every_pipeline_in_the_repository() {
    let registry = Registry::builtin();
    let smollm2 = crate::common::smollm2();
    for f in pipeline_files() {
        let p = Pipeline::from_file(&f, &registry).unwrap_or_else(|e| panic!("{e}"));
        // Pipelines for SmolLM2 name it (or nothing); the others bring their own model.
        let mut args = vec![
            "run".to_string(),
            f.display().to_string(),
            "--dry-run".into(),
        ];
        if p.model
            .as_ref()
            .is_none_or(|m| m.to_string_lossy().contains("models/"))
        {
            args.extend(["--model".into(), smollm2.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = shrink(&refs);
        assert_eq!(code, 0, "{}: {stderr}", f.display());
        assert!(
            stdout.contains("# predicted from shapes"),
            "{}",
            f.display()
        );
    }
}

#[test]
fn quickstart_runs_the_whole_chain_on_the_bundled_model() {
    let dir = scratch("quickstart");
    let out = dir.join("quickstart.gguf");
    let (code, stdout, stderr) = shrink(&[
        "run",
        "pipelines/quickstart.ron",
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let passes = r["passes"].as_array().expect("passes");
    let names: Vec<&str> = passes
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "prune-structured",
            "distill",
            "quantize",
            "lora",
            "finetune",
            "lora-fold"
        ]
    );
    let (first, last) = (&r["input"], &passes[passes.len() - 1]);
    // Smaller, with a perplexity on every row; distillation recovers most of what pruning lost.
    let bytes = |p: &serde_json::Value| p["bytes"].as_u64().expect("bytes");
    assert!(bytes(last) < bytes(first) / 4);
    assert!(passes.iter().all(|p| p["ppl"].as_f64().is_some()));
    let ppl = |p: &serde_json::Value| p["ppl"].as_f64().expect("ppl");
    assert!(ppl(&passes[1]) < ppl(&passes[0]));
    assert!(
        ppl(last) < 1.1 * ppl(first),
        "{} vs {}",
        ppl(last),
        ppl(first)
    );
    assert!(out.exists());
    // The GGUF loads back.
    shrink::import::load(&out).expect("load the output");
}
