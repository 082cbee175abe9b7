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
