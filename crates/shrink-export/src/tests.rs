//! Round trips through the exporters on the tiny fixtures: export, load back with
//! `shrink_import::load`, and compare IR text, logits (bit-identical), tokenization, and the
//! bytes against the fixture files (the safetensors checkpoints, and `tiny-llama.gguf` as
//! llama.cpp's `convert_hf_to_gguf.py` wrote it).
//!
//! IR text is compared with two `meta` lines left out where the source and the output format
//! differ: `source_format` (set to "gguf" by the GGUF importer only) and `name` (GGUF's
//! `general.name`; a Hugging Face directory has no such field). Everything else, every `meta`
//! line included, must be equal.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shrink_arch::LlamaConfig;
use shrink_arch::{gguf_name, permute_rows};
use shrink_formats::gguf::{GgmlType, GgufFile, MetaValue};
use shrink_formats::Tokenizer;
use shrink_import::{load, Loaded};
use shrink_ir::text::print;
use shrink_ir::{DType, Graph, Model, QuantScheme, TensorData, WeightStore};
use shrink_runtime::{Device, Engine};

use crate::{gguf, hf};
use shrink_formats::gguf::GgufWriter;

/// `meta` keys that differ between formats (see the module doc).
const FORMAT_META: [&str; 2] = ["source_format", "name"];

/// A scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("shrink-export-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn load_fixture(rel: &str) -> Loaded {
    load(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `input_ids` of a golden file, as rows.
fn golden_ids(dir: &str) -> Vec<Vec<u32>> {
    let bytes = fs::read(fixtures().join(dir).join("golden.safetensors")).expect("golden");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let t = st.tensor("input_ids").expect("input_ids");
    let cols = t.shape()[1];
    let ids: Vec<u32> = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32)
        .collect();
    ids.chunks(cols).map(<[u32]>::to_vec).collect()
}

fn logits(l: &Loaded, golden: &str) -> Vec<f32> {
    let engine = Engine::new(&l.model, Device::Cpu).expect("engine");
    engine.logits(&golden_ids(golden)).expect("logits")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The IR text without the `meta` lines of `skip`.
fn ir_without(g: &Graph, skip: &[&str]) -> String {
    print(g)
        .lines()
        .filter(|l| !skip.iter().any(|k| l.starts_with(&format!("meta {k} = "))))
        .collect::<Vec<_>>()
        .join("\n")
}

fn texts() -> Vec<String> {
    let j: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(fixtures().join("tiny-tokenizer-golden.json")).expect("golden"),
    )
    .expect("json");
    j.as_array()
        .expect("list")
        .iter()
        .map(|e| e["text"].as_str().expect("text").to_string())
        .collect()
}

/// Both tokenizers give the same ids on every golden text, with and without special-token
/// parsing.
fn same_tokens(a: &mut Tokenizer, b: &mut Tokenizer) {
    for t in texts() {
        for special in [false, true] {
            assert_eq!(
                a.encode(&t, special).expect("encode a"),
                b.encode(&t, special).expect("encode b"),
                "{t:?} (parse_special={special})"
            );
        }
    }
}

/// Each tensor of an exported safetensors file equals the same-named tensor of the fixture's
/// checkpoint (one file or shards): dtype, shape and bytes.
fn same_tensors_as_fixture(exported: &Path, fixture_dir: &str) {
    let mut want: BTreeMap<String, (String, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for e in fs::read_dir(fixtures().join(fixture_dir)).expect("fixture dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("model") && name.ends_with(".safetensors")) {
            continue;
        }
        let bytes = fs::read(&p).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture safetensors");
        for (n, v) in st.tensors() {
            want.insert(
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            );
        }
    }
    let bytes = fs::read(exported).expect("read export");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("exported safetensors");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    assert_eq!(
        header.metadata().as_ref().and_then(|m| m.get("format")),
        Some(&"pt".to_string())
    );
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        want.keys().map(String::as_str).collect::<Vec<_>>(),
        "tensor names"
    );
    for (n, (dtype, shape, data)) in &want {
        let t = st.tensor(n).expect("tensor");
        assert_eq!(&format!("{:?}", t.dtype()), dtype, "{n}");
        assert_eq!(t.shape(), shape.as_slice(), "{n}");
        assert!(t.data() == data.as_slice(), "{n}: bytes differ");
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(p).expect("read")).expect("json")
}

/// Exports to an HF directory, loads it back and compares; returns the directory's scratch.
fn hf_round_trip(rel: &str, golden: &str) -> (Scratch, PathBuf) {
    let mut orig = load_fixture(rel);
    let proof = orig.model.verify().expect("verified");
    let s = Scratch::new(&format!("hf-{}", rel.replace('/', "-")));
    let out = s.path().join("model");
    let files = hf::write(&orig.model, &proof, orig.tokenizer.as_ref(), &out).expect("export");
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            assert_eq!(p.parent(), Some(out.as_path()));
            p.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(entries(s.path()), ["model"], "temporaries left behind");
    assert_eq!(entries(&out), names);

    let mut back = load(&out).expect("load export");
    assert_eq!(
        ir_without(&orig.model.graph, &FORMAT_META),
        ir_without(&back.model.graph, &FORMAT_META)
    );
    let (a, b) = (logits(&orig, golden), logits(&back, golden));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "{rel}: logits differ");
    same_tokens(
        orig.tokenizer.as_mut().expect("tokenizer"),
        back.tokenizer.as_mut().expect("tokenizer"),
    );
    (s, out)
}

#[test]
fn hf_round_trip_tiny_llama() {
    let (_s, out) = hf_round_trip("tiny-llama", "tiny-llama");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-llama");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(10000.0));
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["head_dim"], 16);
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["torch_dtype"], "float32");
    assert_eq!(c["bos_token_id"], 0);
}

#[test]
fn hf_round_trip_tiny_llama_from_gguf() {
    // Un-permuted GGUF weights written as HF: byte-identical to the original checkpoint.
    let (_s, out) = hf_round_trip("tiny-llama/tiny-llama.gguf", "tiny-llama");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-llama");
}

#[test]
fn hf_round_trip_tiny_qwen2() {
    let (_s, out) = hf_round_trip("tiny-qwen2", "tiny-qwen2");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-qwen2");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["torch_dtype"], "bfloat16");
    assert_eq!(c["rope_theta"].as_f64(), Some(1e6));
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-6));
}

#[test]
fn hf_round_trip_tiny_qwen3() {
    let (_s, out) = hf_round_trip("tiny-qwen3", "tiny-qwen3");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-qwen3");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(c["model_type"], "qwen3");
    assert_eq!(c["head_dim"], 24);
    assert_eq!(c["attention_bias"], false);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["use_sliding_window"], false);
}

#[test]
fn hf_round_trip_tiny_phi3_stacks_its_fused_projections_back() {
    // q/k/v and gate/up, split on import, are written back into qkv_proj and gate_up_proj: the
    // same bytes as the checkpoint transformers saved.
    let (_s, out) = hf_round_trip("tiny-phi3", "tiny-phi3");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-phi3");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Phi3ForCausalLM");
    assert_eq!(c["sliding_window"], 16);
}

#[test]
fn gguf_export_borrows_every_matrix_from_the_store() {
    // Stacked (Phi-3's attn_qkv, ffn_up) and permuted (Llama's attn_q, attn_k) tensors are
    // written as pieces of the store's bytes: an export never holds a second copy of the model.
    for dir in ["tiny-phi3", "tiny-llama3"] {
        let l = load_fixture(dir);
        let tok = l.tokenizer.as_ref().expect("tokenizer");
        let w = gguf::prepare(&l.model, tok, Path::new("unused.gguf")).expect("prepare");
        let matrices: Vec<_> = w.tensors().iter().filter(|t| t.dims.len() == 2).collect();
        assert!(matrices.len() > 4, "{dir}");
        for t in matrices {
            assert!(
                t.pieces.iter().all(|p| matches!(p, Cow::Borrowed(_))),
                "{dir}: {} was copied",
                t.name
            );
        }
        let pieces = |n: &str| {
            w.tensors()
                .iter()
                .find(|t| t.name == n)
                .expect(n)
                .pieces
                .len()
        };
        if dir == "tiny-phi3" {
            assert_eq!(pieces("blk.0.attn_qkv.weight"), 3);
            assert_eq!(pieces("blk.0.ffn_up.weight"), 2);
        } else {
            // One piece per row of every head.
            assert!(pieces("blk.0.attn_q.weight") > 1);
        }
    }
}

#[test]
fn gguf_round_trip_tiny_phi3_stacks_attn_qkv_and_ffn_up() {
    let (_s, out) = gguf_round_trip("tiny-phi3");
    let f = GgufFile::open(&out).expect("open export");
    assert_eq!(
        f.get("general.architecture"),
        Some(&MetaValue::String("phi3".into()))
    );
    assert_eq!(
        f.get("phi3.attention.sliding_window"),
        Some(&MetaValue::U32(16))
    );
    // As llama.cpp's converter lays them out: the checkpoint's fused tensors, rows unpermuted.
    let st = fs::read(fixtures().join("tiny-phi3/model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&st).expect("safetensors");
    for (hf, gguf) in [
        (
            "model.layers.1.self_attn.qkv_proj.weight",
            "blk.1.attn_qkv.weight",
        ),
        (
            "model.layers.0.mlp.gate_up_proj.weight",
            "blk.0.ffn_up.weight",
        ),
    ] {
        let t = f.tensor(gguf).unwrap_or_else(|| panic!("{gguf} missing"));
        assert!(
            f.tensor_data(t) == st.tensor(hf).expect(hf).data(),
            "{gguf}"
        );
    }
    for absent in ["blk.0.attn_q.weight", "blk.0.ffn_gate.weight"] {
        assert!(f.tensor(absent).is_none(), "{absent}");
    }
}

#[test]
fn hf_round_trip_tiny_gemma3_gives_back_its_norm_weights() {
    // The IR's norm weights are Gemma's 1 + w (in f32); the export writes w back in the
    // checkpoint's bf16, the bytes transformers saved.
    let (_s, out) = hf_round_trip("tiny-gemma3", "tiny-gemma3");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-gemma3");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(c["model_type"], "gemma3_text");
    assert_eq!(c["rope_local_base_freq"].as_f64(), Some(10000.0));
    assert_eq!(c["rope_scaling"]["rope_type"], "linear");
    assert_eq!(c["query_pre_attn_scalar"].as_f64(), Some(32.0));
    assert_eq!(c["layer_types"][1], "full_attention");
    // llama.cpp scales scores by 1/sqrt(head_dim) whatever query_pre_attn_scalar says: this
    // model (32 against head_dim 24) has no GGUF form, and nothing is written.
    let l = load_fixture("tiny-gemma3");
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("gguf-gemma3");
    let e = gguf::write(
        &l.model,
        &proof,
        l.tokenizer.as_ref().expect("tok"),
        &s.path().join("m.gguf"),
    )
    .expect_err("query_pre_attn_scalar")
    .to_string();
    assert!(e.contains("query_pre_attn_scalar"), "{e}");
    assert!(entries(s.path()).is_empty());
}

/// A scratch copy of a fixture with `query_pre_attn_scalar` set to its head_dim (what llama.cpp
/// assumes), exported to GGUF and loaded back: the same graph and logits.
fn gemma_gguf_round_trip(fixture: &str, arch: &str) -> GgufFile {
    let s = Scratch::new(&format!("gguf-rt-{fixture}"));
    let dir = s.path().join("hf");
    fs::create_dir_all(&dir).expect("mkdir");
    for f in fs::read_dir(fixtures().join(fixture)).expect("dir") {
        let f = f.expect("entry").path();
        fs::copy(&f, dir.join(f.file_name().expect("name"))).expect("copy");
    }
    let mut c = read_json(&dir.join("config.json"));
    c["query_pre_attn_scalar"] = c["head_dim"].clone();
    fs::write(dir.join("config.json"), c.to_string()).expect("write");
    let orig = load(&dir).expect("load");
    let proof = orig.model.verify().expect("verified");
    let out = s.path().join("m.gguf");
    gguf::write(
        &orig.model,
        &proof,
        orig.tokenizer.as_ref().expect("tok"),
        &out,
    )
    .expect("export");
    let back = load(&out).expect("load the export");
    let strip = |t: String| {
        t.lines()
            .filter(|l| !l.starts_with("meta ") && !l.starts_with("param "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(shrink_ir::text::print(&orig.model.graph)),
        strip(shrink_ir::text::print(&back.model.graph))
    );
    let (a, b) = (logits(&orig, fixture), logits(&back, fixture));
    assert!(max_abs_diff(&a, &b) < 1e-5, "{fixture}: logits differ");
    let f = GgufFile::open(&out).expect("open");
    assert_eq!(
        f.get("general.architecture"),
        Some(&MetaValue::String(arch.into()))
    );
    f
}

#[test]
fn gemma_gguf_round_trips_with_llamacpps_names_and_norms() {
    let f = gemma_gguf_round_trip("tiny-gemma3", "gemma3");
    // Norms as llama.cpp's converter stores them: 1 + w, which is what the IR holds.
    for name in [
        "blk.0.post_attention_norm.weight",
        "blk.2.post_ffw_norm.weight",
        "blk.1.attn_q_norm.weight",
        "blk.0.ffn_norm.weight",
    ] {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.ggml_type, GgmlType::F32, "{name}");
    }
    assert_eq!(
        f.get("gemma3.attention.sliding_window_pattern"),
        Some(&MetaValue::Array(vec![
            MetaValue::Bool(true),
            MetaValue::Bool(false),
            MetaValue::Bool(true)
        ]))
    );
    assert_eq!(
        f.get("gemma3.rope.freq_base_swa"),
        Some(&MetaValue::F32(10000.0))
    );
    let f = gemma_gguf_round_trip("tiny-gemma2", "gemma2");
    assert_eq!(
        f.get("gemma2.attn_logit_softcapping"),
        Some(&MetaValue::F32(2.0))
    );
}

#[test]
fn hf_round_trip_tiny_gemma2_keeps_its_soft_caps() {
    let (_s, out) = hf_round_trip("tiny-gemma2", "tiny-gemma2");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-gemma2");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Gemma2ForCausalLM");
    assert_eq!(c["attn_logit_softcapping"].as_f64(), Some(2.0));
    assert_eq!(c["final_logit_softcapping"].as_f64(), Some(1.5));
    assert!(c.get("rope_local_base_freq").is_none());
}

#[test]
fn hf_round_trip_tiny_gpt2() {
    // Conv1D weights go back to [in, out]: the comparison with the fixture checks it.
    let (_s, out) = hf_round_trip("tiny-gpt2", "tiny-gpt2");
    same_tensors_as_fixture(&out.join("model.safetensors"), "tiny-gpt2");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(c["activation_function"], "gelu_new");
    assert_eq!(c["n_inner"], 256);
    assert_eq!(c["n_positions"], 128);
    assert_eq!(c["layer_norm_epsilon"].as_f64(), Some(1e-5));
}

/// Exports to GGUF, loads it back and compares; returns the file's scratch and path.
fn gguf_round_trip(rel: &str) -> (Scratch, PathBuf) {
    let mut orig = load_fixture(rel);
    let proof = orig.model.verify().expect("verified");
    let s = Scratch::new(&format!("gguf-{}", rel.replace('/', "-")));
    let out = s.path().join("out.gguf");
    gguf::write(
        &orig.model,
        &proof,
        orig.tokenizer.as_ref().expect("tokenizer"),
        &out,
    )
    .expect("export");
    assert_eq!(entries(s.path()), ["out.gguf"], "temporaries left behind");
    let mut back = load(&out).expect("load export");
    let skip: &[&str] = if orig.model.graph.meta.contains_key("source_format") {
        &[] // GGUF to GGUF: every line, name included, comes back
    } else {
        &FORMAT_META
    };
    // 1-D tensors (norms, biases) are written F32, as llama.cpp's converter writes them.
    let widened = |text: String| {
        text.lines()
            .map(|l| match l.split_once(": ") {
                Some((head, ty))
                    if head.starts_with("param ")
                        && (ty.starts_with("bf16[") || ty.starts_with("f16["))
                        && !ty.contains(',') =>
                {
                    format!("{head}: f32{}", &ty[ty.find('[').unwrap_or(0)..])
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        widened(ir_without(&orig.model.graph, skip)),
        ir_without(&back.model.graph, skip)
    );
    let (a, b) = (logits(&orig, "tiny-llama"), logits(&back, "tiny-llama"));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "{rel}: logits differ");
    let (ta, tb) = (
        orig.tokenizer.as_mut().expect("tokenizer"),
        back.tokenizer.as_mut().expect("tokenizer"),
    );
    same_tokens(ta, tb);
    let golden = read_json(&fixtures().join("tiny-tokenizer-golden.json"));
    for e in golden.as_array().expect("list") {
        let want: Vec<u32> = e["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect();
        let text = e["text"].as_str().expect("text");
        assert_eq!(tb.encode(text, true).expect("encode"), want, "{text:?}");
    }
    (s, out)
}

/// Tensors (names, dims, types, bytes) and the given metadata keys equal those of the fixture
/// `tiny-llama.gguf` that llama.cpp's converter wrote.
fn same_as_converter(out: &Path, keys: &[&str]) {
    let ours = GgufFile::open(out).expect("open export");
    let theirs = GgufFile::open(&fixtures().join("tiny-llama/tiny-llama.gguf")).expect("open");
    let names = |f: &GgufFile| {
        let mut v: Vec<String> = f.tensors.iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&ours), names(&theirs));
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).expect("tensor");
        assert_eq!(o.dims, t.dims, "{}", t.name);
        assert_eq!(o.ggml_type, t.ggml_type, "{}", t.name);
        assert!(
            ours.tensor_data(o) == theirs.tensor_data(t),
            "{}: bytes differ from convert_hf_to_gguf.py's",
            t.name
        );
    }
    for k in keys {
        assert_eq!(ours.get(k), theirs.get(k), "metadata {k}");
    }
    assert_eq!(ours.get("general.file_type"), Some(&MetaValue::U32(0)));
    assert_eq!(ours.alignment, 32);
    assert_eq!(ours.version, 3);
}

const LLAMA_KEYS: [&str; 13] = [
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.dimension_count",
    "llama.vocab_size",
    "llama.attention.key_length",
    "llama.attention.value_length",
];

#[test]
fn gguf_round_trip_tiny_llama_from_hf() {
    let (_s, out) = gguf_round_trip("tiny-llama");
    // The tokenizer metadata built from tokenizer.json is what the converter wrote.
    let mut keys = LLAMA_KEYS.to_vec();
    keys.extend([
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
    ]);
    same_as_converter(&out, &keys);
}

#[test]
fn gguf_round_trip_tiny_qwen2_keeps_its_rows_and_biases() {
    let (_s, out) = gguf_round_trip("tiny-qwen2");
    let f = GgufFile::open(&out).expect("open export");
    assert_eq!(
        f.get("general.architecture"),
        Some(&MetaValue::String("qwen2".into()))
    );
    assert_eq!(f.get("qwen2.block_count"), Some(&MetaValue::U32(2)));
    // llama.cpp rotates qwen2 NeoX-style: Q/K rows stay in Hugging Face's order.
    let hf = load_fixture("tiny-qwen2");
    for (name, gguf) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
        ),
        (
            "model.layers.1.self_attn.k_proj.weight",
            "blk.1.attn_k.weight",
        ),
        ("lm_head.weight", "output.weight"),
    ] {
        let t = f.tensor(gguf).unwrap_or_else(|| panic!("{gguf} missing"));
        let want = hf.model.weights.get(name).expect("hf tensor");
        assert_eq!(t.ggml_type, GgmlType::BF16, "{gguf}");
        assert!(f.tensor_data(t) == want.bytes(), "{gguf}: bytes differ");
    }
    // Biases and norms as F32 (ggml adds and multiplies 1-D tensors only so), values unchanged.
    for (name, gguf) in [
        ("model.layers.1.self_attn.k_proj.bias", "blk.1.attn_k.bias"),
        ("model.norm.weight", "output_norm.weight"),
    ] {
        let t = f.tensor(gguf).unwrap_or_else(|| panic!("{gguf} missing"));
        assert_eq!(t.ggml_type, GgmlType::F32, "{gguf}");
        let want = hf.model.weights.get(name).expect("hf tensor").to_f32();
        assert_eq!(f.dequantize(t).expect("f32"), want, "{gguf}");
    }
}

#[test]
fn gguf_round_trip_tiny_qwen3_writes_its_qk_norms() {
    let (_s, out) = gguf_round_trip("tiny-qwen3");
    let f = GgufFile::open(&out).expect("open export");
    assert_eq!(
        f.get("general.architecture"),
        Some(&MetaValue::String("qwen3".into()))
    );
    assert_eq!(
        f.get("qwen3.attention.key_length"),
        Some(&MetaValue::U32(24))
    );
    // NeoX RoPE in llama.cpp's qwen3: Q/K rows in Hugging Face's order; the per-head norms
    // under llama.cpp's names.
    let hf = load_fixture("tiny-qwen3");
    for (name, gguf) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
        ),
        (
            "model.layers.1.self_attn.q_norm.weight",
            "blk.1.attn_q_norm.weight",
        ),
        (
            "model.layers.0.self_attn.k_norm.weight",
            "blk.0.attn_k_norm.weight",
        ),
    ] {
        let t = f.tensor(gguf).unwrap_or_else(|| panic!("{gguf} missing"));
        let want = hf.model.weights.get(name).expect("hf tensor");
        assert!(f.tensor_data(t) == want.bytes(), "{gguf}: bytes differ");
    }
    assert!(f.tensor("blk.0.attn_q.bias").is_none());
}

#[test]
fn gguf_round_trip_tiny_llama_from_gguf() {
    let (_s, out) = gguf_round_trip("tiny-llama/tiny-llama.gguf");
    same_as_converter(&out, &LLAMA_KEYS);
    // The tokenizer metadata is written back exactly as it came.
    let ours = GgufFile::open(&out).expect("open");
    let theirs = GgufFile::open(&fixtures().join("tiny-llama/tiny-llama.gguf")).expect("open");
    let tok = |f: &GgufFile| -> BTreeMap<String, MetaValue> {
        f.metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert!(tok(&theirs).contains_key("tokenizer.ggml.unknown_token_id"));
    assert_eq!(tok(&ours), tok(&theirs));
    assert_eq!(ours.get("general.name"), theirs.get("general.name"));
}

#[test]
fn gguf_export_of_gpt2_fails_clearly_and_leaves_the_output_alone() {
    let s = Scratch::new("gguf-refused");
    let out = s.path().join("out.gguf");
    fs::write(&out, b"keep me").expect("write");
    let (rel, arch) = ("tiny-gpt2", "gpt2");
    let l = load_fixture(rel);
    let proof = l.model.verify().expect("verified");
    let e = gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &out)
        .expect_err("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("LLaMA- and Gemma-family architectures") && msg.contains(&format!("'{arch}'")),
        "{msg}"
    );
    assert!(msg.starts_with(&out.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(fs::read(&out).expect("read"), b"keep me");
    assert_eq!(entries(s.path()), ["out.gguf"]);
}

#[test]
fn export_into_a_missing_parent_fails_without_leaving_files() {
    let s = Scratch::new("no-parent");
    let l = load_fixture("tiny-llama");
    let proof = l.model.verify().expect("verified");
    let tok = l.tokenizer.as_ref().expect("tok");
    let e = hf::write(&l.model, &proof, Some(tok), &s.path().join("no/such/model"))
        .expect_err("must fail");
    assert!(e.to_string().contains("parent directory"), "{e}");
    let e =
        gguf::write(&l.model, &proof, tok, &s.path().join("no/out.gguf")).expect_err("must fail");
    assert!(e.to_string().contains("parent directory"), "{e}");
    assert!(entries(s.path()).is_empty(), "{:?}", entries(s.path()));
}

#[test]
fn failed_export_leaves_an_existing_output_untouched() {
    let s = Scratch::new("untouched");
    let mut l = load_fixture("tiny-llama");
    let proof = l.model.verify().expect("verified");
    let dir = s.path().join("model");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("config.json"), b"old").expect("write");
    let gg = s.path().join("out.gguf");
    fs::write(&gg, b"old").expect("write");
    // Break the model after verification: a weight goes missing.
    l.model.weights.remove("model.layers.1.mlp.up_proj.weight");
    let tok = l.tokenizer.as_ref().expect("tok");
    let e = hf::write(&l.model, &proof, Some(tok), &dir).expect_err("must fail");
    assert!(
        e.to_string()
            .contains("tensor 'model.layers.1.mlp.up_proj.weight'"),
        "{e}"
    );
    let e = gguf::write(&l.model, &proof, tok, &gg).expect_err("must fail");
    assert!(
        e.to_string()
            .contains("tensor 'model.layers.1.mlp.up_proj.weight'"),
        "{e}"
    );
    assert_eq!(entries(s.path()), ["model", "out.gguf"]);
    assert_eq!(entries(&dir), ["config.json"]);
    assert_eq!(fs::read(dir.join("config.json")).expect("read"), b"old");
    assert_eq!(fs::read(&gg).expect("read"), b"old");
}

#[test]
fn hf_export_replaces_an_existing_directory_even_its_own_source() {
    // Copy the fixture, load from the copy (weights memory-mapped from it), export over it.
    let s = Scratch::new("over-source");
    let dir = s.path().join("tiny-llama");
    fs::create_dir(&dir).expect("mkdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        fs::copy(fixtures().join("tiny-llama").join(f), dir.join(f)).expect("copy");
    }
    fs::write(dir.join("stale.txt"), b"x").expect("write");
    let l = load(&dir).expect("load");
    let before = logits(&l, "tiny-llama");
    let proof = l.model.verify().expect("verified");
    hf::write(&l.model, &proof, l.tokenizer.as_ref(), &dir).expect("export over the source");
    assert_eq!(entries(s.path()), ["tiny-llama"]);
    assert!(!dir.join("stale.txt").exists());
    // The source's maps still read the old bytes; the new directory reads the same numbers.
    assert_eq!(max_abs_diff(&before, &logits(&l, "tiny-llama")), 0.0);
    let back = load(&dir).expect("load export");
    assert_eq!(max_abs_diff(&before, &logits(&back, "tiny-llama")), 0.0);
}

#[test]
fn gguf_export_over_its_own_source_file() {
    let s = Scratch::new("gguf-over-source");
    let path = s.path().join("m.gguf");
    fs::copy(fixtures().join("tiny-llama/tiny-llama.gguf"), &path).expect("copy");
    let l = load(&path).expect("load");
    let before = logits(&l, "tiny-llama");
    let proof = l.model.verify().expect("verified");
    gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &path).expect("export");
    assert_eq!(entries(s.path()), ["m.gguf"]);
    assert_eq!(max_abs_diff(&before, &logits(&l, "tiny-llama")), 0.0);
    let back = load(&path).expect("load export");
    assert_eq!(max_abs_diff(&before, &logits(&back, "tiny-llama")), 0.0);
}

#[test]
fn hf_export_without_a_tokenizer_writes_the_model_only() {
    let s = Scratch::new("hf-no-tok");
    let l = load_fixture("tiny-gpt2");
    let proof = l.model.verify().expect("verified");
    let out = s.path().join("m");
    let files = hf::write(&l.model, &proof, None, &out).expect("export");
    assert_eq!(
        files,
        [out.join("config.json"), out.join("model.safetensors")]
    );
    let back = load(&out).expect("load");
    assert!(back.tokenizer.is_none());
    assert_eq!(
        max_abs_diff(&logits(&l, "tiny-gpt2"), &logits(&back, "tiny-gpt2")),
        0.0
    );
}

#[test]
fn gguf_tokenizer_that_adds_bos_keeps_doing_so() {
    // A copy of tiny-llama.gguf with add_bos_token = true, written with our own writer.
    let s = Scratch::new("add-bos");
    let src = GgufFile::open(&fixtures().join("tiny-llama/tiny-llama.gguf")).expect("open");
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        let v = if k == "tokenizer.ggml.add_bos_token" {
            MetaValue::Bool(true)
        } else {
            v.clone()
        };
        w.add_metadata(k.clone(), v).expect("meta");
    }
    for t in &src.tensors {
        w.add_tensor(
            t.name.clone(),
            t.ggml_type,
            t.dims.clone(),
            Cow::Borrowed(src.tensor_data(t)),
        )
        .expect("tensor");
    }
    let path = s.path().join("bos.gguf");
    w.write_to(fs::File::create(&path).expect("create"))
        .expect("write");
    let mut l = load(&path).expect("load");
    let text = "First Citizen:";
    let mut want = l
        .tokenizer
        .as_mut()
        .expect("tok")
        .encode(text, false)
        .expect("encode");
    assert_eq!(want[0], 0, "BOS first");
    let proof = l.model.verify().expect("verified");

    let dir = s.path().join("hf");
    hf::write(&l.model, &proof, l.tokenizer.as_ref(), &dir).expect("hf export");
    let mut back = load(&dir).expect("load hf");
    let tok = back.tokenizer.as_mut().expect("tok");
    assert_eq!(tok.encode(text, false).expect("encode"), want);
    let tc = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(tc["add_bos_token"], true);
    assert_eq!(tc["bos_token"], "<|endoftext|>");

    // tokenizer.json → GGUF: the post-processor's BOS becomes add_bos_token again.
    let gg = s.path().join("again.gguf");
    gguf::write(
        &back.model,
        &proof,
        back.tokenizer.as_ref().expect("tok"),
        &gg,
    )
    .expect("gguf export");
    let f = GgufFile::open(&gg).expect("open");
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token"),
        Some(&MetaValue::Bool(true))
    );
    let mut again = load(&gg).expect("load gguf");
    want = again
        .tokenizer
        .as_mut()
        .expect("tok")
        .encode(text, false)
        .expect("encode");
    assert_eq!(want[0], 0);
    assert_eq!(
        want,
        back.tokenizer
            .as_mut()
            .expect("tok")
            .encode(text, false)
            .expect("encode")
    );
}

#[test]
fn a_graph_that_is_not_its_architecture_is_refused_with_the_layer() {
    let s = Scratch::new("bad-graph");
    let mut l = load_fixture("tiny-llama");
    let proof = l.model.verify().expect("verified");
    // Layer 1's gate projection cut to 128 rows (up_proj keeps 160: no longer verifiable, but
    // the exporter must still refuse it by itself, naming the layer and the sizes).
    let name = "model.layers.1.mlp.gate_proj.weight";
    let values = l.model.weights.get(name).expect("w").to_f32();
    let pruned =
        shrink_ir::TensorData::from_f32(shrink_ir::DType::F32, vec![128, 64], &values[..128 * 64])
            .expect("tensor");
    *l.model.graph.param_mut(name).expect("param") = pruned.ty.clone();
    l.model.weights.insert(name, pruned);
    // Layers may differ in width (structured pruning), but a layer must agree with itself.
    let want = "layer 1: parameter 'model.layers.1.mlp.up_proj.weight' has shape [160, 64], but \
                intermediate_size 128 (from 'model.layers.1.mlp.gate_proj.weight') implies \
                [128, 64]";
    let out = s.path().join("model");
    let e = hf::write(&l.model, &proof, None, &out)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("cannot read the llama config back") && e.contains(want),
        "{e}"
    );
    let tok = l.tokenizer.as_ref().expect("tok");
    let e = gguf::write(&l.model, &proof, tok, &s.path().join("x.gguf"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains(want), "{e}");
    assert!(entries(s.path()).is_empty());
}

/// tiny-llama cut by hand into layers of different sizes, as structured pruning would: layer 0
/// keeps 96 of its 160 MLP channels (those `c` with `c % 5 < 3`: gate/up rows, down columns),
/// layer 1 keeps its second KV group (query heads 2 and 3 of 4, KV head 1 of 2: q/k/v rows,
/// o_proj columns). The graph is rebuilt from the changed config; verified.
fn non_uniform_tiny_llama() -> Loaded {
    let mut l = load_fixture("tiny-llama");
    let mut cfg = LlamaConfig::from_graph(&l.model.graph).expect("config");
    cfg.layers[0].intermediate_size = 96;
    cfg.layers[1].num_heads = 2;
    cfg.layers[1].num_kv_heads = 1;
    assert!(!cfg.is_uniform());
    let graph = cfg.build();
    let hd = cfg.head_dim;
    let channels: Vec<usize> = (0..160).filter(|c| c % 5 < 3).collect();
    let mut weights = WeightStore::new();
    for (name, ty) in graph.params() {
        let t = l.model.weights.get(name).expect("weight");
        let (rows, cols) = match t.ty.shape.as_slice() {
            [r, c] => (*r, *c),
            [n] => (1, *n),
            s => panic!("{name}: shape {s:?}"),
        };
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let (keep_rows, keep_cols) = match name.as_str() {
            "model.layers.0.mlp.gate_proj.weight" | "model.layers.0.mlp.up_proj.weight" => {
                (channels.clone(), all(cols))
            }
            "model.layers.0.mlp.down_proj.weight" => (all(rows), channels.clone()),
            "model.layers.1.self_attn.q_proj.weight" => ((2 * hd..4 * hd).collect(), all(cols)),
            "model.layers.1.self_attn.k_proj.weight" | "model.layers.1.self_attn.v_proj.weight" => {
                ((hd..2 * hd).collect(), all(cols))
            }
            "model.layers.1.self_attn.o_proj.weight" => (all(rows), (2 * hd..4 * hd).collect()),
            _ => (all(rows), all(cols)),
        };
        let v = t.to_f32();
        let v = &v;
        let cut: Vec<f32> = keep_rows
            .iter()
            .flat_map(|r| keep_cols.iter().map(move |c| v[r * cols + c]))
            .collect();
        let d = TensorData::from_f32(DType::F32, ty.shape.clone(), &cut).expect(name);
        weights.insert(name.clone(), d);
    }
    l.model = Model { graph, weights };
    l.model.verify().expect("the non-uniform model verifies");
    l
}

#[test]
fn non_uniform_llama_hf_round_trip() {
    let mut orig = non_uniform_tiny_llama();
    let proof = orig.model.verify().expect("verified");
    let s = Scratch::new("hf-non-uniform");
    let out = s.path().join("model");
    hf::write(&orig.model, &proof, orig.tokenizer.as_ref(), &out).expect("export");
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["intermediate_size"], serde_json::json!([96, 160]));
    assert_eq!(c["num_attention_heads"], serde_json::json!([4, 2]));
    assert_eq!(c["num_key_value_heads"], serde_json::json!([2, 1]));
    assert_eq!(c["num_hidden_layers"], 2);
    assert_eq!(c["head_dim"], 16);

    let mut back = load(&out).expect("load export");
    assert_eq!(
        ir_without(&orig.model.graph, &FORMAT_META),
        ir_without(&back.model.graph, &FORMAT_META)
    );
    same_params(&orig.model, &back.model);
    let (a, b) = (logits(&orig, "tiny-llama"), logits(&back, "tiny-llama"));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "logits differ");
    same_tokens(
        orig.tokenizer.as_mut().expect("tokenizer"),
        back.tokenizer.as_mut().expect("tokenizer"),
    );

    // A list whose length is not num_hidden_layers is refused, naming the field.
    let mut bad = c.clone();
    bad["num_key_value_heads"] = serde_json::json!([2, 1, 1]);
    fs::write(out.join("config.json"), bad.to_string()).expect("write");
    let e = load(&out).expect_err("wrong length").to_string();
    assert!(
        e.contains("config.json")
            && e.contains("field 'num_key_value_heads'")
            && e.contains("a list of 3 sizes, but num_hidden_layers is 2"),
        "{e}"
    );
}

#[test]
fn non_uniform_llama_gguf_round_trip_as_deci() {
    let mut orig = non_uniform_tiny_llama();
    let proof = orig.model.verify().expect("verified");
    let s = Scratch::new("gguf-non-uniform");
    let out = s.path().join("pruned.gguf");
    let tok = orig.tokenizer.as_ref().expect("tokenizer");
    gguf::write(&orig.model, &proof, tok, &out).expect("export");

    let f = GgufFile::open(&out).expect("open");
    let u32s = |v: &[u32]| MetaValue::Array(v.iter().map(|&x| MetaValue::U32(x)).collect());
    let want = [
        ("general.architecture", MetaValue::String("deci".into())),
        ("deci.block_count", MetaValue::U32(2)),
        ("deci.context_length", MetaValue::U32(256)),
        ("deci.embedding_length", MetaValue::U32(64)),
        ("deci.feed_forward_length", u32s(&[96, 160])),
        ("deci.attention.head_count", u32s(&[4, 2])),
        ("deci.attention.head_count_kv", u32s(&[2, 1])),
        ("deci.attention.key_length", MetaValue::U32(16)),
        ("deci.attention.value_length", MetaValue::U32(16)),
        ("deci.rope.dimension_count", MetaValue::U32(16)),
        ("deci.rope.freq_base", MetaValue::F32(10000.0)),
        (
            "deci.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        ),
        ("deci.vocab_size", MetaValue::U32(384)),
    ];
    for (k, v) in &want {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert!(!f.metadata.keys().any(|k| k.starts_with("llama.")));
    // Each layer's Q/K rows are permuted by its own head counts.
    let bytes = |n: &str| orig.model.weights.get(n).expect("w").bytes();
    for (hf_name, gg, heads) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
            4,
        ),
        (
            "model.layers.1.self_attn.q_proj.weight",
            "blk.1.attn_q.weight",
            2,
        ),
        (
            "model.layers.1.self_attn.k_proj.weight",
            "blk.1.attn_k.weight",
            1,
        ),
    ] {
        let t = f.tensor(gg).expect("tensor");
        assert_eq!(t.dims, [64, heads as u64 * 16], "{gg}");
        assert!(
            f.tensor_data(t) == permute_rows(bytes(hf_name), heads, 16, 64 * 4).as_slice(),
            "{gg}"
        );
    }
    assert_eq!(f.tensor("blk.0.ffn_down.weight").expect("t").dims, [96, 64]);
    drop(f);

    let mut back = load(&out).expect("load export");
    assert_eq!(
        back.model
            .graph
            .meta
            .get("architecture")
            .map(String::as_str),
        Some("llama")
    );
    assert_eq!(
        ir_without(&orig.model.graph, &FORMAT_META),
        ir_without(&back.model.graph, &FORMAT_META)
    );
    same_params(&orig.model, &back.model);
    let (a, b) = (logits(&orig, "tiny-llama"), logits(&back, "tiny-llama"));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "logits differ");
    same_tokens(
        orig.tokenizer.as_mut().expect("tokenizer"),
        back.tokenizer.as_mut().expect("tokenizer"),
    );

    // An array whose length is not block_count is refused, naming the key.
    let src = GgufFile::open(&out).expect("open");
    let bad = s.path().join("bad.gguf");
    copy_gguf(&src, &bad, |k, v| match k {
        "deci.attention.head_count" => Some((k.into(), u32s(&[4, 2, 2]))),
        _ => Some((k.into(), v.clone())),
    });
    let e = load(&bad).expect_err("wrong length").to_string();
    assert!(
        e.contains("bad.gguf")
            && e.contains("field 'deci.attention.head_count'")
            && e.contains("an array of 3 sizes, but block_count is 2"),
        "{e}"
    );
}

/// Writes a copy of a GGUF file with each metadata key/value replaced by what `edit` returns
/// for it (`None` drops it), tensors unchanged.
fn copy_gguf(
    src: &GgufFile,
    path: &Path,
    edit: impl Fn(&str, &MetaValue) -> Option<(String, MetaValue)>,
) {
    copy_gguf_adding(src, path, edit, &[]);
}

/// [`copy_gguf`], then the keys of `add` appended.
fn copy_gguf_adding(
    src: &GgufFile,
    path: &Path,
    edit: impl Fn(&str, &MetaValue) -> Option<(String, MetaValue)>,
    add: &[(&str, MetaValue)],
) {
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        if let Some((k, v)) = edit(k, v) {
            w.add_metadata(k, v).expect("meta");
        }
    }
    for (k, v) in add {
        w.add_metadata(*k, v.clone()).expect("meta");
    }
    for t in &src.tensors {
        w.add_tensor(
            t.name.clone(),
            t.ggml_type,
            t.dims.clone(),
            Cow::Borrowed(src.tensor_data(t)),
        )
        .expect("tensor");
    }
    w.write_to(fs::File::create(path).expect("create"))
        .expect("write");
}

#[test]
fn gguf_import_reads_deci_files_with_scalar_or_i32_array_sizes() {
    // tiny-llama.gguf with every `llama.*` key renamed `deci.*`: scalars (llama.cpp's
    // get_key_or_arr repeats them), then head counts as i32 arrays (what gguf-py writes for
    // lists). Either is the same LLaMA graph with the same logits.
    let s = Scratch::new("deci-scalars");
    let fixture = fixtures().join("tiny-llama/tiny-llama.gguf");
    let src = GgufFile::open(&fixture).expect("open");
    let want = load(&fixture).expect("load");
    for arrays in [false, true] {
        let path = s.path().join(format!("deci-{arrays}.gguf"));
        copy_gguf(&src, &path, |k, v| {
            if k == "general.architecture" {
                return Some((k.into(), MetaValue::String("deci".into())));
            }
            let Some(rest) = k.strip_prefix("llama.") else {
                return Some((k.into(), v.clone()));
            };
            let v = match (arrays, v.as_int()) {
                (true, Some(n)) if rest.starts_with("attention.head_count") => {
                    MetaValue::Array(vec![MetaValue::I32(n as i32); 2])
                }
                _ => v.clone(),
            };
            Some((format!("deci.{rest}"), v))
        });
        let f = GgufFile::open(&path).expect("open copy");
        assert!(f.get("llama.block_count").is_none() && f.get("deci.block_count").is_some());
        drop(f);
        let back = load(&path).expect("load deci");
        assert_eq!(
            print(&want.model.graph),
            print(&back.model.graph),
            "arrays={arrays}"
        );
        assert_eq!(
            max_abs_diff(&logits(&want, "tiny-llama"), &logits(&back, "tiny-llama")),
            0.0
        );
    }
}

/// Replaces every `*_proj.weight` of `model` (the linears of attention and MLP) by its
/// round-to-nearest `scheme` quantization, declared so in the graph; returns how many.
fn quantize_linears(model: &mut Model, scheme: QuantScheme) -> usize {
    let names: Vec<String> = model
        .graph
        .params()
        .keys()
        .filter(|n| n.ends_with("_proj.weight"))
        .cloned()
        .collect();
    for n in &names {
        let t = model.weights.get(n).expect("weight");
        let bytes = scheme
            .quantize(&t.ty.shape, &t.to_f32())
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        let q = TensorData::quantized(scheme, t.ty.shape.clone(), bytes).expect("packed size");
        *model.graph.param_mut(n).expect("param") = q.ty.clone();
        model.weights.insert(n.clone(), q);
    }
    names.len()
}

/// tiny-llama (from its HF directory) with its linears quantized as `scheme`, verified.
fn quantized_tiny_llama(scheme: &str) -> (Loaded, QuantScheme) {
    let scheme: QuantScheme = scheme.parse().expect("scheme");
    let mut l = load_fixture("tiny-llama");
    // 2 layers × q, k, v, o, gate, up, down.
    assert_eq!(quantize_linears(&mut l.model, scheme), 14);
    l.model.verify().expect("quantized model verifies");
    (l, scheme)
}

/// `back` has the parameters of `orig`, each with the same type (scheme included) and the same
/// stored bytes.
fn same_params(orig: &Model, back: &Model) {
    let names = |m: &Model| m.weights.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(orig), names(back));
    for (n, t) in orig.weights.iter() {
        let b = back.weights.get(n).expect("param");
        assert_eq!(b.ty, t.ty, "{n}");
        assert!(b.bytes() == t.bytes(), "{n}: bytes differ");
        assert_eq!(back.graph.param(n), Some(&t.ty), "{n}: declared type");
    }
}

#[test]
fn gguf_round_trip_keeps_ggml_quantized_weights_bit_for_bit() {
    for (name, ggml, ftype) in [
        ("q8_0", GgmlType::Q8_0, 7),
        ("q4_0", GgmlType::Q4_0, 2),
        ("q4_1", GgmlType::Q4_1, 3),
    ] {
        let (l, scheme) = quantized_tiny_llama(name);
        let proof = l.model.verify().expect("verified");
        let s = Scratch::new(&format!("gguf-{name}"));
        let out = s.path().join("q.gguf");
        gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &out).expect("export");

        let f = GgufFile::open(&out).expect("open");
        assert_eq!(
            f.get("general.file_type"),
            Some(&MetaValue::U32(ftype)),
            "{name}"
        );
        for (hf, ty) in l.model.graph.params() {
            let t = f
                .tensor(&gguf_name(hf).expect("gguf name"))
                .expect("tensor");
            let want = if ty.quant.is_some() {
                ggml
            } else {
                GgmlType::F32
            };
            assert_eq!(t.ggml_type, want, "{name}: {hf}");
        }
        // Unpermuted tensors are the stored bytes; Q/K move whole packed rows.
        let up = "model.layers.1.mlp.up_proj.weight";
        let bytes = |n: &str| l.model.weights.get(n).expect("w").bytes();
        assert!(f.tensor_data(f.tensor("blk.1.ffn_up.weight").expect("t")) == bytes(up));
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert!(
            f.tensor_data(f.tensor("blk.0.attn_q.weight").expect("t"))
                == permute_rows(bytes(q), 4, 16, scheme.row_bytes(64)).as_slice()
        );

        let back = load(&out).expect("load");
        assert_eq!(
            ir_without(&l.model.graph, &FORMAT_META),
            ir_without(&back.model.graph, &FORMAT_META)
        );
        assert!(print(&back.model.graph).contains(&format!(
            "param model.layers.0.self_attn.k_proj.weight: {name}[32, 64]"
        )));
        same_params(&l.model, &back.model);
        let (a, b) = (logits(&l, "tiny-llama"), logits(&back, "tiny-llama"));
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}: logits differ");
        // Quantized tensors are mapped from the file, but for Q/K, whose rows were put back in
        // order (a copy).
        for (n, t) in back
            .model
            .weights
            .iter()
            .filter(|(_, t)| t.ty.quant.is_some())
        {
            let qk = n.contains("q_proj") || n.contains("k_proj");
            assert_eq!(t.is_mapped(), !qk, "{name}: {n}");
        }
    }
}

#[test]
fn file_type_is_the_type_holding_most_matrix_elements() {
    let t = |ggml_type, dims: &[u64]| shrink_formats::gguf::GgufTensor {
        name: String::new(),
        ggml_type,
        dims: dims.to_vec(),
        pieces: Vec::new(),
    };
    // SmolLM2's mix: a Q8_0 embedding, Q4_1 layers holding more elements, F32 norms.
    let smol = [
        t(GgmlType::Q8_0, &[576, 49152]),
        t(GgmlType::Q4_1, &[576, 1536]),
        t(GgmlType::Q4_1, &[1536, 576]),
        t(GgmlType::Q4_1, &[576, 576]),
        t(GgmlType::Q4_1, &[576, 576]),
        t(GgmlType::F32, &[576]),
    ];
    assert_eq!(gguf::file_type(&smol[..1]), 7);
    assert_eq!(gguf::file_type(&smol[1..]), 3);
    // 28.3M Q8_0 elements against 2.4M Q4_1 here (the real file's 30 layers hold 106M)…
    assert_eq!(gguf::file_type(&smol), 7);
    // …F32 matrices never count, F16 and BF16 as before, ties to the wider type.
    let f32_big = t(GgmlType::F32, &[4096, 4096]);
    assert_eq!(
        gguf::file_type(&[f32_big.clone(), t(GgmlType::Q4_0, &[32, 1])]),
        2
    );
    assert_eq!(gguf::file_type(std::slice::from_ref(&f32_big)), 0);
    assert_eq!(
        gguf::file_type(&[t(GgmlType::F16, &[64, 2]), t(GgmlType::BF16, &[64, 2])]),
        32
    );
    assert_eq!(
        gguf::file_type(&[t(GgmlType::Q4_0, &[64, 2]), t(GgmlType::Q4_1, &[64, 2])]),
        3
    );
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn smollm2_gguf_export_writes_back_the_original_tensors() {
    // Q4_1 layers and a Q8_0 embedding stay quantized through import and export: every tensor
    // comes back with the original's type, dims and bytes (Q/K un-permuted and re-permuted).
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let l = load(&src).expect("run scripts/fetch-smollm2.sh");
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("smollm2-gguf");
    let out = s.path().join("smollm2.gguf");
    gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &out).expect("export");
    let (ours, theirs) = (
        GgufFile::open(&out).expect("open"),
        GgufFile::open(&src).expect("open"),
    );
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).expect("tensor");
        assert_eq!((o.ggml_type, &o.dims), (t.ggml_type, &t.dims), "{}", t.name);
        assert!(
            ours.tensor_data(o) == theirs.tensor_data(t),
            "{}: bytes differ",
            t.name
        );
    }
    assert_eq!(ours.get("general.file_type"), Some(&MetaValue::U32(3)));
    assert_eq!(
        ours.get("general.file_type"),
        theirs.get("general.file_type")
    );
}

#[test]
fn gguf_import_checks_dequantized_values_are_finite() {
    let (l, _) = quantized_tiny_llama("q8_0");
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("gguf-nan");
    let out = s.path().join("q.gguf");
    gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &out).expect("export");
    let f = GgufFile::open(&out).expect("open");
    let t = f.tensor("blk.1.ffn_up.weight").expect("tensor");
    // Row 3 (68 bytes: two blocks of 34), second block: its f16 scale becomes NaN.
    let at = (f.data_offset() + t.offset) as usize + 3 * 68 + 34;
    drop(f);
    let mut bytes = fs::read(&out).expect("read");
    bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    fs::write(&out, &bytes).expect("write");
    let e = load(&out).expect_err("NaN scale").to_string();
    assert!(
        e.contains("tensor 'blk.1.ffn_up.weight'")
            && e.contains("non-finite")
            && e.contains("row 3, column 32"),
        "{e}"
    );
}

#[test]
fn gguf_export_refuses_schemes_without_a_ggml_type_before_writing() {
    let (l, _) = quantized_tiny_llama("nf4_b32_dq");
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("gguf-nf4");
    let out = s.path().join("nf4.gguf");
    let tok = l.tokenizer.as_ref().expect("tok");
    let e = gguf::write(&l.model, &proof, tok, &out)
        .expect_err("refused")
        .to_string();
    assert!(e.starts_with(&out.display().to_string()), "{e}");
    assert!(
        e.contains("tensor 'model.layers.0.mlp.down_proj.weight'")
            && e.contains("nf4_b32_dq")
            && e.contains("GGUF has no tensor type")
            && e.contains("write a directory"),
        "{e}"
    );
    assert!(!out.exists());
    assert!(entries(s.path()).is_empty(), "{:?}", entries(s.path()));
    assert!(gguf::prepare(&l.model, tok, &out).is_err());
}

/// The `shrink.quant` entry of a safetensors file's `__metadata__`, parsed.
fn quant_metadata(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).expect("read");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("shrink.quant"))
        .expect("shrink.quant")
        .clone();
    serde_json::from_str(&text).expect("json")
}

#[test]
fn directory_round_trip_keeps_quantized_weights_bit_for_bit() {
    for name in ["q4_0", "int4_g32_asym", "nf4_b32_dq", "int8"] {
        let (l, scheme) = quantized_tiny_llama(name);
        let proof = l.model.verify().expect("verified");
        let s = Scratch::new(&format!("hf-{name}"));
        let out = s.path().join("model");
        hf::write(&l.model, &proof, l.tokenizer.as_ref(), &out).expect("export");

        let c = read_json(&out.join("config.json"));
        let qc = &c["quantization_config"];
        assert_eq!(qc["quant_method"], "shrink");
        assert_eq!(qc["format"], "docs/quantization.md");
        let schemes = qc["schemes"].as_object().expect("schemes");
        assert_eq!(schemes.len(), 14);
        assert!(schemes.values().all(|v| v == name), "{schemes:?}");
        assert_eq!(c["torch_dtype"], "float32");

        let st_path = out.join("model.safetensors");
        let meta = quant_metadata(&st_path);
        let k = "model.layers.1.self_attn.k_proj.weight";
        assert_eq!(
            meta[k],
            serde_json::json!({"scheme": name, "shape": [32, 64]})
        );
        assert_eq!(meta.as_object().expect("object").len(), 14);
        let bytes = fs::read(&st_path).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor(k).expect("k");
        assert_eq!(t.dtype(), safetensors::Dtype::U8);
        assert_eq!(t.shape(), [scheme.packed_size(&[32, 64]).expect("size")]);
        let norm = st.tensor("model.norm.weight").expect("norm");
        assert_eq!(
            (norm.dtype(), norm.shape()),
            (safetensors::Dtype::F32, &[64][..])
        );

        let back = load(&out).expect("load");
        assert_eq!(
            ir_without(&l.model.graph, &FORMAT_META),
            ir_without(&back.model.graph, &FORMAT_META)
        );
        same_params(&l.model, &back.model);
        assert!(back.model.weights.iter().all(|(_, t)| t.is_mapped()));
        let (a, b) = (logits(&l, "tiny-llama"), logits(&back, "tiny-llama"));
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}: logits differ");

        // The same model gives the same bytes (metadata keys in a fixed order).
        let again = s.path().join("again");
        hf::write(&l.model, &proof, None, &again).expect("export again");
        assert!(fs::read(again.join("model.safetensors")).expect("read") == bytes);
    }
}

#[test]
fn safetensors_of_float_models_are_those_of_the_safetensors_crate() {
    for rel in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-phi3",
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-gpt2",
    ] {
        let l = load_fixture(rel);
        let proof = l.model.verify().expect("verified");
        let s = Scratch::new(&format!("st-{rel}"));
        let out = s.path().join("m");
        hf::write(&l.model, &proof, None, &out).expect("export");
        let ours = fs::read(out.join("model.safetensors")).expect("read");
        let st = safetensors::SafeTensors::deserialize(&ours).expect("safetensors");
        let theirs = safetensors::tensor::serialize(
            st.tensors(),
            Some(std::collections::HashMap::from([(
                "format".to_string(),
                "pt".to_string(),
            )])),
        )
        .expect("serialize");
        assert!(
            ours == theirs,
            "{rel}: bytes differ from safetensors::serialize"
        );
    }
}

/// Rewrites the `shrink.quant` metadata of a safetensors file with `edit` (tensor data kept).
fn edit_quant_metadata(path: &Path, edit: impl FnOnce(&mut String)) {
    let bytes = fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    let slot = &mut header["__metadata__"]["shrink.quant"];
    let mut text = slot.as_str().expect("string").to_string();
    edit(&mut text);
    *slot = serde_json::Value::String(text);
    let mut head = serde_json::to_vec(&header).expect("json");
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(path, out).expect("write");
}

#[test]
fn malformed_quant_metadata_is_refused_naming_file_and_tensor() {
    let (l, _) = quantized_tiny_llama("q4_0");
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("hf-bad-quant");
    let k = "model.layers.1.self_attn.k_proj.weight";
    let entry = format!(r#""{k}":{{"scheme":"q4_0","shape":[32,64]}}"#);
    let cases: [(&str, String, &[&str]); 6] = [
        (
            "unknown scheme",
            format!(r#""{k}":{{"scheme":"q9_9","shape":[32,64]}}"#),
            &["unknown quantization scheme 'q9_9'"],
        ),
        (
            "wrong byte length",
            format!(r#""{k}":{{"scheme":"q4_0","shape":[64,64]}}"#),
            &["holds 1152 bytes, but q4_0 of shape [64, 64] packs into 2304"],
        ),
        (
            "no scheme",
            format!(r#""{k}":{{"shape":[32,64]}}"#),
            &["'scheme' is missing"],
        ),
        (
            "bad shape",
            format!(r#""{k}":{{"scheme":"q4_0","shape":[32,-64]}}"#),
            &["'shape' is missing or not a list of sizes"],
        ),
        (
            // Same byte count, but not the shape the config implies.
            "transposed shape",
            format!(r#""{k}":{{"scheme":"q4_0","shape":[64,32]}}"#),
            &["quantized shape [64, 32] does not match the config"],
        ),
        (
            "not a U8 tensor",
            format!(r#""model.norm.weight":{{"scheme":"q4_0","shape":[2,32]}},{entry}"#),
            &["1-D U8", "tensor 'model.norm.weight'"],
        ),
    ];
    for (what, replacement, want) in cases {
        let out = s.path().join("m");
        hf::write(&l.model, &proof, None, &out).expect("export");
        let st = out.join("model.safetensors");
        edit_quant_metadata(&st, |t| {
            assert!(t.contains(&entry));
            *t = t.replace(&entry, &replacement);
        });
        let e = load(&out).expect_err(what).to_string();
        let tensor = if what == "not a U8 tensor" {
            "model.norm.weight"
        } else {
            k
        };
        assert!(
            e.starts_with(&st.display().to_string())
                && e.contains(&format!("tensor '{tensor}'"))
                && want.iter().all(|w| e.contains(w)),
            "{what}: {e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
    // Not JSON at all: the file and the key are named.
    let out = s.path().join("m");
    hf::write(&l.model, &proof, None, &out).expect("export");
    let st = out.join("model.safetensors");
    edit_quant_metadata(&st, |t| t.truncate(10));
    let e = load(&out).expect_err("not JSON").to_string();
    assert!(
        e.starts_with(&st.display().to_string())
            && e.contains("__metadata__ 'shrink.quant': invalid JSON"),
        "{e}"
    );
    // Another quantization method in config.json is named as unsupported.
    let cfg = out.join("config.json");
    let text = fs::read_to_string(&cfg).expect("read");
    fs::write(
        &cfg,
        text.replace(r#""quant_method": "shrink""#, r#""quant_method": "gptq""#),
    )
    .expect("write");
    let e = load(&out).expect_err("gptq").to_string();
    assert!(
        e.contains("quantization_config.quant_method") && e.contains("'gptq' is not supported"),
        "{e}"
    );
}

/// Writes the exports that `fixtures/export/check_exports.py` checks with transformers and
/// llama.cpp, into `target/export-check/`.
#[test]
#[ignore = "writes target/export-check/ for fixtures/export/check_exports.py"]
fn write_exports_for_the_check_script() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/export-check");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("gguf")).expect("mkdir");
    for (rel, name) in [
        ("tiny-llama", "tiny-llama"),
        ("tiny-llama/tiny-llama.gguf", "tiny-llama-from-gguf"),
        ("tiny-qwen2", "tiny-qwen2"),
        ("tiny-gpt2", "tiny-gpt2"),
    ] {
        let l = load_fixture(rel);
        let proof = l.model.verify().expect("verified");
        hf::write(&l.model, &proof, l.tokenizer.as_ref(), &root.join(name)).expect("hf");
        if name.starts_with("tiny-llama") {
            let tok = l.tokenizer.as_ref().expect("tok");
            gguf::write(
                &l.model,
                &proof,
                tok,
                &root.join(format!("gguf/{name}.gguf")),
            )
            .expect("gguf");
        }
    }
    // The linears quantized as each ggml scheme: the GGUF, shrink's dequantized values of every
    // tensor in IR order and orientation (`.f32.bin`, indexed by `.json`), and the same
    // dequantized model written as F32 (`-dequantized.gguf`) for llama.cpp to compare against.
    for scheme in ["q8_0", "q4_0", "q4_1"] {
        let (l, _) = quantized_tiny_llama(scheme);
        let proof = l.model.verify().expect("verified");
        let tok = l.tokenizer.as_ref().expect("tok");
        let base = root.join(format!("gguf/tiny-llama-{scheme}"));
        gguf::write(&l.model, &proof, tok, &base.with_extension("gguf")).expect("gguf");
        let mut values: Vec<u8> = Vec::new();
        let mut index = Vec::new();
        let mut deq = l.model.clone();
        for (name, t) in l.model.weights.iter() {
            let v = t.to_f32();
            index.push(serde_json::json!({
                "name": name,
                "gguf_name": gguf_name(name).expect("gguf name"),
                "type": t.ty.quant.map_or(t.ty.dtype.to_string(), |q| q.to_string()),
                "shape": t.ty.shape,
                "offset": values.len() / 4,
                "count": v.len(),
            }));
            values.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            let f = TensorData::from_f32(DType::F32, t.ty.shape.clone(), &v).expect("f32");
            *deq.graph.param_mut(name).expect("param") = f.ty.clone();
            deq.weights.insert(name.clone(), f);
        }
        fs::write(base.with_extension("f32.bin"), values).expect("write values");
        let index = serde_json::json!({
            "scheme": scheme,
            "heads": 4,
            "kv_heads": 2,
            "head_dim": 16,
            "tensors": index,
        });
        fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&index).expect("json"),
        )
        .expect("write index");
        let proof = deq.verify().expect("verified");
        let path = root.join(format!("gguf/tiny-llama-{scheme}-dequantized.gguf"));
        gguf::write(&deq, &proof, tok, &path).expect("gguf");
    }
    // Layers of different sizes (llama.cpp's `deci`), with shrink's perplexity as llama.cpp's
    // perplexity tool computes it (`-c 128 --chunks 4` on tiny Shakespeare), for the original
    // model too.
    let text = fs::read_to_string(fixtures().join("../data/tinyshakespeare/input.txt"))
        .expect("data/tinyshakespeare/input.txt");
    let ppl = |l: &mut Loaded| {
        let tokens = l
            .tokenizer
            .as_mut()
            .expect("tok")
            .encode(&text, false)
            .expect("encode");
        let opts = shrink_runtime::PerplexityOptions {
            ctx: 128,
            chunks: Some(4),
            scoring: shrink_runtime::Scoring::SecondHalf,
        };
        let engine = Engine::new(&l.model, Device::Cpu).expect("engine");
        engine
            .perplexity(&tokens, opts, &mut |_, _, _| {})
            .expect("ppl")
            .ppl
    };
    let mut l = non_uniform_tiny_llama();
    let proof = l.model.verify().expect("verified");
    let base = root.join("gguf/tiny-llama-non-uniform");
    let tok = l.tokenizer.as_ref().expect("tok");
    gguf::write(&l.model, &proof, tok, &base.with_extension("gguf")).expect("gguf");
    let index = serde_json::json!({
        "feed_forward_length": [96, 160],
        "head_count": [4, 2],
        "head_count_kv": [2, 1],
        "shrink_ppl": ppl(&mut l),
        "shrink_ppl_original": ppl(&mut load_fixture("tiny-llama")),
    });
    fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&index).expect("json"),
    )
    .expect("write");
    eprintln!("wrote {}", root.display());
}

#[test]
fn quantized_phi3_parts_stack_into_ggml_rows_and_split_back_bit_for_bit() {
    let mut l = load_fixture("tiny-phi3");
    assert_eq!(quantize_linears(&mut l.model, QuantScheme::Q8_0), 14);
    let proof = l.model.verify().expect("verified");
    let s = Scratch::new("gguf-phi3-q8_0");
    let out = s.path().join("q.gguf");
    gguf::write(&l.model, &proof, l.tokenizer.as_ref().expect("tok"), &out).expect("export");
    let f = GgufFile::open(&out).expect("open");
    let qkv = f.tensor("blk.0.attn_qkv.weight").expect("attn_qkv");
    assert_eq!(
        (qkv.ggml_type, qkv.dims.clone()),
        (GgmlType::Q8_0, vec![64, 128])
    );
    // Split back into mapped row ranges of the packed tensor, each part's bytes as they were.
    let back = load(&out).expect("load");
    same_params(&l.model, &back.model);
}

#[test]
fn gguf_keys_of_the_wrong_type_or_unread_values_are_refused_not_defaulted() {
    // An optional key (absent: llama.cpp's default) present with the wrong type is an error
    // naming the key, never the default; YaRN keys llama.cpp does not read for `llama` are
    // refused when they hold anything but its own value.
    let s = Scratch::new("wrong-typed-keys");
    let fixture = fixtures().join("tiny-llama/tiny-llama.gguf");
    let src = GgufFile::open(&fixture).expect("open");
    type Case<'a> = (&'a str, Vec<(&'a str, MetaValue)>, &'a str);
    let cases: [Case; 5] = [
        (
            "theta",
            vec![("llama.rope.freq_base", MetaValue::String("1e4".into()))],
            "metadata key 'llama.rope.freq_base' should be an f32, found a string",
        ),
        (
            "eos",
            vec![("tokenizer.ggml.eos_token_id", MetaValue::F32(2.0))],
            "metadata key 'tokenizer.ggml.eos_token_id' should be a u32",
        ),
        (
            "scaling",
            vec![("llama.rope.scaling.type", MetaValue::U32(2))],
            "metadata key 'llama.rope.scaling.type' should be a string",
        ),
        (
            "yarn-beta",
            vec![
                ("llama.rope.scaling.type", MetaValue::String("yarn".into())),
                ("llama.rope.scaling.factor", MetaValue::F32(4.0)),
                ("llama.rope.scaling.yarn_beta_fast", MetaValue::F32(16.0)),
            ],
            "field 'llama.rope.scaling.yarn_beta_fast': 16: llama.cpp does not read this key",
        ),
        (
            "yarn-beta-type",
            vec![
                ("llama.rope.scaling.type", MetaValue::String("yarn".into())),
                ("llama.rope.scaling.factor", MetaValue::F32(4.0)),
                (
                    "llama.rope.scaling.yarn_beta_fast",
                    MetaValue::String("32".into()),
                ),
            ],
            "metadata key 'llama.rope.scaling.yarn_beta_fast' should be an f32",
        ),
    ];
    for (name, keys, want) in cases {
        let path = s.path().join(format!("{name}.gguf"));
        let replaced = |k: &str| keys.iter().any(|(key, _)| *key == k);
        copy_gguf_adding(
            &src,
            &path,
            |k, v| (!replaced(k)).then(|| (k.to_string(), v.clone())),
            &keys,
        );
        let e = load(&path).expect_err(name).to_string();
        assert!(
            e.contains(&format!("{name}.gguf")) && e.contains(want),
            "{name}: {e}"
        );
    }
}
