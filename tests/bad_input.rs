//! Bad input gives a one-line error naming the file and the field, tensor or offset; exit 1;
//! never a panic.

use std::path::{Path, PathBuf};

use crate::common::{fixture, scratch, shrink};

/// Copies the tiny LLaMA directory into a scratch dir for mutation.
fn tiny_copy(name: &str) -> PathBuf {
    let dir = scratch(name);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), dir.join(f)).expect("copy");
    }
    dir
}

/// Runs `shrink inspect PATH` and checks the failure shape; returns stderr.
fn inspect_fails(path: &Path, must_contain: &[&str]) -> String {
    let (code, stdout, stderr) = shrink(&["inspect", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    assert!(stdout.is_empty(), "stdout: {stdout}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for m in must_contain {
        assert!(stderr.contains(m), "{stderr:?} lacks {m:?}");
    }
    stderr
}

#[test]
fn truncated_gguf() {
    inspect_fails(
        &fixture("tiny-llama/truncated.gguf"),
        &["truncated.gguf", "blk.", "past the end of the file"],
    );
}

#[test]
fn gguf_cut_inside_the_header() {
    let dir = scratch("gguf-header-cut");
    let bytes = std::fs::read(fixture("tiny-llama/tiny-llama.gguf")).expect("read");
    let p = dir.join("cut.gguf");
    std::fs::write(&p, &bytes[..1000]).expect("write");
    inspect_fails(&p, &["cut.gguf", "at byte 791", "tokenizer.ggml.tokens"]);
}

#[test]
fn not_a_gguf_file() {
    let dir = scratch("not-gguf");
    let p = dir.join("model.gguf");
    std::fs::write(&p, b"definitely not a model file").expect("write");
    inspect_fails(&p, &["model.gguf", "magic"]);
}

#[test]
fn truncated_safetensors() {
    let dir = tiny_copy("st-truncated");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    inspect_fails(&dir, &["model.safetensors", "invalid safetensors"]);
}

#[test]
fn safetensors_header_claims_more_than_the_file() {
    let dir = tiny_copy("st-header-len");
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).expect("read");
    bytes[..8].copy_from_slice(&(10_000_000u64).to_le_bytes());
    std::fs::write(&p, &bytes).expect("write");
    inspect_fails(&dir, &["model.safetensors", "invalid safetensors"]);
}

#[test]
fn config_missing_a_field() {
    let dir = tiny_copy("cfg-missing");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("read");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_object_mut().expect("object").remove("hidden_size");
    std::fs::write(&p, v.to_string()).expect("write");
    inspect_fails(&dir, &["config.json", "field 'hidden_size': missing"]);
}

#[test]
fn config_that_is_not_json() {
    let dir = tiny_copy("cfg-bad-json");
    std::fs::write(dir.join("config.json"), "{ \"model_type\": ").expect("write");
    inspect_fails(&dir, &["config.json", "invalid JSON"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tiny_copy("cfg-arch");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(
        &p,
        text.replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\""),
    )
    .expect("write");
    inspect_fails(&dir, &["config.json", "unsupported architecture 'mamba'"]);
}

#[test]
fn tensor_with_the_wrong_shape() {
    let dir = tiny_copy("cfg-shape");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(
        &p,
        text.replace("\"intermediate_size\": 160", "\"intermediate_size\": 128"),
    )
    .expect("write");
    inspect_fails(
        &dir,
        &[
            "model.safetensors",
            "tensor 'model.layers.0.mlp.down_proj.weight'",
            "[64, 160]",
        ],
    );
}

#[test]
fn per_layer_size_list_of_the_wrong_length() {
    // Per-layer sizes (structurally pruned models) are lists of num_hidden_layers entries.
    let dir = tiny_copy("cfg-layer-list");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(
        &p,
        text.replace(
            "\"intermediate_size\": 160",
            "\"intermediate_size\": [160, 160, 160]",
        ),
    )
    .expect("write");
    inspect_fails(
        &dir,
        &[
            "config.json",
            "field 'intermediate_size'",
            "a list of 3 sizes, but num_hidden_layers is 2",
        ],
    );
}

#[test]
fn missing_shard() {
    let dir = scratch("missing-shard");
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(fixture("tiny-qwen2").join(f), dir.join(f)).expect("copy");
    }
    inspect_fails(&dir, &["model-00002-of-00002.safetensors"]);
}

#[test]
fn missing_model_path() {
    inspect_fails(Path::new("no/such/model.gguf"), &["no/such/model.gguf"]);
}

#[test]
fn missing_data_file() {
    let (code, _, stderr) = shrink(&[
        "eval",
        "--model",
        "fixtures/tiny-llama",
        "--data",
        "no/such/file.txt",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no/such/file.txt"), "{stderr}");
}

#[test]
fn text_shorter_than_one_chunk() {
    let dir = scratch("short-data");
    let p = dir.join("short.txt");
    std::fs::write(&p, "too short").expect("write");
    let (code, _, stderr) = shrink(&[
        "eval",
        "--model",
        "fixtures/tiny-llama",
        "--data",
        p.to_str().expect("utf-8"),
        "--ctx",
        "64",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("fewer than one chunk of 64"), "{stderr}");
    assert!(stderr.contains("short.txt"), "{stderr}");
}

#[test]
fn cuda_without_gpu_is_an_error_not_a_panic() {
    let (code, _, stderr) = shrink(&[
        "generate",
        "--model",
        "fixtures/tiny-llama",
        "--prompt",
        "hi",
        "--device",
        "cuda",
    ]);
    assert_ne!(code, 0);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[test]
fn unknown_device() {
    let (code, _, stderr) = shrink(&[
        "generate",
        "--model",
        "fixtures/tiny-llama",
        "--prompt",
        "hi",
        "--device",
        "tpu",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown device 'tpu'"), "{stderr}");
}

/// Exit status 1, one line on stderr starting `error: `, no panic, and every `must_contain`.
fn fails_in_one_line(args: &[&str], must_contain: &[&str]) -> String {
    let (code, _, stderr) = shrink(args);
    assert_eq!(code, 1, "exit code for {args:?}; stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for m in must_contain {
        assert!(stderr.contains(m), "{stderr:?} lacks {m:?}");
    }
    stderr
}

/// The tiny LLaMA's directory with config fields replaced.
fn config_with_all(name: &str, fields: &[(&str, serde_json::Value)]) -> PathBuf {
    let dir = tiny_copy(name);
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
    for (field, value) in fields {
        v[*field] = value.clone();
    }
    std::fs::write(&p, v.to_string()).expect("write");
    dir
}

fn config_with(name: &str, field: &str, value: serde_json::Value) -> PathBuf {
    config_with_all(name, &[(field, value)])
}

#[test]
fn sizes_past_the_limits_are_refused_before_any_allocation() {
    let huge = serde_json::json!(1_000_000_000_000u64);
    for (field, value) in [
        ("num_hidden_layers", huge.clone()),
        ("vocab_size", huge.clone()),
        ("hidden_size", huge.clone()),
        ("intermediate_size", huge.clone()),
        ("num_attention_heads", huge.clone()),
        ("head_dim", huge.clone()),
        ("max_position_embeddings", serde_json::json!(1u64 << 40)),
    ] {
        let dir = config_with(&format!("cfg-huge-{field}"), field, value);
        let path = dir.to_str().expect("utf-8");
        fails_in_one_line(&["inspect", path], &["config.json", field, "limit"]);
        // The config alone builds a random model: the same refusal.
        let cfg = dir.join("config.json");
        let cfg = cfg.to_str().expect("utf-8");
        fails_in_one_line(&["inspect", cfg], &["config.json", field]);
    }
    // More layers than the checkpoint has tensors.
    let dir = config_with("cfg-layers-vs-tensors", "num_hidden_layers", 1000.into());
    fails_in_one_line(
        &["inspect", dir.to_str().expect("utf-8")],
        &[
            "config.json",
            "num_hidden_layers",
            "1000 layers, but the checkpoint holds",
        ],
    );
    // A random model larger than memory is refused with its size.
    // (3·10^11 parameters: within the count limit, far past this machine's memory.)
    let dir = config_with_all(
        "cfg-too-big-for-memory",
        &[
            ("hidden_size", 100_000.into()),
            ("intermediate_size", 500_000.into()),
        ],
    );
    let cfg = dir.join("config.json");
    let c = cfg.to_str().expect("utf-8");
    fails_in_one_line(
        &["eval", "--model", c, "--data", "data/wikitext-2/dev.txt"],
        &["config.json", "GB"],
    );
    // Inspecting it, or planning a pipeline on it, needs its shapes alone.
    let (code, stdout, stderr) = shrink(&["inspect", c]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("parameters"), "{stdout}");
    let (code, _, stderr) = shrink(&["run", "pipelines/convert.ron", "--model", c, "--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_context_of_billions_of_positions_runs_on_the_context_used() {
    // RoPE tables are sized by the positions a call uses, not by the declared context.
    let dir = config_with(
        "cfg-4e9-context",
        "max_position_embeddings",
        4_000_000_000u64.into(),
    );
    let ppl = |model: &str| {
        let data = "data/tinyshakespeare/heldout.txt";
        let args = [
            "eval", "--model", model, "--data", data, "--ctx", "64", "--chunks", "2",
        ];
        let (code, stdout, stderr) = shrink(&[&args[..], &["--json"]].concat());
        assert_eq!(code, 0, "{stderr}");
        let r: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        r["ppl"].as_f64().expect("ppl")
    };
    // The same weights as the fixture: the same perplexity.
    assert_eq!(
        ppl(dir.to_str().expect("utf-8")),
        ppl("fixtures/tiny-llama")
    );
}

#[test]
fn bad_numbers_in_a_config_are_refused_by_field() {
    for (field, value, says) in [
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        ("rms_norm_eps", serde_json::json!(-1e-5), "rms_norm_eps"),
        ("rms_norm_eps", serde_json::json!(2.0), "rms_norm_eps"),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": -10000.0, "rope_type": "default"}),
            "rope_theta",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 0.0, "rope_type": "default"}),
            "rope_theta",
        ),
        (
            "bos_token_id",
            serde_json::json!(1u64 << 40),
            "bos_token_id",
        ),
        ("hidden_size", serde_json::json!(-64), "hidden_size"),
        ("hidden_size", serde_json::json!(64.5), "hidden_size"),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 1e4, "rope_type": "longrope", "factor": 4.0}),
            "field 'rope_parameters.rope_type': 'longrope' is not supported",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0, "beta_fast": -1}),
            "field 'rope_parameters.beta_fast': -1 must be positive",
        ),
    ] {
        let dir = config_with(&format!("cfg-num-{field}"), field, value.clone());
        fails_in_one_line(
            &["inspect", dir.to_str().expect("utf-8")],
            &["config.json", says],
        );
    }
}

#[test]
fn rope_scaling_a_config_asks_for_and_shrink_lacks_is_refused_by_field() {
    // The Hub's form: top-level rope_theta and a rope_scaling object.
    for (i, (value, says)) in [
        (
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            "field 'rope_scaling.type': 'dynamic' is not supported",
        ),
        (
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
            "field 'rope_scaling.factor': 0 must be positive",
        ),
        (
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
            "field 'rope_scaling.high_freq_factor'",
        ),
        (
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 0.5}),
            "field 'rope_scaling.original_max_position_embeddings'",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = config_with_all(
            &format!("cfg-rope-scaling-{i}"),
            &[
                ("rope_parameters", serde_json::Value::Null),
                ("rope_theta", serde_json::json!(10000.0)),
                ("rope_scaling", value),
            ],
        );
        fails_in_one_line(
            &["inspect", dir.to_str().expect("utf-8")],
            &["config.json", says],
        );
    }
    // Both forms at once could disagree: refused rather than one of them ignored.
    let dir = config_with(
        "cfg-rope-both-forms",
        "rope_scaling",
        serde_json::json!({"rope_type": "linear", "factor": 2.0}),
    );
    fails_in_one_line(
        &["inspect", dir.to_str().expect("utf-8")],
        &["config.json", "field 'rope_scaling'", "rope_parameters"],
    );
}

/// Writes `value` over element `index` of tensor `name` (f32) in a copy of the tiny LLaMA.
fn poisoned(name: &str, tensor: &str, index: usize, value: f32) -> PathBuf {
    let dir = tiny_copy(name);
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let start = header[tensor]["data_offsets"][0].as_u64().expect("offset") as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&p, bytes).expect("write");
    dir
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let t = "model.layers.1.mlp.up_proj.weight";
    for (label, v) in [
        ("nan", f32::NAN),
        ("inf", f32::INFINITY),
        ("-inf", f32::NEG_INFINITY),
    ] {
        let dir = poisoned(&format!("st-{label}"), t, 77, v);
        let d = dir.to_str().expect("utf-8");
        for args in [
            vec!["inspect", d],
            vec![
                "eval",
                "--model",
                d,
                "--data",
                "data/tinyshakespeare/heldout.txt",
                "--json",
            ],
        ] {
            fails_in_one_line(
                &args,
                &[
                    "model.safetensors",
                    t,
                    "non-finite",
                    "element 77 (row 1, column 13)",
                ],
            );
        }
        // What examples/bench_load.rs times as "without the checks" really skips them.
        let unchecked = shrink::import::LoadOptions {
            check_finite: false,
            ..Default::default()
        };
        assert!(shrink::import::load_with(&dir, &unchecked).is_ok());
        assert!(shrink::import::load_with(&dir, &Default::default()).is_err());
    }
}

#[test]
fn an_evaluation_that_scores_nothing_is_an_error() {
    fails_in_one_line(
        &[
            "eval",
            "--model",
            "fixtures/tiny-llama",
            "--data",
            "data/tinyshakespeare/heldout.txt",
            "--ctx",
            "2",
            "--chunks",
            "1",
            "--score",
            "second-half",
        ],
        &["heldout.txt", "scores no prediction"],
    );
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        h.update(f.file_name().expect("name").as_encoded_bytes());
        h.update(std::fs::read(&f).expect("read"));
    }
    format!("{:x}", h.finalize())
}

#[test]
fn an_output_that_is_the_input_is_refused_before_anything_runs() {
    let dir = scratch("out-is-input");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).expect("dir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), model.join(f)).expect("copy");
    }
    let gguf = dir.join("m.gguf");
    std::fs::copy(fixture("tiny-llama/tiny-llama.gguf"), &gguf).expect("copy");
    let pipeline = dir.join("p.ron");
    std::fs::write(&pipeline, "(passes: [(pass: \"dead-code\")])").expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&model, dir.join("link")).expect("symlink");
    let (before_dir, before_gguf) = (sha(&model), sha(&gguf));
    let p = pipeline.to_str().expect("utf-8");
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (model.clone(), model.clone(), "is the input model"),
        (model.clone(), dir.join("model/"), "is the input model"),
        (model.clone(), dir.join("link"), "is the input model"),
        (
            model.clone(),
            dir.join("model/../model"),
            "is the input model",
        ),
        (
            model.join("model.safetensors"),
            dir.clone(),
            "would replace a directory holding",
        ),
        (gguf.clone(), gguf.clone(), "is the input model"),
        (gguf.clone(), pipeline.clone(), "is the pipeline file"),
    ];
    for (m, out, says) in &cases {
        let m = m.to_str().expect("utf-8");
        let o = out.to_str().expect("utf-8");
        for dry in [false, true] {
            let mut args = vec!["run", p, "--model", m, "--out", o];
            if dry {
                args.push("--dry-run");
            }
            fails_in_one_line(&args, &[says, "write the output elsewhere"]);
        }
    }
    assert_eq!(sha(&model), before_dir, "the input directory was touched");
    assert_eq!(sha(&gguf), before_gguf, "the input GGUF was touched");
}

#[test]
fn a_pipeline_with_non_ascii_comments_parses_and_points_at_the_right_column() {
    let dir = scratch("pipeline-utf8");
    // Every comment form RON accepts, holding multi-byte characters.
    let good = "/* café, naïve — 日本 */ (\n  // ü\n  passes: [ /* é /* nested ü */ */ (pass: \"dead-code\")],\n)\n";
    let p = dir.join("good.ron");
    std::fs::write(&p, good).expect("write");
    let (code, _, stderr) = shrink(&[
        "run",
        p.to_str().expect("utf-8"),
        "--model",
        "fixtures/tiny-llama",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // Columns count characters: the unknown name starts at column 25 of line 2.
    let bad = "(\n  /* é日本 */ passes: [(pass: \"dead-cod\")],\n)\n";
    let p = dir.join("bad.ron");
    std::fs::write(&p, bad).expect("write");
    let path = p.display().to_string();
    fails_in_one_line(
        &["run", &path, "--model", "fixtures/tiny-llama", "--dry-run"],
        &[&format!("{path}:2:29: unknown pass 'dead-cod'")],
    );
    // A quoted value holding a line break is still one line.
    let nl = "(passes: [(pass: \"dead\\ncode\")])";
    std::fs::write(&p, nl).expect("write");
    fails_in_one_line(
        &["run", &path, "--model", "fixtures/tiny-llama", "--dry-run"],
        &["unknown pass 'dead\\ncode'"],
    );
}

#[test]
fn a_panic_is_reported_in_one_line_with_status_70() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(["passes"])
        .env("SHRINK_TEST_PANIC", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("internal error: SHRINK_TEST_PANIC is set\\nsecond line at ")
            && stderr.contains("(a bug: please report it with this input)"),
        "{stderr}"
    );
}

/// One refusal of each kind the crates define, through the command line.
#[test]
fn every_error_kind_is_one_line_with_status_1() {
    let dir = scratch("error-kinds");
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).expect("dir");
    let empty = empty_dir.display().to_string();
    let bad_tok = tiny_copy("error-kinds-tokenizer");
    std::fs::write(bad_tok.join("tokenizer.json"), "{\"model\": 3}").expect("write");
    let bad_tok = bad_tok.display().to_string();
    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).expect("dir");
    std::fs::write(
        adapter.join("adapter_config.json"),
        "{\"peft_type\": \"LORA\", \"r\": 0}",
    )
    .expect("write");
    let adapter = adapter.display().to_string();
    let pipe = w("p.ron", "(passes: [(pass: \"dead-code\")])");
    let bad_ron = w("bad.ron", "(passes: [(pass: \"dead-code\")");
    let text = "data/tinyshakespeare/heldout.txt";
    let tiny = "fixtures/tiny-llama";
    let no_parent = dir.join("no/such/dir/out.gguf").display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Import: I/O, format, JSON, tokenizer, GGUF, adapter config.
        (vec!["inspect", "no/such.gguf"], vec!["no/such.gguf"]),
        (vec!["inspect", &empty], vec!["not a model"]),
        (vec!["inspect", &bad_tok], vec!["tokenizer.json"]),
        (
            vec!["inspect", "fixtures/tiny-llama/truncated.gguf"],
            vec!["truncated.gguf"],
        ),
        (
            vec![
                "eval",
                "--model",
                tiny,
                "--adapter",
                &adapter,
                "--data",
                text,
            ],
            vec!["adapter_config.json", "'r'"],
        ),
        // Pipelines: syntax, unknown pass, output beside the input.
        (vec!["run", &bad_ron, "--model", tiny], vec!["bad.ron:1:"]),
        (
            vec!["run", &pipe, "--model", tiny, "--out", tiny],
            vec!["is the input model"],
        ),
        // Runtime: a context past the model's positions (256).
        (
            vec!["eval", "--model", tiny, "--data", text, "--ctx", "512"],
            vec!["512", "256"],
        ),
        // Export: an output whose directory does not exist.
        (
            vec!["run", &pipe, "--model", tiny, "--out", &no_parent],
            vec!["no/such/dir"],
        ),
        // The command line's own values.
        (
            vec![
                "generate",
                "--model",
                tiny,
                "--prompt",
                "x",
                "--temperature=-1",
            ],
            vec!["temperature"],
        ),
    ];
    for (args, says) in &cases {
        fails_in_one_line(args, says);
    }
}
