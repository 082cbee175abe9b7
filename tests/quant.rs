//! Quantization against independent references (`fixtures/quant/make_quant_golden.py`):
//! ggml's block formats from gguf-py, NF4 and double quantization from bitsandbytes, GPTQ and
//! AWQ from torch implementations of the papers.

use shrink::ir::quant::QuantScheme;
use shrink::passes::quantize::{awq, gptq};

use crate::common::{fixture, golden};

fn g(name: &str) -> (Vec<usize>, Vec<f64>) {
    golden(&fixture("quant/golden.safetensors"), name)
}

fn f32s(name: &str) -> Vec<f32> {
    g(name).1.into_iter().map(|v| v as f32).collect()
}

fn bytes(name: &str) -> Vec<u8> {
    g(name).1.into_iter().map(|v| v as u8).collect()
}

fn scheme(s: &str) -> QuantScheme {
    s.parse().expect("scheme")
}

#[test]
fn ggml_blocks_are_bit_exact_with_gguf_py() {
    let w = f32s("w");
    for s in ["q8_0", "q4_0", "q4_1"] {
        let packed = scheme(s).quantize(&[8, 256], &w).expect("quantize");
        assert_eq!(packed, bytes(s), "{s}: bytes differ from gguf-py");
    }
}

#[test]
fn integer_schemes_match_the_reference() {
    let w = f32s("w");
    for s in ["int4_g64", "int4_g64_asym", "int8"] {
        let q = scheme(s);
        let packed = q.quantize(&[8, 256], &w).expect("quantize");
        let deq = q.dequantize(&packed, &[8, 256]);
        assert_eq!(
            deq,
            f32s(&format!("{s}.dequant")),
            "{s}: dequantized values"
        );
        // Codes unpacked from the packed rows (b = 4: low nibble first; b = 8: bytes).
        let codes = bytes(&format!("{s}.codes"));
        let ours: Vec<u8> = match q.bits() {
            4 => packed[..8 * 128]
                .iter()
                .flat_map(|b| [b & 15, b >> 4])
                .collect(),
            _ => packed[..8 * 256].to_vec(),
        };
        assert_eq!(ours, codes, "{s}: codes");
    }
}

#[test]
fn nf4_matches_bitsandbytes() {
    let w = f32s("w");
    let q = scheme("nf4_b64");
    let packed = q.quantize(&[8, 256], &w).expect("quantize");
    assert_eq!(
        &packed[..1024],
        &bytes("nf4_b64.packed")[..],
        "packed codes"
    );
    let absmax: Vec<f32> = packed[1024..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(absmax, f32s("nf4_b64.absmax"));
    assert_eq!(q.dequantize(&packed, &[8, 256]), f32s("nf4_b64.dequant"));
    assert_eq!(
        shrink::ir::quant::NF4_CODEBOOK.to_vec(),
        f32s("nf4.codebook"),
        "codebook"
    );
    // torch.linspace's vectorized kernel rounds a few mantissas differently: a few ulp at most.
    for (a, b) in shrink::ir::quant::dynamic_map()
        .iter()
        .zip(f32s("dynamic_map"))
    {
        assert!((a - b).abs() <= 4e-7 * b.abs(), "dynamic map: {a} vs {b}");
    }

    let q = scheme("nf4_b64_dq");
    let packed = q.quantize(&[8, 256], &w).expect("quantize");
    assert_eq!(
        &packed[..1024],
        &bytes("nf4_b64.packed")[..],
        "dq: 4-bit codes"
    );
    assert_eq!(&packed[1024..1056], &bytes("nf4_b64_dq.absmax_codes")[..]);
    let f = |at: usize| {
        f32::from_le_bytes([packed[at], packed[at + 1], packed[at + 2], packed[at + 3]])
    };
    assert_eq!(f(1056), f32s("nf4_b64_dq.absmax2")[0], "absmax2");
    // bitsandbytes takes torch's f32 mean of the absmax values; shrink sums in f64 (1 ulp).
    let offset = f32s("nf4_b64_dq.offset")[0];
    assert!(
        (f(1060) - offset).abs() <= 1e-8,
        "offset {} vs {offset}",
        f(1060)
    );
    let want = f32s("nf4_b64_dq.dequant");
    let got = q.dequantize(&packed, &[8, 256]);
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-8, "dq dequant differs by {err}");
}

fn output_err(w: &[f32], q: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> f64 {
    let d: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
    // ||X·Δᵀ||² / N
    let mut e = 0.0f64;
    for t in 0..n {
        for r in 0..rows {
            let dot: f64 = (0..cols)
                .map(|c| x[t * cols + c] as f64 * d[r * cols + c] as f64)
                .sum();
            e += dot * dot;
        }
    }
    e / n as f64
}

/// The GPTQ reference's weights `[rows, cols]`, its `n` calibration inputs and their Gram matrix.
struct GptqFixture {
    w: Vec<f32>,
    x: Vec<f32>,
    n: usize,
    rows: usize,
    cols: usize,
    gram: Vec<f32>,
}

fn gptq_fixture() -> GptqFixture {
    let w = f32s("gptq.w");
    let (xs, x) = g("gptq.x");
    let x: Vec<f32> = x.into_iter().map(|v| v as f32).collect();
    let (n, cols) = (xs[0], xs[1]);
    let rows = w.len() / cols;
    let gram = gptq::host_matmul(&transpose(&x, n, cols), &x, cols, n, cols);
    GptqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
    }
}

#[test]
fn gptq_matches_the_reference() {
    let GptqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
    } = gptq_fixture();
    for (case, s, act_order, block) in [
        ("gptq.int4_g32", "int4_g32", false, 32),
        ("gptq.int4_g32_asym_actorder", "int4_g32_asym", true, 32),
        ("gptq.q4_0", "q4_0", false, 32),
        ("gptq.q4_0_actorder", "q4_0", true, 128),
    ] {
        let opts = gptq::GptqOptions {
            act_order,
            block_size: block,
            damp: 0.01,
            mse_scales: false,
            refit_scales: false,
            rounds: 1,
            asymmetric: false,
        };
        let q = gptq::gptq(
            &w,
            rows,
            cols,
            &gram,
            n,
            scheme(s),
            &opts,
            &gptq::host_matmul,
        )
        .expect("gptq");
        let want = f32s(&format!("{case}.dequant"));
        let differ = q
            .dequant
            .iter()
            .zip(&want)
            .filter(|(a, b)| (*a - *b).abs() > 1e-6)
            .count();
        let err = output_err(&w, &q.dequant, &x, rows, cols, n);
        let ref_err = f32s(&format!("{case}.gptq_err"))[0] as f64;
        let rtn_err = f32s(&format!("{case}.rtn_err"))[0] as f64;
        // The reference is stable to 1e-5 input noise, so the codes must agree exactly.
        assert_eq!(
            differ,
            0,
            "{case}: {differ} of {} values differ",
            want.len()
        );
        assert!(
            (err - ref_err).abs() <= 1e-3 * ref_err,
            "{case}: error {err} vs {ref_err}"
        );
        assert!(err < 0.5 * rtn_err, "{case}: GPTQ {err} vs RTN {rtn_err}");
    }
}

/// The scale refit after GPTQ lowers the layer's output error on its calibration inputs (it
/// minimises exactly that for the codes GPTQ chose), in both column orders; further passes that
/// choose the codes again under the refit scales lower it more.
#[test]
fn gptq_scale_refit_lowers_the_output_error() {
    let GptqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
    } = gptq_fixture();
    for act_order in [false, true] {
        let err = |refit_scales: bool, rounds: usize| {
            let opts = gptq::GptqOptions {
                act_order,
                refit_scales,
                rounds,
                ..Default::default()
            };
            let q = gptq::gptq(
                &w,
                rows,
                cols,
                &gram,
                n,
                scheme("q4_0"),
                &opts,
                &gptq::host_matmul,
            )
            .expect("gptq");
            output_err(&w, &q.dequant, &x, rows, cols, n)
        };
        let (plain, refit, rounds) = (err(false, 1), err(true, 1), err(true, 3));
        assert!(
            refit < 0.99 * plain,
            "act order {act_order}: refit {refit} vs {plain}"
        );
        assert!(
            rounds < 0.98 * refit,
            "act order {act_order}: 3 rounds {rounds} vs one {refit}"
        );
    }
}

/// Asymmetric calibration: the target `W + W·K` is the least-squares fit of the float layer's
/// output on the float inputs `X̃` from the compressed inputs `X` (its residual is orthogonal to
/// `X`), `K` is exactly zero when the inputs agree, and GPTQ of that target ends closer to the
/// float output than GPTQ of `W` does.
#[test]
fn gptq_asymmetric_target_fits_the_float_output() {
    let GptqFixture {
        w,
        x: x_float,
        n,
        rows,
        cols,
        gram: _,
    } = gptq_fixture();
    // The compressed model's inputs: the float ones, perturbed (deterministically) per feature
    // and token, as upstream quantization error would.
    let x: Vec<f32> = x_float
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            v * (1.0 + 0.1 * ((i * 7919 % 13) as f32 / 6.0 - 1.0)) + 0.02 * (i as f32 * 0.37).sin()
        })
        .collect();
    let xt = transpose(&x, n, cols);
    let gram = gptq::host_matmul(&xt, &x, cols, n, cols);
    let cross = gptq::host_matmul(&transpose(&x_float, n, cols), &x, cols, n, cols);
    let same = gptq::asymmetric_correction(&gram, &gram, n, cols, 0.01, &gptq::host_matmul)
        .expect("correction");
    assert!(
        same.iter().all(|&v| v == 0.0),
        "equal inputs: K must be zero"
    );
    let k = gptq::asymmetric_correction(&gram, &cross, n, cols, 1e-6, &gptq::host_matmul)
        .expect("correction");
    let wk = gptq::host_matmul(&w, &k, rows, cols, cols);
    let target: Vec<f32> = w.iter().zip(&wk).map(|(a, b)| a + b).collect();
    // Normal equations: Xᵀ(X̃Wᵀ − XW'ᵀ) = 0.
    let y_float = gptq::host_matmul(&x_float, &transpose(&w, rows, cols), n, cols, rows);
    let y_fit = gptq::host_matmul(&x, &transpose(&target, rows, cols), n, cols, rows);
    let resid: Vec<f32> = y_float.iter().zip(&y_fit).map(|(a, b)| a - b).collect();
    let ortho = gptq::host_matmul(&xt, &resid, cols, n, rows);
    let scale = gptq::host_matmul(&xt, &y_float, cols, n, rows);
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    assert!(
        norm(&ortho) < 1e-3 * norm(&scale),
        "residual not orthogonal: {} vs {}",
        norm(&ortho),
        norm(&scale)
    );
    // ‖X̃Wᵀ − XŴᵀ‖² / N.
    let asym_err = |q: &[f32]| {
        let y = gptq::host_matmul(&x, &transpose(q, rows, cols), n, cols, rows);
        y_float
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / n as f64
    };
    let quantize = |target: &[f32]| {
        gptq::gptq(
            target,
            rows,
            cols,
            &gram,
            n,
            scheme("q4_0"),
            &gptq::GptqOptions::default(),
            &gptq::host_matmul,
        )
        .expect("gptq")
        .dequant
    };
    let (plain, asym) = (asym_err(&quantize(&w)), asym_err(&quantize(&target)));
    assert!(asym < 0.9 * plain, "asymmetric {asym} vs plain {plain}");
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The AWQ reference layer (`awq.w`, `awq.x`) and shrink's scale search on it, int4_g32_asym,
/// 20 ratios.
struct AwqFixture {
    w: Vec<f32>,
    x: Vec<f32>,
    n: usize,
    rows: usize,
    cols: usize,
    gram: Vec<f32>,
    found: awq::ScaleSearch,
}

fn awq_fixture() -> AwqFixture {
    let w = f32s("awq.w");
    let (xs, x) = g("awq.x");
    let x: Vec<f32> = x.into_iter().map(|v| v as f32).collect();
    let (n, cols) = (xs[0], xs[1]);
    let rows = w.len() / cols;
    let gram = gptq::host_matmul(&transpose(&x, n, cols), &x, cols, n, cols);
    let abs_mean: Vec<f32> = (0..cols)
        .map(|c| (0..n).map(|t| x[t * cols + c].abs() as f64).sum::<f64>() as f32 / n as f32)
        .collect();
    let found = awq::search_scales(
        &[(&w, rows)],
        cols,
        &gram,
        n,
        &abs_mean,
        scheme("int4_g32_asym"),
        20,
        &gptq::host_matmul,
    );
    AwqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
        found,
    }
}

#[test]
fn awq_matches_the_reference() {
    let AwqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
        found,
    } = awq_fixture();
    let s = scheme("int4_g32_asym");
    let want_ratio = f32s("awq.best_ratio")[0];
    assert!(
        (found.ratio - want_ratio).abs() < 1e-6,
        "ratio {} vs {want_ratio}",
        found.ratio
    );
    // The reference's loss is a mean over outputs too: same curve up to the factor `rows`.
    let ref_losses = f32s("awq.losses");
    for (a, b) in found.losses.iter().zip(&ref_losses) {
        let a = a / rows as f64;
        assert!((a - *b as f64).abs() <= 1e-3 * *b as f64, "loss {a} vs {b}");
    }
    let scales = f32s("awq.scales");
    let rel = found
        .scales
        .iter()
        .zip(&scales)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0.0f32, f32::max);
    assert!(rel < 1e-5, "scales differ by {rel}");
    let gram_s: Vec<f32> = gram
        .iter()
        .enumerate()
        .map(|(i, v)| v / (found.scales[i / cols] * found.scales[i % cols]))
        .collect();
    let scaled: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, v)| v * found.scales[i % cols])
        .collect();
    let clipped = awq::clip(s, &scaled, rows, cols, &gram_s, 20, 0.5);
    let q = awq::fake_quantize(s, &clipped, rows, cols);
    let eff: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(i, v)| v / found.scales[i % cols])
        .collect();
    let want = f32s("awq.dequant");
    let rel = eff
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(rel < 1e-5, "AWQ weights differ by {rel}");
    let err = output_err(&w, &eff, &x, rows, cols, n);
    let rtn = output_err(
        &w,
        &awq::fake_quantize(s, &w, rows, cols),
        &x,
        rows,
        cols,
        n,
    );
    assert!(err < 0.5 * rtn, "AWQ {err} vs RTN {rtn}");
}

/// Runs a quantize pipeline on the tiny LLaMA (hidden 64, intermediate 160) and returns the
/// JSON report, the IR dumped after the pass and the output path.
fn run_tiny(
    name: &str,
    options: &str,
    out_name: &str,
) -> (serde_json::Value, String, std::path::PathBuf) {
    let dir = crate::common::scratch(name);
    let data = crate::common::repo().join("data/tinyshakespeare/input.txt");
    let text = format!(
        "(\n    model: {model:?},\n    passes: [(pass: \"quantize\", options: ({options})), (pass: \"dead-code\")],\n    eval: (data: {data:?}, ctx: 64, chunks: 4),\n)\n",
        model = fixture("tiny-llama").to_string_lossy(),
        options = options.replace("DATA", &format!("{:?}", data.to_string_lossy())),
        data = data.to_string_lossy(),
    );
    let path = dir.join("p.ron");
    std::fs::write(&path, text).expect("write pipeline");
    let out = dir.join(out_name);
    let dump = dir.join("dump");
    let report = crate::common::run_with_dump(&path, &out, &dump);
    let ir = std::fs::read_to_string(dump.join("01_quantize.ir")).unwrap_or_default();
    (report, ir, out)
}

#[test]
fn quantize_pass_on_the_tiny_model() {
    let calib = "calibration: (data: DATA, samples: 16, seq_len: 64)";
    let mut ppl = std::collections::BTreeMap::new();
    for method in ["rtn", "gptq", "awq"] {
        let (report, ir, out) = run_tiny(
            &format!("quant-tiny-{method}"),
            &format!("method: {method}, scheme: \"q4_0\", embedding: \"q8_0\", {calib}"),
            "out.gguf",
        );
        // Every decoder linear and the tied embedding are quantized; the norms are not.
        assert_eq!(ir.matches(": q4_0[").count(), 14, "{method}:\n{ir}");
        assert_eq!(ir.matches(": q8_0[").count(), 1, "{method}");
        assert!(ir.contains("param model.norm.weight: f32[64]"), "{method}");
        let stats = &report["passes"][0]["stats"];
        assert_eq!(stats["params_quantized"]["q4_0"], 14, "{method}: {stats}");
        if method != "rtn" {
            assert_eq!(stats["calibration_tokens"], 16 * 64, "{method}");
            let rel = stats["output_error_vs_rtn"].as_f64().expect("error ratio");
            assert!(
                rel < 0.9,
                "{method}: output error {rel} of round-to-nearest's"
            );
        }
        // The GGUF export loads back with the same quantized bytes.
        let back = shrink::import::load(&out).expect("load export");
        let t = back
            .model
            .weights
            .get("model.layers.1.mlp.down_proj.weight")
            .expect("down_proj");
        assert_eq!(t.ty.quant, Some(scheme("q4_0")), "{method}");
        ppl.insert(method, report["eval"]["ppl"].as_f64().expect("ppl"));
    }
    let float = {
        let (report, _, _) = run_tiny(
            "quant-tiny-none",
            "include: [], embedding: None",
            "out.gguf",
        );
        report["eval"]["ppl"].as_f64().expect("ppl")
    };
    // The tiny model's random weights make its perplexity a poor judge (4-bit rounding can even
    // lower it); the output error above is the test. Here: GPTQ stays near the float model.
    assert!(
        (ppl["gptq"] / float - 1.0).abs() < 0.05,
        "{ppl:?} float {float}"
    );
}

/// GPTQ with asymmetric calibration on the tiny LLaMA: the first site sees the same input in
/// the float and the quantized model, so layer 0's q/k/v come out exactly as plain GPTQ's;
/// every later site sees the earlier layers' error and is fitted to the float output instead.
#[test]
fn gptq_asymmetric_calibration_on_the_tiny_model() {
    let calib = "calibration: (data: DATA, samples: 16, seq_len: 64)";
    let weights = |asymmetric: bool| {
        let name = format!("quant-tiny-gptq-asym-{asymmetric}");
        let (report, _, out) = run_tiny(
            &name,
            &format!("method: gptq, scheme: \"q4_0\", gptq: (asymmetric: {asymmetric}), {calib}"),
            "out",
        );
        assert!(report["eval"]["ppl"].as_f64().is_some_and(f64::is_finite));
        shrink::import::load(&out).expect("output loads").model
    };
    let (plain, asym) = (weights(false), weights(true));
    let bytes = |m: &shrink::ir::Model, n: &str| m.weights.get(n).expect(n).bytes().to_vec();
    for proj in ["q_proj", "k_proj", "v_proj"] {
        let n = format!("model.layers.0.self_attn.{proj}.weight");
        assert_eq!(bytes(&plain, &n), bytes(&asym, &n), "{n}");
    }
    for n in [
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ] {
        assert_ne!(bytes(&plain, n), bytes(&asym, n), "{n}");
    }
}

#[test]
fn awq_folds_scales_into_norms_and_up_proj() {
    let (_, ir, _) = run_tiny(
        "quant-tiny-awq-fold",
        "method: awq, scheme: \"int4_g32_asym\", calibration: (data: DATA, samples: 8, seq_len: 64)",
        "out",
    );
    assert_eq!(ir.matches(": int4_g32_asym[").count(), 14, "{ir}");
    let loaded =
        shrink::import::load(&crate::common::scratch_path("quant-tiny-awq-fold").join("out"))
            .expect("shrink format loads back");
    let orig = shrink::import::load(&fixture("tiny-llama")).expect("fixture");
    // The attention norm absorbed 1/s: its weight changed; the final norm did not.
    let w = |m: &shrink::ir::Model, n: &str| m.weights.get(n).expect(n).to_f32();
    let n0 = "model.layers.0.input_layernorm.weight";
    assert_ne!(w(&loaded.model, n0), w(&orig.model, n0));
    let nf = "model.norm.weight";
    assert_eq!(w(&loaded.model, nf), w(&orig.model, nf));
}

#[test]
fn quantize_refuses_bad_input_before_writing() {
    let data = crate::common::repo().join("data/tinyshakespeare/input.txt");
    let cases: Vec<(&str, String, &str)> = vec![
        // hidden 64 is not a multiple of 128
        (
            "q-bad-group",
            "scheme: \"int4_g128\"".into(),
            "model.layers.0.mlp.down_proj.weight",
        ),
        (
            "q-unknown-scheme",
            "scheme: \"q5_k\"".into(),
            "unknown quantization scheme 'q5_k'",
        ),
        (
            "q-no-calibration",
            "method: gptq".into(),
            "calibration.data is not set",
        ),
        (
            "q-short-calibration",
            "method: gptq, calibration: (data: \"short.txt\", samples: 1, seq_len: 64)".into(),
            "fewer than one sequence",
        ),
        // Sequences of 10^8 tokens: their attention scores alone would take petabytes.
        (
            "q-huge-calibration",
            format!(
                "method: gptq, calibration: (data: {:?}, seq_len: 100000000)",
                data.to_string_lossy()
            ),
            "over the memory limit",
        ),
        (
            "q-zero-damp",
            "method: gptq, gptq: (damp: 0.0)".into(),
            "gptq.damp 0 is not in (0, 1]",
        ),
        (
            "q-zero-rounds",
            "method: gptq, gptq: (rounds: 0)".into(),
            "gptq.rounds must be at least 1",
        ),
        (
            "q-empty-calibration",
            "method: awq, calibration: (data: \"empty.txt\")".into(),
            "has 0 tokens",
        ),
    ];
    for (name, options, want) in cases {
        let dir = crate::common::scratch(name);
        std::fs::write(dir.join("empty.txt"), "").expect("write");
        std::fs::write(dir.join("short.txt"), "Too few words.").expect("write");
        let path = dir.join("p.ron");
        std::fs::write(
            &path,
            format!(
                "(\n    model: {:?},\n    passes: [(pass: \"quantize\", options: ({options}))],\n)\n",
                fixture("tiny-llama").to_string_lossy()
            ),
        )
        .expect("write");
        let out = dir.join("out.gguf");
        let (code, _, stderr) = crate::common::shrink(&[
            "run",
            path.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        assert_ne!(code, 0, "{name}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(!out.exists(), "{name}: nothing may be written");
    }
}

/// Runs a pipeline file on SmolLM2 with `--json`; returns the report.
fn run_smollm2(
    name: &str,
    pipeline: &str,
    out_name: &str,
) -> (serde_json::Value, std::path::PathBuf) {
    let dir = crate::common::scratch(name);
    let path = dir.join("p.ron");
    let data = crate::common::repo().join("data/wikitext-2");
    std::fs::write(&path, pipeline.replace("DATA", &data.to_string_lossy())).expect("write");
    let out = dir.join(out_name);
    let (code, stdout, stderr) = crate::common::shrink(&[
        "run",
        path.to_str().expect("utf-8"),
        "--model",
        crate::common::smollm2().to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    (serde_json::from_str(&stdout).expect("json report"), out)
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn smollm2_q8_0_rtn_export_is_llama_cpps_q8_0_byte_for_byte() {
    use sha2::Digest;
    let (_, out) = run_smollm2(
        "quant-smollm2-q8_0",
        "(passes: [(pass: \"quantize\", options: (method: rtn, scheme: \"q8_0\", embedding: \"q8_0\"))])",
        "q8_0.gguf",
    );
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2/llamacpp-q8_0-tensors.json")).expect("hashes"),
    )
    .expect("json");
    let file = shrink::formats::gguf::GgufFile::open(&out).expect("export opens");
    assert_eq!(file.tensors.len(), want.as_object().expect("object").len());
    for t in &file.tensors {
        let hash = format!("{:x}", sha2::Sha256::digest(file.tensor_data(t)));
        assert_eq!(
            want[&t.name]["sha256"].as_str(),
            Some(hash.as_str()),
            "{} ({:?}) differs from llama-quantize's Q8_0",
            t.name,
            t.ggml_type
        );
    }
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn smollm2_gptq_beats_round_to_nearest() {
    // A short calibration (16 × 256 tokens) and 8 evaluation chunks keep this to about 2 minutes.
    let pipeline = |method: &str| {
        format!(
            "(passes: [(pass: \"quantize\", options: (method: {method}, scheme: \"int4_g64\", \
             calibration: (data: \"DATA/calib.txt\", samples: 16, seq_len: 256)))], \
             eval: (data: \"DATA/test.txt\", ctx: 512, chunks: 8, score: \"second-half\"))"
        )
    };
    let (rtn, _) = run_smollm2("quant-smollm2-rtn", &pipeline("rtn"), "rtn");
    let (gptq, out) = run_smollm2("quant-smollm2-gptq", &pipeline("gptq"), "gptq");
    let ppl = |r: &serde_json::Value| r["eval"]["ppl"].as_f64().expect("ppl");
    let rel = gptq["passes"][0]["stats"]["output_error_vs_rtn"]
        .as_f64()
        .expect("error ratio");
    assert!(rel < 0.5, "GPTQ output error {rel} of round-to-nearest's");
    assert!(
        ppl(&gptq) < ppl(&rtn),
        "gptq {} vs rtn {}",
        ppl(&gptq),
        ppl(&rtn)
    );
    // shrink's format loads back to the same perplexity.
    let (code, stdout, stderr) = crate::common::shrink(&[
        "eval",
        "--model",
        out.to_str().expect("utf-8"),
        "--data",
        crate::common::repo()
            .join("data/wikitext-2/test.txt")
            .to_str()
            .expect("utf-8"),
        "--ctx",
        "512",
        "--chunks",
        "8",
        "--score",
        "second-half",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let back: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(back["ppl"].as_f64(), Some(ppl(&gptq)));
}

fn published(name: &str) -> Vec<f32> {
    golden(&fixture("quant/published.safetensors"), name)
        .1
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// GPTQ against two published programs (`fixtures/quant/make_published_golden.py`): GPTQModel
/// 7.7.0 and llm-compressor 0.14.0.1 on the same layer, asymmetric int4 in groups of 32 with
/// act order and static groups, the configuration whose conventions shrink shares (their
/// scales are f32 where shrink rounds to f16, which moves a few codes).
#[test]
fn gptq_agrees_with_gptqmodel_and_llm_compressor() {
    let GptqFixture {
        w,
        x,
        n,
        rows,
        cols,
        gram,
    } = gptq_fixture();
    let opts = gptq::GptqOptions {
        act_order: true,
        block_size: 128,
        damp: 0.01,
        mse_scales: false,
        refit_scales: false,
        rounds: 1,
        asymmetric: false,
    };
    let s = scheme("int4_g32_asym");
    let q = gptq::gptq(&w, rows, cols, &gram, n, s, &opts, &gptq::host_matmul).expect("gptq");
    let err = output_err(&w, &q.dequant, &x, rows, cols, n);
    let wmax = w.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    for (program, max_differ) in [("gptqmodel", 0.02), ("llmcompressor", 0.07)] {
        let case = format!("{program}.gptq.int4_g32_asym_actorder");
        let theirs = published(&format!("{case}.dequant"));
        // Values further apart than rounding of the scale: a different code.
        let differ = q
            .dequant
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| (*a - *b).abs() > 0.01 * wmax)
            .count();
        let frac = differ as f64 / theirs.len() as f64;
        assert!(frac <= max_differ, "{program}: {differ} values differ");
        let their_err = published(&format!("{case}.err"))[0] as f64;
        assert!(
            (err - their_err).abs() <= 0.01 * their_err,
            "{program}: output error {err} vs {their_err}"
        );
    }
}

/// AWQ's scale search against AutoAWQ 0.2.9's own (`_search_best_scale`, duo scaling off as in
/// llm-awq): the same best ratio and the same per-channel scales.
#[test]
fn awq_scale_search_agrees_with_autoawq() {
    let AwqFixture { rows, found, .. } = awq_fixture();
    let ratio = published("autoawq.awq.best_ratio")[0];
    assert!(
        (found.ratio - ratio).abs() < 1e-6,
        "ratio {} vs {ratio}",
        found.ratio
    );
    let theirs = published("autoawq.awq.scales");
    let rel = found
        .scales
        .iter()
        .zip(&theirs)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0.0f32, f32::max);
    assert!(rel < 1e-5, "scales differ by {rel}");
    // The loss curves differ only by the quantizers' conventions (AutoAWQ: f32 scale over the
    // raw min..max, half-to-even rounding).
    let losses = published("autoawq.awq.losses");
    for (i, (a, b)) in found.losses.iter().zip(&losses).enumerate() {
        let a = a / rows as f64;
        assert!(
            (a - *b as f64).abs() <= 0.01 * *b as f64,
            "ratio {i}: loss {a} vs {b}"
        );
    }
}
