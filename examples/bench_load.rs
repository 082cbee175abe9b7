//! What the finiteness checks of import cost, against the load they are part of.
//!
//!   cargo run --release --example bench_load -- make-qwen DIR   # a 1.5B bf16 model, random
//!   cargo run --release --example bench_load -- MODEL [REPEATS]
//!
//! Per repeat: the import with the checks (`shrink::import::load`) and without them
//! (`load_with`, `check_finite: false`), in alternating order; the engine built for evaluation
//! (`Engine::new`, what `shrink eval` waits for before it scores); and the checks alone run
//! again over every tensor of the loaded store. Prints each, the medians, and how much longer
//! import + engine take with the checks. docs/BENCHMARKS.md records a run.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use shrink::import::LoadOptions;
use shrink::runtime::{Device, Engine};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("make-qwen") => make_qwen(Path::new(args.get(1).context("make-qwen DIR")?)),
        Some(model) => {
            let repeats = args
                .get(1)
                .map_or(Ok(3), |r| r.parse())
                .context("REPEATS")?;
            bench(Path::new(model), repeats)
        }
        None => bail!("usage: bench_load make-qwen DIR | bench_load MODEL [REPEATS]"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(model: &Path, repeats: usize) -> Result<()> {
    let unchecked = LoadOptions {
        check_finite: false,
        ..Default::default()
    };
    let (mut with, mut without, mut engine, mut check) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>12}",
        "repeat", "import s", "unchecked s", "engine s", "checks s"
    );
    for r in 0..repeats {
        // Alternate which load goes first, so neither always finds the caches the other left.
        let time = |opts: &LoadOptions| -> Result<(f64, shrink::import::Loaded)> {
            let t = Instant::now();
            let loaded = shrink::import::load_with(model, opts)?;
            Ok((t.elapsed().as_secs_f64(), loaded))
        };
        let ((a, loaded), (b, _)) = if r % 2 == 0 {
            let x = time(&LoadOptions::default())?;
            (x, time(&unchecked)?)
        } else {
            let y = time(&unchecked)?;
            (time(&LoadOptions::default())?, y)
        };
        let t = Instant::now();
        drop(Engine::new(&loaded.model, Device::Cpu)?);
        let e = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut bad = 0;
        for (_, data) in loaded.model.weights.iter() {
            bad += usize::from(data.first_non_finite().is_some());
        }
        let c = t.elapsed().as_secs_f64();
        if bad > 0 {
            bail!("{bad} tensors hold non-finite values, yet the import accepted them");
        }
        println!("{r:>6} {a:>12.4} {b:>12.4} {e:>10.4} {c:>12.4}");
        with.push(a);
        without.push(b);
        engine.push(e);
        check.push(c);
    }
    let (a, b, e, c) = (
        median(&mut with),
        median(&mut without),
        median(&mut engine),
        median(&mut check),
    );
    let size = shrink::import::load(model)?.model.size();
    println!(
        "{}: {} params, {:.2} GB stored; medians: import {a:.4} s, without the checks {b:.4} s, \
         engine {e:.4} s, the checks alone {c:.4} s; load (import + engine) with the checks \
         {:+.2}% against without",
        model.display(),
        size.params,
        size.bytes as f64 / 1e9,
        100.0 * (a - b) / (b + e),
    );
    Ok(())
}

/// Qwen2.5-1.5B's shapes (28 layers, hidden 1536, MLP 8960, 12 heads over 2 KV heads, vocabulary
/// 151,936, tied embeddings, q/k/v biases) in bf16 with seeded random weights, written tensor by
/// tensor; the tiny models' tokenizer beside it.
fn make_qwen(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (d, f, layers, heads, kv, hd, vocab) = (1536usize, 8960, 28, 12, 2, 128, 151_936);
    let config = serde_json::json!({
        "model_type": "qwen2", "hidden_size": d, "intermediate_size": f,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": vocab, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-llama/tokenizer.json"),
        dir.join("tokenizer.json"),
    )?;
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, d])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (n, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![heads * hd, d]),
            ("self_attn.q_proj.bias", vec![heads * hd]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.k_proj.bias", vec![kv * hd]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.bias", vec![kv * hd]),
            ("self_attn.o_proj.weight", vec![d, heads * hd]),
            ("mlp.gate_proj.weight", vec![f, d]),
            ("mlp.up_proj.weight", vec![f, d]),
            ("mlp.down_proj.weight", vec![d, f]),
        ] {
            tensors.push((format!("{p}.{n}"), shape));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![d]));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let path = dir.join("model.safetensors");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    // Values from a seeded xorshift: N(0, 0.02)-sized uniforms for matrices, 1 for norms.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut row = Vec::new();
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        row.clear();
        for _ in 0..n {
            let v = if shape.len() == 1 && name.ends_with("norm.weight") {
                1.0f32
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
            };
            row.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
        out.write_all(&row)?;
    }
    out.flush()?;
    println!(
        "wrote {} ({:.2} GB, {} tensors)",
        path.display(),
        offset as f64 / 1e9,
        tensors.len()
    );
    Ok(())
}
