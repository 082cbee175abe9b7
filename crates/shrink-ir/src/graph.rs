//! The graph: nodes (ops) over values, on a petgraph with typed ids on top.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::op::Op;
use crate::types::{ParamType, ValueType};

/// A node (one op application). Its `Display` is only for debugging; the text form renumbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

/// A value: one result of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(u32);

impl NodeId {
    fn index(self) -> NodeIndex {
        NodeIndex::new(self.0 as usize)
    }
}

impl ValueId {
    /// Position in the value arena (stable for the graph's lifetime; not what the text prints).
    pub fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// One op with its operands and results.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// What the arena knows of a value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    pub ty: ValueType,
    /// The node that defines the value; `None` once that node was removed (a dangling value).
    pub producer: Option<NodeId>,
}

/// The graph IR of one model: metadata, parameter declarations and the dataflow graph.
///
/// Edges of the underlying petgraph go from the producer of a value to each of its users and
/// mirror `Node::inputs`; the graph keeps them in sync.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Model-level facts that are not ops (architecture name, context length, token ids…).
    pub meta: BTreeMap<String, String>,
    params: BTreeMap<String, ParamType>,
    nodes: StableDiGraph<Node, ValueId>,
    values: Vec<ValueData>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- parameters ----

    pub fn declare_param(&mut self, name: impl Into<String>, ty: ParamType) {
        self.params.insert(name.into(), ty);
    }

    pub fn param(&self, name: &str) -> Option<&ParamType> {
        self.params.get(name)
    }

    pub fn param_mut(&mut self, name: &str) -> Option<&mut ParamType> {
        self.params.get_mut(name)
    }

    pub fn remove_param(&mut self, name: &str) -> Option<ParamType> {
        self.params.remove(name)
    }

    /// Declared parameters, by name.
    pub fn params(&self) -> &BTreeMap<String, ParamType> {
        &self.params
    }

    // ---- building ----

    /// Adds a node whose result types are inferred from its operands; fails (and adds nothing)
    /// when they do not fit. Importers build graphs with this.
    pub fn add(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>, String> {
        let tys: Vec<ValueType> = inputs
            .iter()
            .map(|v| {
                self.values
                    .get(v.0 as usize)
                    .map(|d| d.ty.clone())
                    .ok_or_else(|| format!("operand {v} does not exist"))
            })
            .collect::<Result<_, _>>()?;
        let params = &self.params;
        let out = op.infer(&tys, &|n| params.get(n).cloned())?;
        Ok(self.add_typed(op, inputs, out))
    }

    /// Like [`Graph::add`] for ops with exactly one result.
    pub fn add1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, String> {
        let name = op.name();
        let out = self.add(op, inputs)?;
        match out.as_slice() {
            [v] => Ok(*v),
            _ => Err(format!("{name} has {} results, expected 1", out.len())),
        }
    }

    /// Adds a node with declared result types, unchecked (the parser does this; the verifier
    /// checks later).
    pub fn add_typed(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        outputs: Vec<ValueType>,
    ) -> Vec<ValueId> {
        let node = self.nodes.add_node(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: Vec::new(),
        });
        let id = NodeId(node.index() as u32);
        let outs: Vec<ValueId> = outputs
            .into_iter()
            .map(|ty| {
                self.values.push(ValueData {
                    ty,
                    producer: Some(id),
                });
                ValueId(self.values.len() as u32 - 1)
            })
            .collect();
        self.nodes[node].outputs = outs.clone();
        for &v in inputs {
            if let Some(p) = self.producer(v) {
                self.nodes.add_edge(p.index(), node, v);
            }
        }
        outs
    }

    /// Removes a node; its results become dangling if anything still uses them.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.nodes.remove_node(id.index())?;
        for v in &node.outputs {
            if let Some(d) = self.values.get_mut(v.0 as usize) {
                d.producer = None;
            }
        }
        Some(node)
    }

    /// Makes every user of `old` use `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for user in self.users(old) {
            if let Some(n) = self.nodes.node_weight_mut(user.index()) {
                for i in n.inputs.iter_mut().filter(|i| **i == old) {
                    *i = new;
                }
            }
            self.rebuild_in_edges(user);
        }
    }

    /// Re-infers every node's result types from its operands and the parameter declarations,
    /// in topological order: after a pass changed parameter shapes or op attributes (structured
    /// pruning), the values downstream take their new widths. Fails naming the first node whose
    /// operands no longer fit (the nodes before it already have their new types).
    pub fn retype(&mut self) -> Result<(), String> {
        let order = self
            .order()
            .map_err(|_| "the graph has a cycle".to_string())?;
        for id in order {
            let Some(node) = self.node(id) else { continue };
            let tys: Vec<ValueType> = node
                .inputs
                .iter()
                .map(|v| {
                    self.value_type(*v)
                        .cloned()
                        .ok_or_else(|| format!("node {id}: operand {v} does not exist"))
                })
                .collect::<Result<_, _>>()?;
            let params = &self.params;
            let out = node
                .op
                .infer(&tys, &|n| params.get(n).cloned())
                .map_err(|m| format!("node {id} ({}): {m}", node.op.name()))?;
            for (v, ty) in node.outputs.clone().into_iter().zip(out) {
                if let Some(d) = self.values.get_mut(v.0 as usize) {
                    d.ty = ty;
                }
            }
        }
        Ok(())
    }

    /// Sets the operands of a node (its result types are not re-inferred; verify afterwards).
    pub fn set_inputs(&mut self, id: NodeId, inputs: Vec<ValueId>) {
        if let Some(n) = self.nodes.node_weight_mut(id.index()) {
            n.inputs = inputs;
            self.rebuild_in_edges(id);
        }
    }

    fn rebuild_in_edges(&mut self, id: NodeId) {
        let old: Vec<_> = self
            .nodes
            .edges_directed(id.index(), Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.nodes.remove_edge(e);
        }
        let inputs = match self.nodes.node_weight(id.index()) {
            Some(n) => n.inputs.clone(),
            None => return,
        };
        for v in inputs {
            if let Some(p) = self.producer(v) {
                self.nodes.add_edge(p.index(), id.index(), v);
            }
        }
    }

    // ---- queries ----

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.node_weight(id.index())
    }

    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.node_weight_mut(id.index())
    }

    pub fn value(&self, v: ValueId) -> Option<&ValueData> {
        self.values.get(v.0 as usize)
    }

    pub fn value_type(&self, v: ValueId) -> Option<&ValueType> {
        self.value(v).map(|d| &d.ty)
    }

    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        self.value(v).and_then(|d| d.producer)
    }

    /// Nodes that use `v`, in id order, each once.
    pub fn users(&self, v: ValueId) -> Vec<NodeId> {
        let mut out = BTreeSet::new();
        if let Some(p) = self.producer(v) {
            for e in self.nodes.edges_directed(p.index(), Direction::Outgoing) {
                if *e.weight() == v {
                    out.insert(NodeId(e.target().index() as u32));
                }
            }
        }
        out.into_iter().collect()
    }

    /// All nodes in id (insertion) order.
    /// Whether every result of `id` is read, and only by `output` nodes (the LM head).
    pub fn feeds_only_outputs(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| {
            n.outputs.iter().all(|v| {
                let users = self.users(*v);
                // Through a soft-cap of the logits, which works on each position alone.
                !users.is_empty()
                    && users.iter().all(|u| match self.node(*u).map(|n| &n.op) {
                        Some(Op::Output { .. }) => true,
                        Some(Op::SoftCap { .. }) => self.feeds_only_outputs(*u),
                        _ => false,
                    })
            })
        })
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .nodes
            .node_indices()
            .map(|i| NodeId(i.index() as u32))
            .collect();
        ids.sort();
        ids
    }

    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }

    /// Nodes in a deterministic topological order: among ready nodes, the oldest first, so the
    /// order follows the order the graph was built in. On a cycle, the nodes on or after it are
    /// returned in the error.
    pub fn order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let mut indegree: BTreeMap<NodeId, usize> = BTreeMap::new();
        for id in self.node_ids() {
            let n = self
                .nodes
                .edges_directed(id.index(), Direction::Incoming)
                .count();
            indegree.insert(id, n);
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&id, _)| std::cmp::Reverse(id))
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(std::cmp::Reverse(id)) = ready.pop() {
            order.push(id);
            for e in self.nodes.edges_directed(id.index(), Direction::Outgoing) {
                let t = NodeId(e.target().index() as u32);
                if let Some(d) = indegree.get_mut(&t) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(std::cmp::Reverse(t));
                    }
                }
            }
        }
        if order.len() == indegree.len() {
            Ok(order)
        } else {
            let done: BTreeSet<NodeId> = order.into_iter().collect();
            Err(indegree
                .into_keys()
                .filter(|id| !done.contains(id))
                .collect())
        }
    }

    /// `input` nodes with their names and result.
    pub fn inputs(&self) -> Vec<(String, ValueId)> {
        self.node_ids()
            .into_iter()
            .filter_map(|id| match self.node(id) {
                Some(Node {
                    op: Op::Input { name },
                    outputs,
                    ..
                }) => outputs.first().map(|v| (name.clone(), *v)),
                _ => None,
            })
            .collect()
    }

    /// `output` nodes with their names and operand.
    pub fn outputs(&self) -> Vec<(String, ValueId)> {
        self.node_ids()
            .into_iter()
            .filter_map(|id| match self.node(id) {
                Some(Node {
                    op: Op::Output { name },
                    inputs,
                    ..
                }) => inputs.first().map(|v| (name.clone(), *v)),
                _ => None,
            })
            .collect()
    }

    /// Parameter names that some node reads.
    pub fn used_params(&self) -> BTreeSet<String> {
        self.node_ids()
            .into_iter()
            .filter_map(|id| self.node(id))
            .flat_map(|n| n.op.params().into_iter().map(str::to_owned))
            .collect()
    }
}
