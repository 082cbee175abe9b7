//! The real model, SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32 on load), against
//! transformers and llama.cpp. Needs `scripts/fetch-smollm2.sh`; CI runs these.

use shrink_runtime::{Device, Engine, PerplexityOptions, Scoring};

use crate::common::{data, fixture, golden, golden_ids, max_abs_diff, shrink, smollm2};

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn logits_match_transformers() {
    let loaded = shrink_import::load(&smollm2()).expect("load");
    let engine = Engine::new(&loaded.model, Device::Cpu).expect("engine");
    let g = fixture("smollm2/golden.safetensors");
    let ids = golden_ids(&g);
    let (_, want) = golden(&g, "logits");
    let got = engine.logits(&ids).expect("forward");
    let d = max_abs_diff(&got, &want);
    // Logits here are O(10); f32 accumulation order differs between the two.
    assert!(d < 2e-3, "max |logit - transformers| = {d:e}");
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn tokens_match_llama_cpp_and_transformers() {
    let mut loaded = shrink_import::load(&smollm2()).expect("load");
    let tok = loaded.tokenizer.as_mut().expect("tokenizer");
    // llama.cpp (as its perplexity tool runs) leaves special-token text as text; transformers
    // parses it. Everything else must agree with both.
    for (file, parse_special) in [
        ("smollm2/tokens-llamacpp.json", false),
        ("smollm2/tokens-transformers.json", true),
    ] {
        let path = fixture(file);
        let text = std::fs::read_to_string(&path).expect("golden");
        let cases: serde_json::Value = serde_json::from_str(&text).expect("json");
        // The transformers file wraps its list in an object with provenance fields.
        let cases = cases
            .as_array()
            .or_else(|| cases["entries"].as_array())
            .expect("list");
        assert!(cases.len() >= 10);
        for c in cases {
            let t = c["text"].as_str().expect("text");
            let want: Vec<u32> = c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            let got = tok.encode(t, parse_special).expect("encode");
            assert_eq!(got, want, "{file}: tokens of {t:?}");
        }
    }
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn greedy_continuation_is_paris() {
    let (code, stdout, stderr) = shrink(&[
        "generate",
        "--model",
        smollm2().to_str().expect("utf-8"),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let want = std::fs::read_to_string(fixture("smollm2/greedy.json")).expect("golden");
    let want: serde_json::Value = serde_json::from_str(&want).expect("json");
    assert_eq!(
        stdout.trim_end_matches('\n'),
        want["full_text"].as_str().expect("text")
    );
    assert!(stdout.starts_with("The capital of France is Paris"));
}

/// `shrink eval --json` on WikiText-2 test, 20 chunks of 512, second-half scoring (issue 2's
/// reference setting).
fn eval_wikitext2(model: &std::path::Path) -> serde_json::Value {
    let (code, stdout, stderr) = shrink(&[
        "eval",
        "--model",
        model.to_str().expect("utf-8"),
        "--data",
        data("wikitext-2/test.txt").to_str().expect("utf-8"),
        "--ctx",
        "512",
        "--chunks",
        "20",
        "--score",
        "second-half",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn wikitext2_perplexity_matches_llama_cpp() {
    // Reference (issue 2): llama.cpp and transformers on the same file and settings give 312,144
    // tokens and ppl 23.011 (20 chunks of 512, second-half scoring).
    let r = eval_wikitext2(&smollm2());
    assert_eq!(r["tokens_in_file"], 312_144);
    assert_eq!(r["tokens_scored"], 20 * 255);
    let ppl = r["ppl"].as_f64().expect("ppl");
    let rel = (ppl / 23.011 - 1.0).abs();
    assert!(
        rel < 0.005,
        "ppl {ppl} is {:.3}% from llama.cpp's 23.011",
        rel * 100.0
    );
    for k in ["seconds", "tokens_per_second"] {
        assert!(r[k].as_f64().expect(k) > 0.0);
    }
    assert_eq!(r["device"], "cpu");
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn inspect_reports_the_real_shape() {
    let (code, stdout, stderr) = shrink(&["inspect", smollm2().to_str().expect("utf-8"), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    // 30 layers × (4·576·576·… ) + tied 49152×576 embedding: transformers counts 134,515,008.
    assert_eq!(r["params"], 134_515_008);
    assert_eq!(r["layers"], 30);
    assert_eq!(r["architecture"], "llama");
    // Q4_1 matrices (and the Q8_0 embedding) stay quantized on import: 96,576,768 bytes.
    assert_eq!(r["bytes"], 96_576_768);
    let bpw = r["bits_per_weight"].as_f64().expect("bits_per_weight");
    assert!((bpw - 5.7437).abs() < 1e-3, "{bpw}");
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn scoring_all_counts_every_prediction() {
    let loaded = shrink_import::load(&smollm2()).expect("load");
    let engine = Engine::new(&loaded.model, Device::Cpu).expect("engine");
    let tokens: Vec<u32> = (0..130).map(|i| 1000 + (i * 7919 % 5000) as u32).collect();
    let opts = |scoring| PerplexityOptions {
        ctx: 64,
        chunks: None,
        scoring,
    };
    let all = engine
        .perplexity(&tokens, opts(Scoring::All), &mut |_, _, _| {})
        .expect("all");
    let half = engine
        .perplexity(&tokens, opts(Scoring::SecondHalf), &mut |_, _, _| {})
        .expect("half");
    assert_eq!((all.chunks, all.tokens_scored), (2, 2 * 63));
    assert_eq!((half.chunks, half.tokens_scored), (2, 2 * 31));
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn f16_pipeline_exports_load_back_with_the_f16_perplexity() {
    let dir = crate::common::scratch("smollm2-f16");
    let gguf = dir.join("smollm2-f16.gguf");
    let model = smollm2();
    let (code, stdout, stderr) = shrink(&[
        "run",
        "pipelines/smollm2-f16.ron",
        "--model",
        model.to_str().expect("utf-8"),
        "--out",
        gguf.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let ppl_f16 = report["eval"]["ppl"].as_f64().expect("ppl");
    // Within 0.1% of the float model (23.011: llama.cpp and transformers; shrink 23.0113).
    assert!((ppl_f16 / 23.011 - 1.0).abs() < 0.001, "f16 ppl {ppl_f16}");
    assert_eq!(report["passes"][0]["name"], "cast");
    assert!(report["passes"][0]["bytes"].as_u64().expect("bytes") < 270_000_000);
    // The exported file loads back to the same model: the same perplexity.
    let r = eval_wikitext2(&gguf);
    let ppl_back = r["ppl"].as_f64().expect("ppl");
    assert!(
        (ppl_back / ppl_f16 - 1.0).abs() < 1e-9,
        "{ppl_back} vs {ppl_f16}"
    );
    // The Hugging Face export of the same pipeline (its evaluation skipped) gives the GGUF's
    // logits exactly.
    let registry = shrink_passes::Registry::builtin();
    let mut p = shrink_pipeline::Pipeline::from_file(
        &crate::common::repo().join("pipelines/smollm2-f16.ron"),
        &registry,
    )
    .expect("pipeline");
    p.eval = None;
    let hf = dir.join("smollm2-f16-hf");
    let opts = shrink_pipeline::RunOptions {
        model: Some(model),
        out: Some(hf.clone()),
        device: Device::Cpu,
        resume: None,
        memory_limit: None,
    };
    shrink_pipeline::run(&p, &opts, &mut [], &mut shrink_passes::NoProgress).expect("run");
    let g = fixture("smollm2/golden.safetensors");
    let ids = golden_ids(&g);
    let logits = |m: &std::path::Path| {
        let loaded = shrink_import::load(m).expect("load");
        Engine::new(&loaded.model, Device::Cpu)
            .expect("engine")
            .logits(&ids)
            .expect("logits")
    };
    assert_eq!(logits(&hf), logits(&gguf));
}
