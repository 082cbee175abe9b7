//! The fuzz targets: for each parser, its seeds, how an input is mutated, and one execution,
//! which must end in an error or a model that verifies (and, for texts, round-trips).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;
use shrink_formats::Tokenizer;
use shrink_ir::Model;

use crate::mutate;

/// Target names, in the order they run.
pub const NAMES: [&str; 6] = ["gguf", "safetensors", "peft", "pipeline", "ir", "tokenizer"];

/// An input: one or more named files' bytes (a directory's files, or a single text).
#[derive(Clone)]
pub struct Input {
    pub parts: Vec<(&'static str, Vec<u8>)>,
}

impl Input {
    fn one(name: &'static str, bytes: Vec<u8>) -> Input {
        Input {
            parts: vec![(name, bytes)],
        }
    }

    /// All parts in one buffer, for a crash file (`== name (len) ==` headers).
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, bytes) in &self.parts {
            out.extend(format!("== {name} ({}) ==\n", bytes.len()).bytes());
            out.extend(bytes);
            out.push(b'\n');
        }
        out
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|(_, b)| b.len()).sum()
    }
}

/// What every target shares: the tiny models, tokenizers and a work directory.
pub struct Env {
    pub work: PathBuf,
    pub base_model: Model,
    tok_json: Tokenizer,
    tok_gguf: Tokenizer,
    /// llama.cpp's SentencePiece, from its Llama 2 vocabulary GGUF.
    tok_spm: Tokenizer,
    registry: shrink_passes::Registry,
    tokenizer_json: Vec<u8>,
}

/// Fields the config parsers know or refuse, planted by the JSON mutator.
const CONFIG_KEYS: [&str; 32] = [
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "factor",
    "original_max_position_embeddings",
    "attention_factor",
    "truncate",
    "rms_norm_eps",
    "partial_rotary_factor",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "quantization_config",
    "quant_method",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
];

const PEFT_KEYS: [&str; 10] = [
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
    "bias",
];

/// Words of the pipeline language: pass names, option names and values.
const PIPELINE_WORDS: [&str; 30] = [
    "passes",
    "pass",
    "options",
    "model",
    "eval",
    "data",
    "ctx",
    "chunks",
    "score",
    "output",
    "output_format",
    "seed",
    "\"quantize\"",
    "\"prune\"",
    "\"lora\"",
    "\"lora-fold\"",
    "\"distill\"",
    "\"finetune\"",
    "\"cast\"",
    "\"prune-structured\"",
    "scheme",
    "method",
    "gptq",
    "train",
    "steps",
    "batch",
    "seq_len",
    "accumulate",
    "Some(",
    "None",
];

const IR_WORDS: [&str; 16] = [
    "linear",
    "embedding",
    "attention",
    "rms_norm",
    "layer_norm",
    "split",
    "add",
    "mul",
    "input",
    "output",
    "param",
    "meta",
    "f32",
    "q4_0",
    "%0",
    "heads=",
];

/// The Hugging Face seed models, by `micro_config` name.
const SEED_MODELS: [&str; 9] = [
    "llama",
    "llama3",
    "qwen2",
    "qwen3",
    "qwen3_yarn",
    "phi3",
    "gemma3_text",
    "mistral",
    "gpt2",
];

/// A config.json of the smallest LLaMA-family or GPT-2 model, over the tiny tokenizer;
/// `llama3` is a Llama with Llama 3.1's RoPE scaling, `qwen3_yarn` a Qwen3 with YaRN's.
fn micro_config(seed: &str) -> Value {
    let model_type = match seed {
        "llama3" => "llama",
        "qwen3_yarn" => "qwen3",
        _ => seed,
    };
    let mut c = serde_json::json!({
        "model_type": model_type,
        "vocab_size": 384,
        "bos_token_id": 0,
        "eos_token_id": 0,
    });
    let fields = match model_type {
        "gpt2" => serde_json::json!({
            "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32,
        }),
        _ => serde_json::json!({
            "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": !matches!(model_type, "qwen2" | "qwen3" | "phi3"),
        }),
    };
    if let (Value::Object(m), Value::Object(f)) = (&mut c, fields) {
        m.extend(f);
    }
    if seed == "llama3" {
        c["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
        });
    }
    if seed == "qwen3_yarn" {
        c["rope_scaling"] = serde_json::json!({
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "attention_factor": 1.0, "truncate": true,
        });
    }
    c
}

impl Env {
    /// Writes the seed models under `work/seeds` and loads what every execution shares.
    pub fn new(repo: &Path, work: PathBuf) -> Result<Env> {
        std::fs::create_dir_all(work.join("seeds"))?;
        let tj_path = repo.join("fixtures/tiny-llama/tokenizer.json");
        let tok_json = Tokenizer::from_file(&tj_path)?;
        for arch in SEED_MODELS {
            let cfg = work.join(format!("seeds/{arch}.json"));
            std::fs::write(&cfg, serde_json::to_vec_pretty(&micro_config(arch))?)?;
            let model = shrink_import::hf::load_config_random(&cfg, 1, false)?;
            let proof = model.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
            let dir = work.join(format!("seeds/{arch}"));
            shrink_export::hf::write(&model, &proof, Some(&tok_json), &dir)?;
            if matches!(arch, "llama" | "qwen3_yarn") {
                let gguf = work.join(format!("seeds/{arch}.gguf"));
                shrink_export::gguf::write(&model, &proof, &tok_json, &gguf)?;
            }
        }
        let tok_gguf = shrink_import::load(&work.join("seeds/llama.gguf"))?
            .tokenizer
            .context("the seed GGUF has a tokenizer")?;
        let spm = repo.join("models/vocab/ggml-vocab-llama-spm.gguf");
        let tok_spm = shrink_formats::gguf::GgufFile::open(&spm)
            .map_err(anyhow::Error::from)
            .and_then(|f| Ok(Tokenizer::from_gguf(&f)?))
            .with_context(|| format!("{} (scripts/fetch-llamacpp-vocab.sh)", spm.display()))?;
        let base_model = shrink_import::load(&repo.join("fixtures/tiny-llama"))?.model;
        Ok(Env {
            work,
            base_model,
            tok_json,
            tok_gguf,
            tok_spm,
            registry: shrink_passes::Registry::builtin(),
            tokenizer_json: std::fs::read(&tj_path)?,
        })
    }

    /// The seed inputs of a target.
    pub fn seeds(&self, repo: &Path, target: &str) -> Result<Vec<Input>> {
        let read = |p: PathBuf| std::fs::read(&p).with_context(|| p.display().to_string());
        let seeds = self.work.join("seeds");
        Ok(match target {
            "gguf" => vec![
                Input::one("model.gguf", read(seeds.join("llama.gguf"))?),
                Input::one("model.gguf", read(seeds.join("qwen3_yarn.gguf"))?),
                Input::one(
                    "model.gguf",
                    read(repo.join("fixtures/gguf-blocks/tiny.gguf"))?,
                ),
            ],
            "safetensors" => SEED_MODELS
                .iter()
                .map(|a| {
                    Ok(Input {
                        parts: vec![
                            ("config.json", read(seeds.join(a).join("config.json"))?),
                            (
                                "model.safetensors",
                                read(seeds.join(a).join("model.safetensors"))?,
                            ),
                        ],
                    })
                })
                .collect::<Result<_>>()?,
            "peft" => {
                let d = repo.join("fixtures/lora/tiny-llama-adapter");
                vec![Input {
                    parts: vec![
                        ("adapter_config.json", read(d.join("adapter_config.json"))?),
                        (
                            "adapter_model.safetensors",
                            read(d.join("adapter_model.safetensors"))?,
                        ),
                    ],
                }]
            }
            "pipeline" => {
                let mut v = Vec::new();
                let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("pipelines"))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "ron"))
                    .collect();
                files.sort();
                for f in files {
                    v.push(Input::one("pipeline.ron", read(f)?));
                }
                v
            }
            "ir" => [&self.base_model]
                .into_iter()
                .map(shrink_ir::text::print_model)
                .chain(["llama", "gpt2", "qwen2"].iter().filter_map(|a| {
                    shrink_import::load(&seeds.join(a))
                        .ok()
                        .map(|l| shrink_ir::text::print_model(&l.model))
                }))
                .map(|t| Input::one("model.ir", t.into_bytes()))
                .collect(),
            "tokenizer" => {
                let golden: Value = serde_json::from_slice(&read(
                    repo.join("fixtures/tiny-tokenizer-golden.json"),
                )?)?;
                let mut v: Vec<Input> = golden
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("text").and_then(Value::as_str))
                    .map(|t| Input::one("text", t.as_bytes().to_vec()))
                    .collect();
                let shakespeare = read(repo.join("data/tinyshakespeare/heldout.txt"))?;
                v.push(Input::one(
                    "text",
                    shakespeare[..2000.min(shakespeare.len())].to_vec(),
                ));
                v
            }
            other => bail!("unknown target '{other}'"),
        })
    }

    /// Mutates `input` in place, the way its format is built.
    pub fn mutate(&self, target: &str, rng: &mut StdRng, input: &mut Input) {
        let rounds = 1 << rng.random_range(0..3);
        for _ in 0..rounds {
            let k = rng.random_range(0..input.parts.len());
            let (name, bytes) = &mut input.parts[k];
            match (target, *name) {
                ("gguf", _) => {
                    let fields = gguf_fields(bytes);
                    if !fields.is_empty() && rng.random_bool(0.6) {
                        let at = fields[rng.random_range(0..fields.len())];
                        mutate::plant(rng, bytes, at);
                    } else {
                        mutate::havoc(rng, bytes);
                    }
                }
                (_, n) if n.ends_with(".json") => {
                    let keys: &[&str] = if target == "peft" {
                        &PEFT_KEYS
                    } else {
                        &CONFIG_KEYS
                    };
                    json_or_havoc(rng, bytes, keys);
                }
                (_, n) if n.ends_with(".safetensors") => {
                    if rng.random_bool(0.5) {
                        safetensors_header(rng, bytes);
                    } else {
                        mutate::havoc(rng, bytes);
                    }
                }
                ("pipeline", _) => mutate::text(rng, bytes, &PIPELINE_WORDS),
                ("ir", _) => mutate::text(rng, bytes, &IR_WORDS),
                _ => mutate::text(rng, bytes, &[]),
            }
        }
    }

    /// Runs one input. `Ok(true)`: the parser accepted it (and the result verified);
    /// `Ok(false)`: it refused it with an error; `Err`: a property was broken (a crash).
    pub fn execute(&mut self, target: &str, input: &Input) -> Result<bool> {
        match target {
            "gguf" => {
                let path = self.work.join("fuzz.gguf");
                std::fs::write(&path, &input.parts[0].1)?;
                match shrink_import::load(&path) {
                    Err(e) => import_error(&e),
                    Ok(mut loaded) => {
                        verified(&loaded.model)?;
                        if let Some(t) = loaded.tokenizer.as_mut() {
                            let _ = t.encode("Hello, world\n", false);
                        }
                        Ok(true)
                    }
                }
            }
            "safetensors" => {
                let dir = self.write_dir("hf", input)?;
                std::fs::write(dir.join("tokenizer.json"), &self.tokenizer_json)?;
                match shrink_import::load(&dir) {
                    Err(e) => import_error(&e),
                    Ok(loaded) => verified(&loaded.model).map(|_| true),
                }
            }
            "peft" => {
                let dir = self.write_dir("adapter", input)?;
                let mut model = self.base_model.clone();
                match shrink_import::peft::apply(&mut model, &dir) {
                    Err(e) => import_error(&e),
                    Ok(_) => verified(&model).map(|_| true),
                }
            }
            "pipeline" => {
                let text = String::from_utf8_lossy(&input.parts[0].1);
                let path = self.work.join("pipeline.ron");
                match shrink_pipeline::Pipeline::parse(&path, &text, &self.registry) {
                    Err(e) => {
                        one_line(&e.to_string())?;
                        Ok(false)
                    }
                    Ok(p) => {
                        let _ = p.canonical();
                        let _ = shrink_pipeline::plan(&p, &self.base_model);
                        Ok(true)
                    }
                }
            }
            "ir" => {
                let text = String::from_utf8_lossy(&input.parts[0].1);
                let Ok(g) = shrink_ir::text::parse(&text) else {
                    return Ok(false);
                };
                if shrink_ir::verify_graph(&g).is_err() {
                    return Ok(false);
                }
                // A verified graph prints to text that parses back to the same text.
                let printed = shrink_ir::text::print(&g);
                let again = shrink_ir::text::parse(&printed)
                    .map_err(|e| anyhow::anyhow!("the printed IR does not parse: {e}"))?;
                if shrink_ir::text::print(&again) != printed {
                    bail!("parse(print(g)) prints differently from g");
                }
                Ok(true)
            }
            "tokenizer" => {
                let bytes = &input.parts[0].1;
                let text = String::from_utf8_lossy(bytes);
                for (tok, spm) in [
                    (&mut self.tok_json, false),
                    (&mut self.tok_gguf, false),
                    (&mut self.tok_spm, true),
                ] {
                    let ids = match tok.encode(&text, false) {
                        Ok(ids) => ids,
                        Err(_) => continue,
                    };
                    let ends = [tok.bos_to_add(), tok.eos_to_add()];
                    let ids: Vec<u32> = ids
                        .into_iter()
                        .filter(|i| !ends.contains(&Some(*i)))
                        .collect();
                    // Byte-level BPE loses nothing; SentencePiece only the difference between
                    // "▁" and a space.
                    let back = tok
                        .decode(&ids)
                        .map_err(|e| anyhow::anyhow!("decode: {e}"))?;
                    let want = if spm {
                        text.replace('\u{2581}', " ")
                    } else {
                        text.to_string()
                    };
                    if back != want {
                        bail!("decode(encode(text)) != text ({} ids)", ids.len());
                    }
                    // Arbitrary ids: decoded or refused, never a panic.
                    let ids: Vec<u32> = bytes
                        .chunks(2)
                        .map(|c| u32::from(c[0]) | (u32::from(*c.last().unwrap_or(&0)) << 8))
                        .collect();
                    let _ = tok.decode(&ids);
                }
                Ok(true)
            }
            other => bail!("unknown target '{other}'"),
        }
    }

    /// Writes the input's parts as the files of a fresh directory under the work dir.
    fn write_dir(&self, name: &str, input: &Input) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        for (file, bytes) in &input.parts {
            std::fs::write(dir.join(file), bytes)?;
        }
        Ok(dir)
    }
}

fn verified(model: &Model) -> Result<()> {
    model
        .verify()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("accepted a model that does not verify: {e}"))
}

/// A refusal: its message must be one line (a verifier's report excepted: the CLI shows its
/// first line).
fn import_error(e: &shrink_import::ImportError) -> Result<bool> {
    if !matches!(e, shrink_import::ImportError::Verify { .. }) {
        one_line(&e.to_string())?;
    }
    Ok(false)
}

fn one_line(message: &str) -> Result<()> {
    if message.contains('\n') {
        bail!("a multi-line error: {message:?}");
    }
    Ok(())
}

/// Mutates a JSON file as JSON (when it parses) or as bytes.
fn json_or_havoc(rng: &mut StdRng, bytes: &mut Vec<u8>, keys: &[&str]) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut v) if rng.random_bool(0.8) => {
            mutate::json(rng, &mut v, keys);
            if let Ok(out) = serde_json::to_vec(&v) {
                *bytes = out;
            }
        }
        _ => mutate::havoc(rng, bytes),
    }
}

/// Mutates the JSON header of a safetensors file (dtypes, shapes, offsets, metadata) and
/// writes it back with its new length.
fn safetensors_header(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    else {
        return;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return;
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(header) else {
        return;
    };
    const KEYS: [&str; 5] = [
        "dtype",
        "shape",
        "data_offsets",
        "__metadata__",
        "shrink.quant",
    ];
    mutate::json(rng, &mut v, &KEYS);
    let Ok(new) = serde_json::to_vec(&v) else {
        return;
    };
    let rest = bytes[8 + len..].to_vec();
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend(new);
    out.extend(rest);
    *bytes = out;
}

/// Byte offsets of a GGUF file's integer fields (counts, lengths, types, dimensions, tensor
/// offsets), walked independently of shrink's reader; stops where the bytes stop making sense.
pub fn gguf_fields(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |i: usize| {
        b.get(i..i + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    if b.get(..4) != Some(b"GGUF") {
        return out;
    }
    out.extend([4, 8, 16]);
    let (Some(n_tensors), Some(n_kv)) = (u64_at(8), u64_at(16)) else {
        return out;
    };
    let mut i = 24usize;
    // A string: u64 length, bytes.
    let string = |i: &mut usize, out: &mut Vec<usize>| -> Option<()> {
        out.push(*i);
        let n = usize::try_from(u64_at(*i)?).ok()?;
        *i = i.checked_add(8)?.checked_add(n)?;
        (*i <= b.len()).then_some(())
    };
    fn scalar_size(t: u32) -> Option<usize> {
        match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    for _ in 0..n_kv.min(4096) {
        if string(&mut i, &mut out).is_none() {
            return out;
        }
        out.push(i);
        let Some(t) = u32_at(i) else { return out };
        i += 4;
        match t {
            8 => {
                if string(&mut i, &mut out).is_none() {
                    return out;
                }
            }
            9 => {
                out.push(i);
                let (Some(et), Some(count)) = (u32_at(i), u64_at(i + 4)) else {
                    return out;
                };
                out.push(i + 4);
                i += 12;
                for k in 0..count {
                    if et == 8 {
                        // Long string arrays (vocabularies): their first lengths only.
                        let before = out.len();
                        if string(&mut i, &mut out).is_none() {
                            return out;
                        }
                        if k >= 4 {
                            out.truncate(before);
                        }
                    } else {
                        let Some(s) = scalar_size(et) else { return out };
                        let Some(n) = usize::try_from(count).ok().and_then(|c| c.checked_mul(s))
                        else {
                            return out;
                        };
                        i = i.saturating_add(n);
                        break;
                    }
                }
            }
            t => match scalar_size(t) {
                Some(s) => {
                    out.push(i);
                    i += s;
                }
                None => return out,
            },
        }
    }
    for _ in 0..n_tensors.min(4096) {
        if string(&mut i, &mut out).is_none() {
            return out;
        }
        out.push(i);
        let Some(dims) = u32_at(i) else { return out };
        i += 4;
        for _ in 0..dims.min(8) {
            out.push(i);
            i += 8;
        }
        out.push(i);
        out.push(i + 4);
        i += 12;
        if i > b.len() {
            break;
        }
    }
    out.retain(|&o| o + 4 <= b.len());
    out
}
