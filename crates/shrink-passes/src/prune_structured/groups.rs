//! Dependency groups of structured pruning, found from the graph alone (in the manner of
//! Torch-Pruning's DepGraph), never from per-architecture tables:
//!
//! - a **channel group** is a width between linears that only elementwise ops touch (an MLP's
//!   intermediate channels): channel `j` is row `j` of every linear producing it and column `j`
//!   of every linear reading it, and removing those slices together leaves a model that computes
//!   the same function minus that channel;
//! - a **head group** is one attention op with the linears that make its q/k/v and read its
//!   output; its unit is a KV group (one key/value head and the query heads sharing it), so
//!   grouped-query attention stays consistent;
//! - a **residual block** is `add(x, f(x))` where `f` reads nothing but `x`; a **layer** is an
//!   attention block with the blocks after it up to the next attention block. Removing a layer
//!   makes each block's output its input.
//!
//! Widths that reach a norm, an embedding, an attention op or an output (the hidden size) are
//! not channel groups.

use std::collections::{BTreeMap, BTreeSet};

use shrink_ir::{AttentionSpec, Graph, Model, NodeId, Op, ValueId};

/// A linear's parameters, sliced together.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearParams {
    pub node: NodeId,
    pub weight: String,
    pub bias: Option<String>,
}

/// Channels between linears: row `j` of every producer, column `j` of every consumer.
#[derive(Clone, Debug)]
pub struct ChannelGroup {
    pub width: usize,
    pub producers: Vec<LinearParams>,
    pub consumers: Vec<LinearParams>,
    /// The value the consumers read (where activations are measured).
    pub site: ValueId,
}

/// One attention op and the linears around it; unit: a KV group.
#[derive(Clone, Debug)]
pub struct HeadGroup {
    pub attention: NodeId,
    pub spec: AttentionSpec,
    pub q: LinearParams,
    pub k: LinearParams,
    pub v: LinearParams,
    /// Linears reading the attention output (columns sliced).
    pub consumers: Vec<LinearParams>,
    /// The attention output (where head activations are measured).
    pub site: ValueId,
}

impl HeadGroup {
    pub fn groups(&self) -> usize {
        self.spec.kv_heads
    }

    /// Query heads per KV group.
    pub fn group_size(&self) -> usize {
        self.spec.heads / self.spec.kv_heads.max(1)
    }
}

/// `output = add(input, f(input))`.
#[derive(Clone, Debug)]
pub struct Block {
    pub add: NodeId,
    pub input: ValueId,
    pub output: ValueId,
    /// The nodes of `f`.
    pub nodes: BTreeSet<NodeId>,
    pub has_attention: bool,
}

/// Consecutive residual blocks starting at an attention block.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blocks: Vec<Block>,
    /// The name prefix every parameter of the layer shares, up to its index
    /// (`model.layers.3.`), when there is one.
    pub prefix: Option<String>,
}

impl Layer {
    pub fn input(&self) -> ValueId {
        self.blocks[0].input
    }

    pub fn output(&self) -> ValueId {
        self.blocks[self.blocks.len() - 1].output
    }
}

/// Everything structured pruning can remove, in graph order.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    pub channels: Vec<ChannelGroup>,
    pub heads: Vec<HeadGroup>,
    pub layers: Vec<Layer>,
    /// Linears or attention ops whose widths are not prunable, with the reason.
    pub blocked: BTreeMap<String, String>,
}

fn linear_params(g: &Graph, node: NodeId) -> Option<LinearParams> {
    match &g.node(node)?.op {
        Op::Linear {
            weight,
            bias,
            lora: None,
        } => Some(LinearParams {
            node,
            weight: weight.clone(),
            bias: bias.clone(),
        }),
        _ => None,
    }
}

/// How many nodes read parameter `name` (a tied weight is read twice).
fn readers(g: &Graph, name: &str) -> usize {
    g.node_ids()
        .iter()
        .filter(|id| g.node(**id).is_some_and(|n| n.op.params().contains(&name)))
        .count()
}

/// Finds every group of `g`.
pub fn analyse(g: &Graph) -> Result<Groups, String> {
    let order = g.order().map_err(|_| "the graph has a cycle".to_string())?;
    let mut out = Groups::default();
    let mut seen: BTreeSet<NodeId> = BTreeSet::new();
    for &id in &order {
        let Some(n) = g.node(id) else { continue };
        match &n.op {
            Op::Linear { weight, .. } if !seen.contains(&id) && !g.feeds_only_outputs(id) => {
                match channel_group(g, id) {
                    Ok(c) => {
                        seen.extend(c.producers.iter().map(|p| p.node));
                        out.channels.push(c);
                    }
                    Err(why) => {
                        out.blocked.insert(weight.clone(), why);
                    }
                }
            }
            Op::Attention(spec) => match head_group(g, id, *spec) {
                Ok(h) => out.heads.push(h),
                Err(why) => {
                    out.blocked.insert(format!("attention {id}"), why);
                }
            },
            _ => {}
        }
    }
    out.layers = layers(g, &order);
    Ok(out)
}

fn channel_group(g: &Graph, start: NodeId) -> Result<ChannelGroup, String> {
    let first = g
        .node(start)
        .and_then(|n| n.outputs.first().copied())
        .ok_or("linear without a result")?;
    let width = g
        .value_type(first)
        .and_then(|t| t.features())
        .ok_or("result without features")?;
    let mut values = BTreeSet::new();
    let mut queue = vec![first];
    let mut producers = BTreeSet::new();
    let mut consumers = BTreeSet::new();
    while let Some(v) = queue.pop() {
        if !values.insert(v) {
            continue;
        }
        if g.value_type(v).and_then(|t| t.features()) != Some(width) {
            return Err("an elementwise op changes the width".into());
        }
        let p = g.producer(v).ok_or("a dangling value")?;
        let pn = g.node(p).ok_or("a removed node")?;
        match &pn.op {
            Op::Linear { .. } => {
                producers.insert(p);
            }
            Op::Activation(_) | Op::Add | Op::Mul => queue.extend(pn.inputs.iter().copied()),
            other => return Err(format!("the width reaches {} (not prunable)", other.name())),
        }
        for u in g.users(v) {
            let un = g.node(u).ok_or("a removed node")?;
            match &un.op {
                Op::Linear { .. } => {
                    consumers.insert(u);
                }
                Op::Activation(_) | Op::Add | Op::Mul => {
                    queue.extend(un.inputs.iter().copied());
                    queue.extend(un.outputs.iter().copied());
                }
                other => return Err(format!("the width reaches {} (not prunable)", other.name())),
            }
        }
    }
    if consumers.is_empty() {
        return Err("no linear reads the width".into());
    }
    let params = |ids: &BTreeSet<NodeId>| -> Result<Vec<LinearParams>, String> {
        ids.iter()
            .map(|id| {
                let p = linear_params(g, *id).ok_or("not a linear")?;
                if readers(g, &p.weight) > 1 {
                    return Err(format!("'{}' is shared by several ops", p.weight));
                }
                Ok(p)
            })
            .collect()
    };
    let producers = params(&producers)?;
    let consumers_p = params(&consumers)?;
    let site = g
        .node(consumers_p[0].node)
        .and_then(|n| n.inputs.first().copied())
        .ok_or("consumer without operand")?;
    if consumers_p
        .iter()
        .any(|c| g.node(c.node).and_then(|n| n.inputs.first()) != Some(&site))
    {
        return Err("the width is read by linears at different values".into());
    }
    Ok(ChannelGroup {
        width,
        producers,
        consumers: consumers_p,
        site,
    })
}

fn head_group(g: &Graph, id: NodeId, spec: AttentionSpec) -> Result<HeadGroup, String> {
    let n = g.node(id).ok_or("a removed node")?;
    let mut qkv = Vec::new();
    for (k, v) in n.inputs.iter().enumerate() {
        let (mut value, mut reader) = (*v, id);
        let mut p = g.producer(value).ok_or("a dangling operand")?;
        // A per-head norm (Qwen3's q/k norm, one group per head) keeps each head's features
        // together and its weight is shared by all heads: heads are pruned through it.
        if let Some(Op::Norm {
            group: Some(gs), ..
        }) = g.node(p).map(|n| &n.op)
        {
            if *gs == spec.head_dim {
                if g.users(value) != vec![id] {
                    return Err(format!(
                        "the per-head norm of operand {k} is read elsewhere too"
                    ));
                }
                reader = p;
                value = *g
                    .node(p)
                    .and_then(|n| n.inputs.first())
                    .ok_or("a norm without an operand")?;
                p = g.producer(value).ok_or("a dangling operand")?;
            }
        }
        let lp = linear_params(g, p).ok_or_else(|| {
            format!(
                "operand {k} is made by {}, not a linear",
                g.node(p).map_or("?", |n| n.op.name())
            )
        })?;
        if g.users(value) != vec![reader] || readers(g, &lp.weight) > 1 {
            return Err(format!("'{}' is read elsewhere too", lp.weight));
        }
        qkv.push(lp);
    }
    let site = *n.outputs.first().ok_or("attention without a result")?;
    let mut consumers = Vec::new();
    for u in g.users(site) {
        let lp = linear_params(g, u).ok_or("the attention output is read by a non-linear op")?;
        if readers(g, &lp.weight) > 1 {
            return Err(format!("'{}' is shared by several ops", lp.weight));
        }
        consumers.push(lp);
    }
    if consumers.is_empty() {
        return Err("no linear reads the attention output".into());
    }
    let v = qkv.pop().ok_or("attention without v")?;
    let k = qkv.pop().ok_or("attention without k")?;
    let q = qkv.pop().ok_or("attention without q")?;
    Ok(HeadGroup {
        attention: id,
        spec,
        q,
        k,
        v,
        consumers,
        site,
    })
}

/// The nodes of `f` when `out` is `f(input)` and `f` reads nothing else; `None` otherwise.
fn branch(g: &Graph, out: ValueId, input: ValueId, add: NodeId) -> Option<BTreeSet<NodeId>> {
    let mut nodes = BTreeSet::new();
    let mut stack = vec![g.producer(out)?];
    while let Some(id) = stack.pop() {
        if !nodes.insert(id) {
            continue;
        }
        let n = g.node(id)?;
        if n.inputs.is_empty() {
            return None;
        }
        for v in &n.inputs {
            if *v != input {
                stack.push(g.producer(*v)?);
            }
        }
    }
    // Nothing outside the branch may read its values.
    for id in &nodes {
        for v in &g.node(*id)?.outputs {
            if g.users(*v).iter().any(|u| *u != add && !nodes.contains(u)) {
                return None;
            }
        }
    }
    Some(nodes)
}

fn layers(g: &Graph, order: &[NodeId]) -> Vec<Layer> {
    let mut blocks = Vec::new();
    for &id in order {
        let Some(n) = g.node(id) else { continue };
        if !matches!(n.op, Op::Add) || n.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let found = branch(g, b, a, id)
            .map(|nodes| (a, nodes))
            .or_else(|| branch(g, a, b, id).map(|nodes| (b, nodes)));
        if let (Some((input, nodes)), Some(&output)) = (found, n.outputs.first()) {
            let has_attention = nodes
                .iter()
                .any(|x| matches!(g.node(*x).map(|n| &n.op), Some(Op::Attention(_))));
            blocks.push(Block {
                add: id,
                input,
                output,
                nodes,
                has_attention,
            });
        }
    }
    let mut layers: Vec<Layer> = Vec::new();
    for b in blocks {
        match layers.last_mut() {
            Some(l) if !b.has_attention && l.output() == b.input => l.blocks.push(b),
            _ => layers.push(Layer {
                blocks: vec![b],
                prefix: None,
            }),
        }
    }
    for l in &mut layers {
        l.prefix = layer_prefix(g, l);
    }
    layers
}

/// The prefix up to the first all-digit segment (`model.layers.3.`), if every parameter of
/// the layer has the same one.
fn layer_prefix(g: &Graph, layer: &Layer) -> Option<String> {
    let mut prefix: Option<String> = None;
    for b in &layer.blocks {
        for id in &b.nodes {
            for p in g.node(*id)?.op.params() {
                let mut acc = String::new();
                let mut found = false;
                for seg in p.split('.') {
                    acc.push_str(seg);
                    acc.push('.');
                    if !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_digit()) {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return None;
                }
                match &prefix {
                    None => prefix = Some(acc),
                    Some(q) if *q == acc => {}
                    Some(_) => return None,
                }
            }
        }
    }
    prefix
}

// ---- rewriting ----

fn matrix(model: &Model, name: &str) -> Result<(Vec<f32>, usize, usize), String> {
    let t = model
        .weights
        .get(name)
        .ok_or_else(|| format!("'{name}' has no data"))?;
    match t.ty.shape[..] {
        [r, c] => Ok((t.to_f32(), r, c)),
        [r] => Ok((t.to_f32(), r, 1)),
        _ => Err(format!("'{name}' is not a matrix or vector ({})", t.ty)),
    }
}

/// The type of parameter `name` once `rows` rows (and `cols` columns) are kept: what
/// [`keep_rows`] / [`keep_cols`] store, for planning without the data.
pub fn plan_keep(model: &mut Model, name: &str, rows: Option<usize>, cols: Option<usize>) {
    if let Some(p) = model.graph.param_mut(name) {
        let mut shape = p.shape.clone();
        if let Some(r) = rows {
            shape[0] = r;
        }
        if let (Some(c), true) = (cols, shape.len() == 2) {
            shape[1] = c;
        }
        let dtype = if p.quant.is_some() {
            shrink_ir::DType::F32
        } else {
            p.dtype
        };
        *p = shrink_ir::ParamType::new(dtype, shape);
    }
}

/// Keeps rows `keep` (sorted) of a matrix or entries of a vector.
pub fn keep_rows(model: &mut Model, name: &str, keep: &[usize]) -> Result<(), String> {
    let (v, rows, cols) = matrix(model, name)?;
    let vector = model.graph.param(name).is_some_and(|p| p.shape.len() == 1);
    let mut out = Vec::with_capacity(keep.len() * cols);
    for &r in keep {
        if r >= rows {
            return Err(format!("'{name}': row {r} out of {rows}"));
        }
        out.extend_from_slice(&v[r * cols..(r + 1) * cols]);
    }
    let shape = if vector {
        vec![keep.len()]
    } else {
        vec![keep.len(), cols]
    };
    crate::tensors::store_f32(model, name, shape, &out)
}

/// Keeps columns `keep` (sorted) of a matrix.
pub fn keep_cols(model: &mut Model, name: &str, keep: &[usize]) -> Result<(), String> {
    let (v, rows, cols) = matrix(model, name)?;
    if let Some(c) = keep.iter().find(|c| **c >= cols) {
        return Err(format!("'{name}': column {c} out of {cols}"));
    }
    let mut out = Vec::with_capacity(rows * keep.len());
    for r in 0..rows {
        out.extend(keep.iter().map(|&c| v[r * cols + c]));
    }
    crate::tensors::store_f32(model, name, vec![rows, keep.len()], &out)
}

impl ChannelGroup {
    /// Keeps channels `keep` (sorted, unique); the caller re-infers value types.
    pub fn keep(&self, model: &mut Model, keep: &[usize]) -> Result<(), String> {
        for p in &self.producers {
            keep_rows(model, &p.weight, keep)?;
            if let Some(b) = &p.bias {
                keep_rows(model, b, keep)?;
            }
        }
        for c in &self.consumers {
            keep_cols(model, &c.weight, keep)?;
        }
        Ok(())
    }
}

impl HeadGroup {
    /// Rows of q (and columns of the consumers) of KV groups `groups`.
    pub fn q_rows(&self, groups: &[usize]) -> Vec<usize> {
        let (hd, gs) = (self.spec.head_dim, self.group_size());
        groups
            .iter()
            .flat_map(|&j| (j * gs * hd)..((j + 1) * gs * hd))
            .collect()
    }

    /// Rows of k and v of KV groups `groups`.
    pub fn kv_rows(&self, groups: &[usize]) -> Vec<usize> {
        let hd = self.spec.head_dim;
        groups
            .iter()
            .flat_map(|&j| (j * hd)..((j + 1) * hd))
            .collect()
    }

    /// Keeps KV groups `keep` (sorted, unique, not empty) with their query heads, and sets
    /// the attention op's head counts; the caller re-infers value types.
    pub fn keep(&self, model: &mut Model, keep: &[usize]) -> Result<(), String> {
        if keep.is_empty() {
            return Err("an attention op must keep at least one KV group".into());
        }
        let q_rows = self.q_rows(keep);
        let kv_rows = self.kv_rows(keep);
        for (lin, rows) in [(&self.q, &q_rows), (&self.k, &kv_rows), (&self.v, &kv_rows)] {
            keep_rows(model, &lin.weight, rows)?;
            if let Some(b) = &lin.bias {
                keep_rows(model, b, rows)?;
            }
        }
        for c in &self.consumers {
            keep_cols(model, &c.weight, &q_rows)?;
        }
        let gs = self.group_size();
        match model.graph.node_mut(self.attention).map(|n| &mut n.op) {
            Some(Op::Attention(spec)) => {
                spec.kv_heads = keep.len();
                spec.heads = keep.len() * gs;
                Ok(())
            }
            _ => Err(format!(
                "node {} is no longer an attention op",
                self.attention
            )),
        }
    }
}

/// Removes `remove` (indices into `layers`): each block's output becomes its input, the
/// blocks' nodes and the parameters only they read go, and the remaining layers with a name
/// prefix are renumbered so indices stay contiguous (`model.layers.0..`).
pub fn remove_layers(model: &mut Model, layers: &[Layer], remove: &[usize]) -> Result<(), String> {
    // Later layers first: a removed layer's input may be the output of one removed before it.
    let mut descending = remove.to_vec();
    descending.sort_unstable_by(|a, b| b.cmp(a));
    descending.dedup();
    let g = &mut model.graph;
    let mut dropped_params = BTreeSet::new();
    for &i in &descending {
        let l = layers
            .get(i)
            .ok_or_else(|| format!("layer {i} does not exist"))?;
        for b in l.blocks.iter().rev() {
            g.replace_uses(b.output, b.input);
            for id in b.nodes.iter().chain(std::iter::once(&b.add)) {
                if let Some(n) = g.remove_node(*id) {
                    dropped_params.extend(n.op.params().into_iter().map(str::to_owned));
                }
            }
        }
    }
    let used = g.used_params();
    for p in dropped_params.difference(&used) {
        g.remove_param(p);
        model.weights.remove(p);
    }
    // Renumber the remaining layers' parameters.
    let mut renames: BTreeMap<String, String> = BTreeMap::new();
    let kept = (0..layers.len()).filter(|i| !remove.contains(i));
    for (new, old) in kept.enumerate() {
        let Some(prefix) = &layers[old].prefix else {
            continue;
        };
        let stem = prefix
            .trim_end_matches('.')
            .rsplit_once('.')
            .map_or("", |(s, _)| s);
        let to = if stem.is_empty() {
            format!("{new}.")
        } else {
            format!("{stem}.{new}.")
        };
        if to != *prefix {
            renames.insert(prefix.clone(), to);
        }
    }
    if !renames.is_empty() {
        rename_prefixes(model, &renames)?;
    }
    Ok(())
}

fn rename_prefixes(model: &mut Model, renames: &BTreeMap<String, String>) -> Result<(), String> {
    let rename = |name: &str| -> Option<String> {
        renames
            .iter()
            .find_map(|(from, to)| name.strip_prefix(from.as_str()).map(|r| format!("{to}{r}")))
    };
    let g = &mut model.graph;
    for id in g.node_ids() {
        if let Some(n) = g.node_mut(id) {
            for p in n.op.params_mut() {
                if let Some(new) = rename(p) {
                    *p = new;
                }
            }
        }
    }
    let olds: Vec<String> = g
        .params()
        .keys()
        .filter(|k| rename(k).is_some())
        .cloned()
        .collect();
    // Take every renamed tensor out first: new names may equal old names of other layers.
    let mut moved = Vec::new();
    for old in olds {
        let ty = g
            .remove_param(&old)
            .ok_or_else(|| format!("'{old}' vanished"))?;
        let data = model.weights.remove(&old);
        moved.push((rename(&old).unwrap_or(old), ty, data));
    }
    for (new, ty, data) in moved {
        g.declare_param(new.clone(), ty);
        if let Some(d) = data {
            model.weights.insert(new, d);
        }
    }
    Ok(())
}
