//! The IR text form (insta snapshots, parser round-trip) and the verifier's negative cases.

use shrink_ir::text::{parse, print};
use shrink_ir::{verify_graph, Op};

use crate::common::fixture;

const MODELS: [&str; 9] = [
    "tiny-llama",
    "tiny-llama/tiny-llama.gguf",
    "tiny-llama3",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-phi3",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-gpt2",
];

fn ir_of(model: &str) -> String {
    let loaded = shrink_import::load(&fixture(model)).expect("load");
    print(&loaded.model.graph)
}

#[test]
fn snapshots_of_tiny_models() {
    insta::assert_snapshot!("tiny_llama", ir_of("tiny-llama"));
    insta::assert_snapshot!("tiny_qwen2", ir_of("tiny-qwen2"));
    insta::assert_snapshot!("tiny_gpt2", ir_of("tiny-gpt2"));
    insta::assert_snapshot!("tiny_llama3", ir_of("tiny-llama3"));
    insta::assert_snapshot!("tiny_qwen3", ir_of("tiny-qwen3"));
    insta::assert_snapshot!("tiny_gemma3", ir_of("tiny-gemma3"));
}

#[test]
fn gguf_and_hf_import_give_the_same_ir() {
    // One convention for both sources: names, layout and ops agree; only metadata differs.
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.starts_with("meta "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(ir_of("tiny-llama")),
        strip(ir_of("tiny-llama/tiny-llama.gguf"))
    );
}

#[test]
fn text_round_trips_for_every_fixture() {
    for m in MODELS {
        let text = ir_of(m);
        let graph = parse(&text).unwrap_or_else(|e| panic!("{m}: {e}"));
        verify_graph(&graph).unwrap_or_else(|e| panic!("{m}: parsed graph fails: {e}"));
        assert_eq!(print(&graph), text, "{m}: print(parse(text)) != text");
    }
}

#[test]
fn parse_errors_give_line_and_column() {
    let base = ir_of("tiny-llama");
    let cases = [
        // (find, replace, expected message part, expected line offset)
        ("= rms_norm(", "= rms_nrm(", "unknown op 'rms_nrm'"),
        (
            " eps=1e-5 ",
            " eps=abc ",
            "attribute 'eps' has bad number 'abc'",
        ),
        ("linear(%2)", "linear(%999)", "use of undefined value %999"),
        (
            "= embedding(%0) weight=",
            "= embedding(%0) bogus=1 weight=",
            "unknown attribute 'bogus'",
        ),
    ];
    for (find, replace, want) in cases {
        let line_no = base
            .lines()
            .position(|l| l.contains(find))
            .expect("pattern in IR")
            + 1;
        let text = base.replacen(find, replace, 1);
        let err = parse(&text).expect_err(want);
        assert!(err.message.contains(want), "{err} lacks {want:?}");
        assert_eq!(err.line, line_no, "{err}");
        assert!(err.col > 1, "{err}");
    }
}

#[test]
fn verifier_reports_shape_mismatch_under_the_line() {
    let text = ir_of("tiny-llama").replace(
        "param model.layers.1.mlp.up_proj.weight: f32[160, 64]",
        "param model.layers.1.mlp.up_proj.weight: f32[160, 48]",
    );
    let graph = parse(&text).expect("parse");
    let errs = verify_graph(&graph).expect_err("shape mismatch");
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert!(
        e.message
            .contains("weight 'model.layers.1.mlp.up_proj.weight' has shape f32[160, 48] ([out, in]) but the operand has 64 features"),
        "{}",
        e.message
    );
    let line = e.line.as_deref().expect("line");
    assert_eq!(
        line,
        "%25: f32[b, s, 160] = linear(%23) weight=model.layers.1.mlp.up_proj.weight"
    );
    assert!(errs.to_string().contains("\n  --> %"), "{errs}");
}

#[test]
fn verifier_collects_every_error() {
    // Two independent faults: a bad head layout and a wrong declared result type.
    let text = ir_of("tiny-llama")
        .replacen("heads=4 kv_heads=2", "heads=4 kv_heads=3", 1)
        .replacen("%15: f32[b, s, 64] = add(", "%15: f32[b, s, 32] = add(", 1);
    let graph = parse(&text).expect("parse");
    let errs = verify_graph(&graph).expect_err("faults");
    let msgs: Vec<&str> = errs.0.iter().map(|e| e.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("heads=4 is not a multiple of kv_heads=3")),
        "{errs}"
    );
    assert!(
        msgs.iter().any(|m| m.contains(
            "declared result type (f32[b, s, 32]) differs from the inferred (f32[b, s, 64])"
        )),
        "{errs}"
    );
}

#[test]
fn verifier_reports_dangling_input() {
    let loaded = shrink_import::load(&fixture("tiny-gpt2")).expect("load");
    let mut graph = loaded.model.graph;
    // Remove the first split: the attention that uses its results now has dangling operands.
    let split = graph
        .node_ids()
        .into_iter()
        .find(|id| matches!(graph.node(*id).map(|n| &n.op), Some(Op::Split { .. })))
        .expect("split");
    graph.remove_node(split);
    let errs = verify_graph(&graph).expect_err("dangling");
    assert_eq!(errs.0.len(), 3, "{errs}");
    for (i, e) in errs.0.iter().enumerate() {
        assert!(
            e.message
                .starts_with(&format!("operand {i} of attention is %undef")),
            "{}",
            e.message
        );
        assert!(e
            .line
            .as_deref()
            .is_some_and(|l| l.contains("= attention(%undef")));
    }
}

#[test]
fn verifier_reports_missing_weight_data() {
    let mut loaded = shrink_import::load(&fixture("tiny-llama")).expect("load");
    loaded.model.weights.remove("model.norm.weight");
    let errs = loaded.model.verify().expect_err("missing data");
    assert_eq!(
        errs.to_string(),
        "error: parameter 'model.norm.weight' (f32[64]) has no data in the weight store"
    );
}

#[test]
fn rope_scaling_attributes_are_parsed_and_checked() {
    let base = ir_of("tiny-llama3");
    let e = parse(&base.replacen("rope_scaling=llama3", "rope_scaling=longrope", 1))
        .expect_err("unknown scaling")
        .to_string();
    assert!(e.contains("unknown rope_scaling 'longrope'"), "{e}");
    // YaRN needs its own attributes.
    let e = parse(&base.replacen("rope_scaling=llama3", "rope_scaling=yarn", 1))
        .expect_err("yarn without its attributes")
        .to_string();
    assert!(e.contains("needs attribute 'rope_beta_fast'"), "{e}");
    let e = parse(&base.replacen(" rope_factor=8.0", "", 1))
        .expect_err("a missing factor")
        .to_string();
    assert!(e.contains("needs attribute 'rope_factor'"), "{e}");
    for (from, to, says) in [
        (
            "rope_factor=8.0",
            "rope_factor=-8.0",
            "rope factor -8 must be positive",
        ),
        (
            "rope_high_freq_factor=4.0",
            "rope_high_freq_factor=0.5",
            "must exceed low_freq_factor",
        ),
        (
            "rope_original_context=64",
            "rope_original_context=0",
            "original_context",
        ),
    ] {
        let e = parse(&base.replacen(from, to, 1))
            .map_err(|e| e.to_string())
            .and_then(|g| verify_graph(&g).map_err(|e| e.to_string()))
            .expect_err(to);
        assert!(e.contains(says), "{to}: {e}");
    }
}

#[test]
fn norm_groups_are_parsed_and_checked() {
    let base = ir_of("tiny-qwen3");
    // A group that does not divide the q projection's 96 features, and a weight of the wrong
    // length for its group.
    for (from, to, says) in [
        (
            " group=24",
            " group=7",
            "norm group 7 does not divide the operand's 96 features",
        ),
        (" group=24", " group=0", "norm group 0 does not divide"),
        (" group=24", " group=48", "expected [48]"),
    ] {
        let e = parse(&base.replacen(from, to, 1))
            .map_err(|e| e.to_string())
            .and_then(|g| verify_graph(&g).map_err(|e| e.to_string()))
            .expect_err(to);
        assert!(e.contains(says), "{to}: {e}");
    }
    let e = parse(&base.replacen(" group=24", " group=x", 1))
        .expect_err("not a number")
        .to_string();
    assert!(e.contains("group"), "{e}");
}
