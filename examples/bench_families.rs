//! Eval speed of each family against a llama-shaped model of the same size.
//!
//!   cargo run --release --example bench_families -- [REPEATS]
//!
//! Every family at SmolLM2-135M's shape (hidden 576, MLP 1536, 30 layers, 9 heads over 3 KV
//! heads of 64, vocabulary 49152, tied head), with seeded random weights from its config.json
//! alone: Llama, Qwen3 (q/k norms), Phi-3 (split qkv/gate_up), Gemma 2 (sandwich norms,
//! soft-capping, every other layer windowed) and Gemma 3 (q/k norms, 5 of 6 layers windowed). The
//! Gemma windows are 256 positions, shorter than the 512-position chunks, so the windowed kernel
//! runs. Per repeat, each model scores the same 3 chunks of 512 seeded random tokens; prints
//! tokens/s per repeat, the medians, and each family's median per-repeat ratio to Llama.
//! docs/BENCHMARKS.md records a run.
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use shrink::runtime::{Device, Engine, PerplexityOptions, Scoring};

fn configs() -> Vec<(&'static str, Value)> {
    let base = json!({
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
    });
    let with = |extra: Value| {
        let mut c = base.clone();
        if let (Value::Object(m), Value::Object(e)) = (&mut c, extra) {
            m.extend(e);
        }
        c
    };
    vec![
        (
            "llama",
            with(json!({"model_type": "llama", "rope_theta": 10000.0})),
        ),
        (
            "qwen3",
            with(json!({"model_type": "qwen3", "rope_theta": 1000000.0})),
        ),
        (
            "phi3",
            with(json!({"model_type": "phi3", "rope_theta": 10000.0})),
        ),
        (
            "gemma2",
            with(json!({"model_type": "gemma2", "query_pre_attn_scalar": 64,
                "sliding_window": 256, "rope_theta": 10000.0})),
        ),
        (
            "gemma3_text",
            with(
                json!({"model_type": "gemma3_text", "query_pre_attn_scalar": 64,
                "sliding_window": 256}),
            ),
        ),
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .map_or(Ok(3), |r| r.parse())
        .context("REPEATS")?;
    let dir = std::env::temp_dir().join(format!("shrink-bench-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ctx, chunks) = (512, 3);
    // One seeded token stream for every model (a linear congruential walk over the vocabulary).
    let tokens: Vec<u32> = (0..ctx * chunks + 1)
        .scan(12345u64, |s, _| {
            *s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Some(((*s >> 33) % 49152) as u32)
        })
        .collect();
    let mut engines = Vec::new();
    for (name, config) in configs() {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let model = shrink::import::hf::load_config_random(&path, 1, false)?;
        let params = model.size().params;
        engines.push((name, params, Engine::new(&model, Device::Cpu)?));
    }
    println!(
        "{:>12} {:>12} {:>8} {:>12}",
        "family", "params", "repeat", "tokens/s"
    );
    let mut speeds = vec![Vec::new(); engines.len()];
    for r in 0..repeats {
        for (i, (name, params, engine)) in engines.iter().enumerate() {
            let opts = PerplexityOptions {
                ctx,
                chunks: Some(chunks),
                scoring: Scoring::All,
            };
            let t = Instant::now();
            let p = engine.perplexity(&tokens, opts, &mut |_, _, _| {})?;
            let tps = (ctx * p.chunks) as f64 / t.elapsed().as_secs_f64();
            println!("{name:>12} {params:>12} {r:>8} {tps:>12.1}");
            speeds[i].push(tps);
        }
    }
    // Each repeat runs every family back to back, so the ratio to Llama within one repeat cancels
    // the drift of a shared VM; the table reports the median of those ratios.
    println!();
    println!(
        "| family | params | tokens/s, median of {repeats} | against llama, median of per-repeat ratios |"
    );
    println!("| --- | --- | --- | --- |");
    let llama = speeds[0].clone();
    for ((name, params, _), s) in engines.iter().zip(&speeds) {
        let mut ratios: Vec<f64> = s.iter().zip(&llama).map(|(f, l)| f / l).collect();
        let m = median(&mut s.clone());
        println!(
            "| {name} | {params} | {m:.1} | {:+.1}% |",
            (median(&mut ratios) - 1.0) * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
