//! Reading a config back from a graph (the exporters' side): shapes, ops and metadata, and
//! the structural comparison with the graph a config builds.

use shrink_ir::{AttentionSpec, Graph, NormKind, Op, ValueId};

/// Shape of a declared parameter, or an error naming it.
pub(crate) fn param_shape<'g>(g: &'g Graph, name: &str) -> Result<&'g [usize], String> {
    g.param(name)
        .map(|p| p.shape.as_slice())
        .ok_or_else(|| format!("parameter '{name}' is missing"))
}

/// Shape of a declared rank-2 parameter.
pub(crate) fn param_2d(g: &Graph, name: &str) -> Result<(usize, usize), String> {
    match param_shape(g, name)? {
        [a, b] => Ok((*a, *b)),
        s => Err(format!(
            "parameter '{name}' has shape {s:?}, expected rank 2"
        )),
    }
}

/// The layer a parameter belongs to (`model.layers.3.…`, `transformer.h.3.…`).
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layers" || w[0] == "h")
        .and_then(|w| w[1].parse().ok())
}

/// Number of layers: the parameters under `prefix{i}.` must be numbered 0..n without gaps.
pub(crate) fn count_layers(g: &Graph, prefix: &str) -> Result<usize, String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in g.params().keys() {
        if let Some(rest) = name.strip_prefix(prefix) {
            let idx = rest.split('.').next().unwrap_or("");
            let i: usize = idx
                .parse()
                .map_err(|_| format!("parameter '{name}' has a non-numeric layer index"))?;
            seen.insert(i);
        }
    }
    let n = seen.len();
    if n == 0 {
        return Err(format!("no layers (no parameters named '{prefix}<i>.*')"));
    }
    if let Some(gap) = (0..n).find(|i| !seen.contains(i)) {
        return Err(format!(
            "layers are not numbered 0..{n}: layer {gap} is missing"
        ));
    }
    Ok(n)
}

/// The ops of the graph in its deterministic order.
pub(crate) fn ops_in_order(g: &Graph) -> Result<Vec<&Op>, String> {
    let order = g.order().map_err(|_| "the graph has a cycle".to_string())?;
    Ok(order
        .into_iter()
        .filter_map(|id| g.node(id).map(|n| &n.op))
        .collect())
}

/// Whether the head is tied to the embedding `embed`; an untied one must be `lm_head.weight`.
pub(crate) fn head_is_tied(g: &Graph, embed: &str) -> Result<bool, String> {
    let head = head_weight(g)?;
    if head != embed && head != "lm_head.weight" {
        return Err(format!(
            "the output linear reads '{head}', expected '{embed}' (tied) or 'lm_head.weight'"
        ));
    }
    Ok(head == embed)
}

/// The weight of the linear that produces the output `logits` (through Gemma 2's soft-cap).
pub(crate) fn head_weight(g: &Graph) -> Result<String, String> {
    let outs = g.outputs();
    let (_, mut v) = match outs.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(format!(
                "expected one output 'logits', found {}",
                outs.len()
            ))
        }
    };
    if let Some(n) = g.producer(v).and_then(|p| g.node(p)) {
        if let (Op::SoftCap { .. }, [x]) = (&n.op, n.inputs.as_slice()) {
            v = *x;
        }
    }
    match g.producer(v).and_then(|p| g.node(p)).map(|n| &n.op) {
        Some(Op::Linear {
            weight,
            bias: None,
            lora: None,
        }) => Ok(weight.clone()),
        Some(op) => Err(format!(
            "the output is computed by '{}', expected a linear head without bias",
            op.name()
        )),
        None => Err("the output has no producer".into()),
    }
}

/// Attention specs of the graph, one per layer in layer order (the residual stream orders them);
/// head_dim, RoPE and causality must agree with layer 0's, head counts may differ.
pub(crate) fn layer_attention_specs(
    ops: &[&Op],
    layers: usize,
) -> Result<Vec<AttentionSpec>, String> {
    let specs: Vec<AttentionSpec> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Attention(a) => Some(*a),
            _ => None,
        })
        .collect();
    if specs.len() != layers {
        return Err(format!("{} attention ops for {layers} layers", specs.len()));
    }
    let a0 = specs[0];
    for (i, a) in specs.iter().enumerate().skip(1) {
        if a.head_dim != a0.head_dim {
            return Err(format!(
                "layer {i}: attention head_dim={} differs from layer 0's head_dim={}",
                a.head_dim, a0.head_dim
            ));
        }
        if a.rope != a0.rope {
            return Err(format!(
                "layer {i}: attention rope {:?} differs from layer 0's {:?}",
                a.rope, a0.rope
            ));
        }
        if a.causal != a0.causal {
            return Err(format!(
                "layer {i}: attention causality differs from layer 0's"
            ));
        }
    }
    if !a0.causal {
        return Err("attention is not causal".into());
    }
    Ok(specs)
}

/// The attention spec every layer shares (GPT-2 has no per-layer head counts).
pub(crate) fn uniform_attention_spec(ops: &[&Op], layers: usize) -> Result<AttentionSpec, String> {
    let specs = layer_attention_specs(ops, layers)?;
    let a0 = specs[0];
    for (i, a) in specs.iter().enumerate().skip(1) {
        for (k, got, want) in [
            ("heads", a.heads, a0.heads),
            ("kv_heads", a.kv_heads, a0.kv_heads),
        ] {
            if got != want {
                return Err(format!(
                    "layer {i}: attention {k}={got} differs from layer 0's {k}={want}"
                ));
            }
        }
    }
    Ok(a0)
}

/// The single epsilon of every norm op of `kind`.
pub(crate) fn norm_eps(ops: &[&Op], kind: NormKind) -> Result<f32, String> {
    let mut eps: Option<(f32, String)> = None;
    for op in ops {
        if let Op::Norm {
            kind: k,
            eps: e,
            weight,
            ..
        } = op
        {
            if *k != kind {
                return Err(format!(
                    "norm '{weight}' is {}, expected {}",
                    op.name(),
                    if kind == NormKind::Rms {
                        "rms_norm"
                    } else {
                        "layer_norm"
                    }
                ));
            }
            match &eps {
                None => eps = Some((*e, weight.clone())),
                Some((e0, w0)) if e0.to_bits() != e.to_bits() => {
                    return Err(format!(
                        "norm '{weight}' has eps={e}, but '{w0}' has eps={e0}"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    eps.map(|(e, _)| e)
        .ok_or_else(|| "the graph has no norm op".to_string())
}

pub(crate) fn meta_token(g: &Graph, key: &str) -> Result<Option<u32>, String> {
    g.meta
        .get(key)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| format!("meta '{key}' = '{v}' is not a token id"))
        })
        .transpose()
}

pub(crate) fn meta_usize(g: &Graph, key: &str) -> Result<Option<usize>, String> {
    g.meta
        .get(key)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| format!("meta '{key}' = '{v}' is not a non-negative integer"))
        })
        .transpose()
}

/// Checks that `g` computes what `built` (made by a config's `build()`) computes: the same
/// parameters with the same shapes (dtypes and quantization schemes may differ) and the same
/// dataflow into every output, regardless of the order the nodes were added in.
pub fn same_structure(g: &Graph, built: &Graph, arch: &str) -> Result<(), String> {
    for (name, ty) in g.params() {
        match built.param(name) {
            None => {
                return Err(format!(
                    "parameter '{name}' is not part of the {arch} graph of these sizes"
                ))
            }
            Some(b) if b.shape != ty.shape => {
                let layer = layer_of(name).map_or(String::new(), |i| format!("layer {i}: "));
                return Err(format!(
                    "{layer}parameter '{name}' has shape {:?}, but the model's sizes imply {:?}",
                    ty.shape, b.shape
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = built.params().keys().find(|n| g.param(n).is_none()) {
        return Err(format!("parameter '{name}' is missing"));
    }
    let mut interner = std::collections::HashMap::new();
    let want = canonical(built, &mut interner)?;
    let known = interner.len();
    let got = canonical(g, &mut interner)?;
    if got.0 == want.0 {
        return Ok(());
    }
    // Name the first node (in the graph's order) that the built graph does not have.
    let printer = shrink_ir::text::Printer::new(g);
    let culprit = got
        .1
        .iter()
        .find(|(_, c)| *c >= known)
        .map(|(id, _)| printer.node_line(*id));
    Err(match culprit {
        Some(line) => {
            format!("the graph is not the {arch} graph of these sizes: no counterpart for `{line}`")
        }
        None => format!("the graph is not the {arch} graph of these sizes (its outputs differ)"),
    })
}

/// Canonical ids of a graph's nodes: equal ids mean equal op, attributes and (recursively)
/// operands. Returns the sorted (output name, id) list and each node's id in order.
#[allow(clippy::type_complexity)]
pub(crate) fn canonical(
    g: &Graph,
    interner: &mut std::collections::HashMap<String, usize>,
) -> Result<(Vec<(String, usize)>, Vec<(shrink_ir::NodeId, usize)>), String> {
    let order = g.order().map_err(|_| "the graph has a cycle".to_string())?;
    let mut value_ids: std::collections::HashMap<ValueId, (usize, usize)> =
        std::collections::HashMap::new();
    let mut outputs = Vec::new();
    let mut nodes = Vec::new();
    for id in order {
        let Some(n) = g.node(id) else { continue };
        let ins: Vec<(usize, usize)> = n
            .inputs
            .iter()
            .map(|v| value_ids.get(v).copied().unwrap_or((usize::MAX, 0)))
            .collect();
        let key = format!("{:?}|{ins:?}", n.op);
        let next = interner.len();
        let c = *interner.entry(key).or_insert(next);
        for (k, v) in n.outputs.iter().enumerate() {
            value_ids.insert(*v, (c, k));
        }
        if let Op::Output { name } = &n.op {
            outputs.push((name.clone(), c));
        }
        nodes.push((id, c));
    }
    outputs.sort();
    Ok((outputs, nodes))
}
