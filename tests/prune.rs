//! Unstructured pruning against independent references (`fixtures/prune/make_prune_golden.py`:
//! magnitude, Wanda and SparseGPT in torch), and the `prune` pass on the tiny LLaMA.

use std::collections::BTreeMap;

use shrink::ir::Model;
use shrink::passes::linalg::host_matmul;
use shrink::passes::prune::sparsegpt::{sparsegpt, SparseGptOptions};
use shrink::passes::prune::{magnitude_mask, wanda_mask, Amount};
use shrink::pipeline::PassRecord;

use crate::common::{fixture, golden, repo, run_in_process, run_on};

fn g(name: &str) -> (Vec<usize>, Vec<f64>) {
    golden(&fixture("prune/golden.safetensors"), name)
}

fn f32s(name: &str) -> Vec<f32> {
    g(name).1.into_iter().map(|v| v as f32).collect()
}

fn mask_bits(name: &str) -> Vec<bool> {
    g(name).1.into_iter().map(|v| v != 0.0).collect()
}

fn bits(m: &shrink::ir::SparsityMask) -> Vec<bool> {
    (0..m.rows())
        .flat_map(|r| (0..m.cols()).map(move |c| (r, c)))
        .map(|(r, c)| m.get(r, c))
        .collect()
}

fn amount(case: &str) -> Amount {
    let spec = case.split('.').nth(1).expect("case");
    let head = spec.split("_b").next().expect("spec");
    match head {
        "s50" => Amount::Fraction(0.5),
        "s30" => Amount::Fraction(0.3),
        "2_4" => Amount::NM(2, 4),
        "4_8" => Amount::NM(4, 8),
        other => panic!("case {other}"),
    }
}

/// `‖X·(W − Q)ᵀ‖² / N`.
fn output_err(w: &[f32], q: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> f64 {
    let mut e = 0.0f64;
    for t in 0..n {
        for r in 0..rows {
            let dot: f64 = (0..cols)
                .map(|c| x[t * cols + c] as f64 * (w[r * cols + c] - q[r * cols + c]) as f64)
                .sum();
            e += dot * dot;
        }
    }
    e / n as f64
}

#[test]
fn magnitude_and_wanda_masks_match_the_reference() {
    let (shape, _) = g("w");
    let (rows, cols) = (shape[0], shape[1]);
    let w = f32s("w");
    let sq = f32s("sq_sum");
    for case in [
        "magnitude.s50",
        "magnitude.s30",
        "magnitude.2_4",
        "wanda.s50",
        "wanda.s30",
        "wanda.2_4",
        "wanda.4_8",
    ] {
        let a = amount(case);
        let mask = if case.starts_with("magnitude") {
            magnitude_mask(&w, rows, cols, a)
        } else {
            wanda_mask(&w, rows, cols, &sq, a)
        };
        let want = mask_bits(&format!("{case}.mask"));
        let differ = bits(&mask)
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{case}: {differ} mask entries differ");
        let mut q = w.clone();
        mask.apply(&mut q);
        assert_eq!(q, f32s(&format!("{case}.weights")), "{case}: weights");
    }
}

#[test]
fn sparsegpt_matches_the_reference() {
    let (shape, _) = g("w");
    let (rows, cols) = (shape[0], shape[1]);
    let w = f32s("w");
    let (xs, x) = g("x");
    let x: Vec<f32> = x.into_iter().map(|v| v as f32).collect();
    let n = xs[0];
    let mut xt = vec![0.0f32; x.len()];
    for t in 0..n {
        for c in 0..cols {
            xt[c * n + t] = x[t * cols + c];
        }
    }
    let gram = host_matmul(&xt, &x, cols, n, cols);
    let wmax = w.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    let mut sparsegpt_err = std::collections::BTreeMap::new();
    for (case, block) in [
        ("sparsegpt.s50_b128", 128),
        ("sparsegpt.s30_b64", 64),
        ("sparsegpt.2_4_b128", 128),
        ("sparsegpt.4_8_b64", 64),
    ] {
        let opts = SparseGptOptions {
            block_size: block,
            damp: 0.01,
        };
        let p = sparsegpt(&w, rows, cols, &gram, n, amount(case), &opts, &host_matmul)
            .expect("sparsegpt");
        let want = mask_bits(&format!("{case}.mask"));
        let differ = bits(&p.mask)
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{case}: {differ} mask entries differ");
        for (i, v) in p.weights.iter().enumerate() {
            if p.mask.bit(i) {
                assert_eq!(*v, 0.0, "{case}: pruned weight {i} is {v}");
            }
        }
        let ref_w = f32s(&format!("{case}.weights"));
        let dev = p
            .weights
            .iter()
            .zip(&ref_w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(dev <= 1e-4 * wmax, "{case}: weights differ by {dev}");
        let err = output_err(&w, &p.weights, &x, rows, cols, n);
        sparsegpt_err.insert(case, err);
        let ref_err = f32s(&format!("{case}.err"))[0] as f64;
        assert!(
            (err - ref_err).abs() <= 1e-3 * ref_err,
            "{case}: output error {err} vs {ref_err}"
        );
    }
    // What SparseGPT is for: on the same layer, shrink's SparseGPT below shrink's Wanda, below
    // shrink's magnitude (each output error computed here from shrink's own result).
    let sq = f32s("sq_sum");
    let masked_err = |mask: shrink::ir::SparsityMask| {
        let mut q = w.clone();
        mask.apply(&mut q);
        output_err(&w, &q, &x, rows, cols, n)
    };
    for (sgpt, pattern) in [("sparsegpt.s50_b128", "s50"), ("sparsegpt.2_4_b128", "2_4")] {
        let a = amount(&format!("wanda.{pattern}"));
        let wanda = masked_err(wanda_mask(&w, rows, cols, &sq, a));
        let magnitude = masked_err(magnitude_mask(&w, rows, cols, a));
        let sparsegpt = sparsegpt_err[sgpt];
        assert!(
            sparsegpt < wanda && wanda < magnitude,
            "{pattern}: sparsegpt {sparsegpt}, wanda {wanda}, magnitude {magnitude}"
        );
    }
}

/// Runs `passes` (RON pass entries) on the tiny LLaMA in-process; returns the model before
/// and after, and the records.
fn run_tiny(passes: &str) -> Result<(Model, Model, Vec<PassRecord>), String> {
    let (original, model, records) = run_in_process(&fixture("tiny-llama"), passes)?;
    Ok((original, model, records))
}

const CALIB: &str =
    "calibration: (data: \"data/tinyshakespeare/input.txt\", samples: 8, seq_len: 64)";

fn prune(options: &str) -> String {
    format!("(pass: \"prune\", options: ({options}))")
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.weights.get(name).expect(name).to_f32()
}

/// The 14 decoder linears of the tiny LLaMA (its tied embedding is also the head).
fn linears(m: &Model) -> Vec<String> {
    m.graph
        .params()
        .keys()
        .filter(|k| k.contains("_proj"))
        .cloned()
        .collect()
}

/// Checks the stored masks: zeros exactly where set, other weights as `kept` says.
fn check_masks(before: &Model, after: &Model, want: f64, nm: Option<(usize, usize)>) {
    let names = linears(after);
    assert_eq!(names.len(), 14);
    for name in &names {
        let mask = after
            .weights
            .mask(name)
            .unwrap_or_else(|| panic!("{name}: no mask"));
        let v = values(after, name);
        assert!(
            (mask.sparsity() - want).abs() < 0.01,
            "{name}: {}",
            mask.sparsity()
        );
        for (i, x) in v.iter().enumerate() {
            if mask.bit(i) {
                assert_eq!(*x, 0.0, "{name}: entry {i} is masked but {x}");
            }
        }
        if let Some((n, m)) = nm {
            for r in 0..mask.rows() {
                for g in (0..mask.cols()).step_by(m) {
                    let k = (g..g + m).filter(|c| mask.get(r, *c)).count();
                    assert_eq!(k, n, "{name}: row {r} group at {g} has {k} pruned");
                }
            }
        }
        assert_eq!(
            after.graph.param(name).expect("declared").dtype,
            before.graph.param(name).expect("declared").dtype
        );
    }
}

fn stat<'a>(r: &'a PassRecord, k: &str) -> &'a serde_json::Value {
    r.stats
        .get(k)
        .unwrap_or_else(|| panic!("no stat {k}: {:?}", r.stats))
}

#[test]
fn magnitude_prunes_exactly_and_keeps_the_rest() {
    let (before, after, rec) = run_tiny(&prune("sparsity: 0.5")).expect("prune");
    check_masks(&before, &after, 0.5, None);
    for name in linears(&after) {
        let (a, b) = (values(&before, &name), values(&after, &name));
        let mask = after.weights.mask(&name).expect("mask");
        for i in 0..a.len() {
            if !mask.bit(i) {
                assert_eq!(a[i], b[i], "{name}: a kept weight changed");
            }
        }
        // Exactly ⌊numel/2⌋ pruned, and every kept |w| ≥ every pruned |w|.
        assert_eq!(mask.count(), a.len() / 2, "{name}");
        let max_pruned = (0..a.len())
            .filter(|i| mask.bit(*i))
            .map(|i| a[i].abs())
            .fold(0.0, f32::max);
        let min_kept = (0..a.len())
            .filter(|i| !mask.bit(*i))
            .map(|i| a[i].abs())
            .fold(f32::MAX, f32::min);
        assert!(max_pruned <= min_kept, "{name}");
    }
    // The embedding (also the output head) and the norms are untouched.
    for name in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(values(&before, name), values(&after, name));
        assert!(after.weights.mask(name).is_none());
    }
    let r = &rec[0];
    assert_eq!(stat(r, "sparsity_overall").as_f64(), Some(0.5));
    assert_eq!(stat(r, "sparsity").as_object().expect("map").len(), 14);
    assert_eq!(stat(r, "tensors_pruned").as_u64(), Some(14));
    // The dump shows each mask's sparsity and parses back to the same graph.
    let text = shrink::ir::text::print_model(&after);
    assert_eq!(text.matches(" sparsity=0.5000").count(), 14, "{text}");
    let back = shrink::ir::text::parse(&text).expect("parses");
    assert_eq!(
        shrink::ir::text::print(&back),
        shrink::ir::text::print(&after.graph)
    );
}

#[test]
fn calibrated_criteria_reach_their_pattern() {
    for (crit, nm) in [
        ("wanda", None),
        ("wanda", Some((2, 4))),
        ("sparsegpt", None),
        ("sparsegpt", Some((2, 4))),
        ("sparsegpt", Some((4, 8))),
    ] {
        let opts = match nm {
            Some((n, m)) => format!("criterion: {crit}, nm: ({n}, {m}), {CALIB}"),
            None => format!("criterion: {crit}, sparsity: 0.5, {CALIB}"),
        };
        let (before, after, rec) = run_tiny(&prune(&opts)).expect(crit);
        check_masks(&before, &after, 0.5, nm);
        let r = &rec[0];
        assert_eq!(
            stat(r, "calibration_tokens").as_u64(),
            Some(8 * 64),
            "{crit}"
        );
        assert_eq!(
            stat(r, "sparsity_overall").as_f64(),
            Some(0.5),
            "{crit} {nm:?}"
        );
        if crit == "sparsegpt" {
            // Reconstruction: the layers' output error below that of the simpler criteria
            // at the same sparsity, on the same inputs.
            let vs_mag = stat(r, "output_error_vs_magnitude")
                .as_f64()
                .expect("ratio");
            let vs_wanda = stat(r, "output_error_vs_wanda").as_f64().expect("ratio");
            assert!(
                vs_mag < 0.8 && vs_wanda < 0.9,
                "{nm:?}: {vs_mag} {vs_wanda}"
            );
        }
    }
}

#[test]
fn sparsity_zero_changes_nothing_and_overrides_apply() {
    let (before, after, rec) = run_tiny(&prune("criterion: sparsegpt, sparsity: 0.0")).expect("0");
    assert!(!rec[0].changed);
    let tokens = vec![vec![1u32, 17, 42, 99, 5, 300, 7, 8]];
    let logits = |m: &Model| {
        shrink::runtime::Engine::new(m, shrink::runtime::Device::Cpu)
            .expect("engine")
            .logits(&tokens)
            .expect("logits")
    };
    assert_eq!(logits(&before), logits(&after));
    assert_eq!(after.weights.masks().count(), 0);

    let (before, after, rec) = run_tiny(&prune(&format!(
        "criterion: wanda, sparsity: 0.6, overrides: [(pattern: \"model.layers.1.*\", sparsity: 0.0), \
         (pattern: \"*.down_proj.weight\", sparsity: 0.25)], {CALIB}"
    )))
    .expect("overrides");
    let map = stat(&rec[0], "sparsity").as_object().expect("map").clone();
    for name in linears(&after) {
        let s = map[&name].as_f64().expect("sparsity");
        if name.starts_with("model.layers.1.") {
            assert_eq!(values(&before, &name), values(&after, &name), "{name}");
            assert!(after.weights.mask(&name).is_none());
            assert_eq!(s, 0.0);
        } else if name.ends_with("down_proj.weight") {
            assert!((s - 0.25).abs() < 0.01, "{name}: {s}");
        } else {
            assert!((s - 0.6).abs() < 0.01, "{name}: {s}");
        }
    }
}

#[test]
fn global_allocation_meets_the_target_under_caps() {
    for crit in ["magnitude", "wanda"] {
        let (_, after, rec) = run_tiny(&prune(&format!(
            "criterion: {crit}, allocation: global, sparsity: 0.5, max_layer_sparsity: 0.7, {CALIB}"
        )))
        .expect(crit);
        let r = &rec[0];
        let total = stat(r, "params_targeted").as_u64().expect("total");
        let pruned = stat(r, "params_pruned").as_u64().expect("pruned");
        assert_eq!(
            pruned,
            total / 2,
            "{crit}: exactly half of all targeted weights"
        );
        let per: BTreeMap<String, f64> = stat(r, "sparsity")
            .as_object()
            .expect("map")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().expect("f64")))
            .collect();
        assert!(
            per.values().all(|s| *s <= 0.7 + 1e-9),
            "{crit}: cap: {per:?}"
        );
        // Global means uneven: some tensor well away from 50%.
        assert!(
            per.values().any(|s| (s - 0.5).abs() > 0.05),
            "{crit}: {per:?}"
        );
        for name in linears(&after) {
            let m = after.weights.mask(&name).expect("mask");
            assert!((m.sparsity() - per[&name]).abs() < 1e-5);
        }
    }
}

#[test]
fn prune_refuses_bad_input_naming_the_option() {
    let quantized = format!(
        "(pass: \"quantize\", options: (scheme: \"q8_0\")), {}",
        prune("sparsity: 0.5")
    );
    let cases: Vec<(String, &str)> = vec![
        (prune("sparsity: 1.0"), "sparsity 1 is outside [0, 1)"),
        (prune("sparsity: -0.1"), "sparsity -0.1 is outside [0, 1)"),
        (
            prune("overrides: [(pattern: \"*\", sparsity: 1.5)]"),
            "overrides[0] ('*'): sparsity 1.5 is outside [0, 1)",
        ),
        (
            prune("nm: (2, 3)"),
            "nm (2, 3): 'model.layers.0.mlp.down_proj.weight' (f32[64, 160]) has rows of 160 weights, not a multiple of M = 3",
        ),
        (prune("nm: (4, 4)"), "nm (4, 4): needs 0 < N < M"),
        (prune("nm: (2, 4), sparsity: 0.3"), "sparsity 0.3 disagrees with nm (2, 4)"),
        (
            prune("include: [\"*.attn.*\"]"),
            "include pattern '*.attn.*' matches no decoder linear weight",
        ),
        (
            prune("include: [\"lm_head.weight\", \"*\"]"),
            "include pattern 'lm_head.weight' matches no decoder linear weight",
        ),
        (
            prune("exclude: [\"*.mlp.gate.weight\"]"),
            "exclude pattern '*.mlp.gate.weight' matches no decoder linear weight",
        ),
        (
            prune("include: [\"*.mlp.*\"], overrides: [(pattern: \"*q_proj*\", sparsity: 0.2)]"),
            "overrides[0]: pattern '*q_proj*' matches none of the weights selected",
        ),
        (
            prune("criterion: sparsegpt, allocation: global"),
            "allocation: global is not available with criterion sparsegpt",
        ),
        (
            prune("criterion: sparsegpt, nm: (2, 4), sparsegpt: (block_size: 126)"),
            "sparsegpt.block_size 126 is not a multiple of nm's M = 4",
        ),
        (
            prune("allocation: global, sparsity: 0.5, max_layer_sparsity: 0.4"),
            "allocation: global with max_layer_sparsity 0.4",
        ),
        (prune("criterion: wanda"), "calibration.data is not set"),
        (prune("frobnicate: 1"), "frobnicate"),
        (
            quantized,
            // Refused when the pipeline is read (the pass itself refuses too, for embedders).
            "pass 'prune': it rewrites weights in f32, but the 'quantize' pass at 1:11 quantized them",
        ),
    ];
    for (passes, want) in cases {
        let err = match run_tiny(&passes) {
            Ok(_) => panic!("{passes}: accepted"),
            Err(e) => e,
        };
        assert!(err.contains(want), "{passes}:\n{err}\nwant: {want}");
    }
}

#[test]
fn prune_refuses_non_finite_weights() {
    let mut loaded = shrink::import::load(&fixture("tiny-llama")).expect("tiny-llama");
    let name = "model.layers.1.self_attn.v_proj.weight";
    let t = loaded.model.weights.get(name).expect("v_proj");
    let mut v = t.to_f32();
    v[3 * 64 + 5] = f32::NAN;
    let data = shrink::ir::TensorData::from_f32(t.ty.dtype, t.ty.shape.clone(), &v).expect("data");
    loaded.model.weights.insert(name, data);
    let err = run_on(loaded.model, loaded.tokenizer.as_ref(), &prune(""))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&format!("'{name}' holds NaN at row 3, column 5")),
        "{err}"
    );
}

#[test]
fn prune_pipeline_dumps_masks_and_exports() {
    let dir = crate::common::scratch("prune-cli");
    let data = repo().join("data/tinyshakespeare/input.txt");
    let path = dir.join("p.ron");
    std::fs::write(
        &path,
        format!(
            "(\n    model: {model:?},\n    passes: [(pass: \"prune\", options: (criterion: sparsegpt, nm: (2, 4), \
             calibration: (data: {data:?}, samples: 8, seq_len: 64)))],\n    eval: (data: {data:?}, ctx: 64, chunks: 4),\n)\n",
            model = fixture("tiny-llama").to_string_lossy(),
            data = data.to_string_lossy(),
        ),
    )
    .expect("write");
    let out = dir.join("out.gguf");
    let dump = dir.join("dump");
    let report = crate::common::run_with_dump(&path, &out, &dump);
    let stats = &report["passes"][0]["stats"];
    assert_eq!(stats["sparsity_overall"].as_f64(), Some(0.5), "{stats}");
    let ir = std::fs::read_to_string(dump.join("01_prune.ir")).expect("dump");
    assert_eq!(ir.matches(" sparsity=0.5000").count(), 14, "{ir}");
    // The exported weights keep the zeros (the mask itself is not part of GGUF).
    let back = shrink::import::load(&out).expect("load export");
    let v = values(&back.model, "model.layers.0.mlp.up_proj.weight");
    for group in v.chunks_exact(4) {
        assert!(group.iter().filter(|x| **x == 0.0).count() >= 2);
    }
}

/// Runs a pipeline on SmolLM2 with `--json`; returns the report.
fn run_smollm2(name: &str, pipeline: &str) -> serde_json::Value {
    let dir = crate::common::scratch(name);
    let path = dir.join("p.ron");
    let data = repo().join("data/wikitext-2");
    std::fs::write(&path, pipeline.replace("DATA", &data.to_string_lossy())).expect("write");
    let (code, stdout, stderr) = crate::common::shrink(&[
        "run",
        path.to_str().expect("utf-8"),
        "--model",
        crate::common::smollm2().to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("json report")
}

#[test]
#[ignore = "real model: run scripts/fetch-smollm2.sh, then --include-ignored"]
fn smollm2_sparsegpt_beats_wanda_beats_magnitude() {
    // A short calibration (16 × 256 tokens) and 8 evaluation chunks keep this to minutes.
    let pipeline = |crit: &str| {
        format!(
            "(passes: [(pass: \"prune\", options: (criterion: {crit}, sparsity: 0.5, \
             calibration: (data: \"DATA/calib.txt\", samples: 16, seq_len: 256)))], \
             eval: (data: \"DATA/test.txt\", ctx: 512, chunks: 8, score: \"second-half\"))"
        )
    };
    let ppl = |c: &str| {
        run_smollm2(&format!("prune-smollm2-{c}"), &pipeline(c))["eval"]["ppl"]
            .as_f64()
            .expect("ppl")
    };
    let (mag, wanda, sgpt) = (ppl("magnitude"), ppl("wanda"), ppl("sparsegpt"));
    assert!(wanda < 0.8 * mag, "wanda {wanda} vs magnitude {mag}");
    assert!(sgpt < 0.8 * mag, "sparsegpt {sgpt} vs magnitude {mag}");
    assert!(sgpt <= wanda, "sparsegpt {sgpt} vs wanda {wanda}");
    eprintln!("50%: magnitude {mag:.3}, wanda {wanda:.3}, sparsegpt {sgpt:.3}");
}
