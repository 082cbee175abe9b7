//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// A golden tensor from a safetensors file written by a fixture script: (shape, values as f64).
pub fn golden(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let t = st.tensor(name).expect("golden tensor");
    let data = t.data();
    let values = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        safetensors::Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        safetensors::Dtype::U8 => data.iter().map(|&b| b as f64).collect(),
        safetensors::Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        other => panic!("unexpected golden dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

/// Token id rows of a golden `input_ids [b, s]`.
pub fn golden_ids(path: &Path) -> Vec<Vec<u32>> {
    let (shape, v) = golden(path, "input_ids");
    v.chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Runs the `shrink` binary; returns (exit code, stdout, stderr).
pub fn shrink(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run shrink");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shrink run PIPELINE --out OUT --json --dump-ir DUMP`, which must succeed; returns the JSON
/// report.
pub fn run_with_dump(pipeline: &Path, out: &Path, dump: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = shrink(&[
        "run",
        pipeline.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
        "--dump-ir",
        dump.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("json report")
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target").join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The path of a scratch directory, without clearing it.
pub fn scratch_path(name: &str) -> PathBuf {
    repo().join("target").join("test-scratch").join(name)
}

/// Real model path, fetched by scripts/fetch-smollm2.sh.
pub fn smollm2() -> PathBuf {
    let p = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh",
        p.display()
    );
    p
}

/// Data file copied into the repo.
pub fn data(rel: &str) -> PathBuf {
    repo().join("data").join(rel)
}

/// What an in-process run returns: the model before and after, and the records.
pub type InProcess = (
    shrink::ir::Model,
    shrink::ir::Model,
    Vec<shrink::pipeline::PassRecord>,
);

/// Runs `passes` (RON pass entries; paths relative to the repository) on the model at `model`
/// in-process.
pub fn run_in_process(model: &Path, passes: &str) -> Result<InProcess, String> {
    let loaded = shrink::import::load(model).map_err(|e| e.to_string())?;
    run_on(loaded.model, loaded.tokenizer.as_ref(), passes)
}

/// Runs `passes` on `model` in-process (errors as the pass manager words them).
pub fn run_on(
    model: shrink::ir::Model,
    tokenizer: Option<&shrink::formats::Tokenizer>,
    passes: &str,
) -> Result<InProcess, String> {
    use shrink::pipeline::{run_passes, Pipeline, RunContext};
    let registry = shrink::passes::Registry::builtin();
    let path = repo().join("p.ron");
    let p = Pipeline::parse(&path, &format!("(passes: [{passes}])"), &registry)
        .map_err(|e| e.to_string())?;
    let original = model.clone();
    let mut model = model;
    let mut progress = shrink::passes::NoProgress;
    let mut rc = RunContext {
        device: shrink::runtime::Device::Cpu,
        original: &original,
        tokenizer,
        seed: 0,
        base_dir: &repo(),
        resume: None,
        load_model: None,
        progress: &mut progress,
        input_ppl: None,
        evaluate: None,
    };
    let records = run_passes(&p.passes, &mut model, &mut rc, &mut []).map_err(|e| e.to_string())?;
    Ok((original, model, records))
}
