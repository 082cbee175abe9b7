//! The verifier. It checks every invariant below, collects all violations rather than stopping
//! at the first, and reports each under the text line of the node at fault.
//!
//! Invariants of a [`Graph`]:
//! 1. Every operand of every node is a value defined by a node still in the graph (no dangling
//!    operand).
//! 2. The graph is acyclic.
//! 3. Every op has its number of operands, and its declared result types equal those inferred
//!    from its operand types and parameter declarations. This covers: hidden states are
//!    `f32[b, s, N]`; token ids are `i64[b, s]`; a linear's weight is `[out, in]` with `in` equal
//!    to the operand's features and its bias `[out]`; norm weights/biases are `[N]`; split sizes
//!    partition the features; attention has `heads % kv_heads == 0`, q with `heads*head_dim`
//!    features, k and v with `kv_heads*head_dim`, rope dim even and at most `head_dim`, rope
//!    theta positive; add/mul operands agree.
//! 4. Every parameter an op names is declared, with a float dtype.
//! 5. There is at least one `input` and one `output`; input names are unique, output names too.
//!
//! Invariants of a [`Model`] (graph plus weight store), in addition:
//! 6. Every declared parameter has data in the weight store with the declared dtype and shape,
//!    and every stored tensor is declared.
//!
//! Parameters that no op reads are allowed (the `dead-code` pass removes them).

use std::collections::BTreeSet;
use std::fmt;

use crate::graph::{Graph, NodeId};
use crate::model::Model;
use crate::op::Op;
use crate::text::Printer;
use crate::types::ValueType;

/// One violated invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub node: Option<NodeId>,
    /// The node's line in the text form, when the error is about a node.
    pub line: Option<String>,
    pub message: String,
}

/// All violations found in one run of the verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}", e.message)?;
            if let Some(line) = &e.line {
                write!(f, "\n  --> {line}")?;
            }
        }
        Ok(())
    }
}

/// Proof that a graph passed the verifier when it was taken.
#[derive(Debug, Clone, Copy)]
pub struct Verified(());

struct Collector<'g> {
    printer: Printer<'g>,
    errors: Vec<VerifyError>,
}

impl Collector<'_> {
    fn at(&mut self, node: NodeId, message: String) {
        let line = Some(self.printer.node_line(node));
        self.errors.push(VerifyError {
            node: Some(node),
            line,
            message,
        });
    }

    fn global(&mut self, message: String) {
        self.errors.push(VerifyError {
            node: None,
            line: None,
            message,
        });
    }
}

/// Checks invariants 1–5.
pub fn verify_graph(graph: &Graph) -> Result<Verified, VerifyErrors> {
    let mut c = Collector {
        printer: Printer::new(graph),
        errors: Vec::new(),
    };
    check_graph(graph, &mut c);
    finish(c)
}

/// Checks invariants 1–6.
pub fn verify_model(model: &Model) -> Result<Verified, VerifyErrors> {
    let graph = &model.graph;
    let mut c = Collector {
        printer: Printer::new(graph),
        errors: Vec::new(),
    };
    check_graph(graph, &mut c);
    for (name, ty) in graph.params() {
        match model.weights.get(name) {
            None => c.global(format!(
                "parameter '{name}' ({ty}) has no data in the weight store"
            )),
            Some(t) if &t.ty != ty => c.global(format!(
                "parameter '{name}' is declared {ty} but its data is {}",
                t.ty
            )),
            Some(_) => {}
        }
    }
    for (name, t) in model.weights.iter() {
        if graph.param(name).is_none() {
            c.global(format!(
                "weight store holds '{name}' ({}) that the graph does not declare",
                t.ty
            ));
        }
    }
    finish(c)
}

fn finish(c: Collector<'_>) -> Result<Verified, VerifyErrors> {
    if c.errors.is_empty() {
        Ok(Verified(()))
    } else {
        Err(VerifyErrors(c.errors))
    }
}

fn check_graph(graph: &Graph, c: &mut Collector<'_>) {
    if let Err(cycle) = graph.order() {
        for id in cycle.iter().take(1) {
            c.at(
                *id,
                format!("the graph has a cycle through {} node(s)", cycle.len()),
            );
        }
    }
    let mut input_names = BTreeSet::new();
    let mut output_names = BTreeSet::new();
    for id in graph.node_ids() {
        let Some(node) = graph.node(id) else { continue };
        let mut operand_types: Vec<ValueType> = Vec::new();
        let mut dangling = false;
        for (i, v) in node.inputs.iter().enumerate() {
            match graph.value(*v) {
                Some(d) if d.producer.is_some_and(|p| graph.node(p).is_some()) => {
                    operand_types.push(d.ty.clone())
                }
                _ => {
                    dangling = true;
                    c.at(
                        id,
                        format!(
                            "operand {i} of {} is {}, which no node defines",
                            node.op.name(),
                            c.printer.value_name(*v)
                        ),
                    );
                }
            }
        }
        match &node.op {
            Op::Input { name } if !input_names.insert(name.clone()) => {
                c.at(id, format!("input name \"{name}\" is used twice"))
            }
            Op::Output { name } if !output_names.insert(name.clone()) => {
                c.at(id, format!("output name \"{name}\" is used twice"))
            }
            _ => {}
        }
        if dangling {
            continue;
        }
        let declared: Vec<ValueType> = node
            .outputs
            .iter()
            .filter_map(|v| graph.value_type(*v).cloned())
            .collect();
        match node.op.infer(&operand_types, &|n| graph.param(n).cloned()) {
            Err(m) => c.at(id, format!("{}: {m}", node.op.name())),
            Ok(inferred) if inferred != declared => {
                let show = |t: &[ValueType]| {
                    t.iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                c.at(
                    id,
                    format!(
                        "{}: declared result type ({}) differs from the inferred ({})",
                        node.op.name(),
                        show(&declared),
                        show(&inferred)
                    ),
                )
            }
            Ok(_) => {}
        }
    }
    if input_names.is_empty() {
        c.global("the graph has no input".into());
    }
    if output_names.is_empty() {
        c.global("the graph has no output".into());
    }
}
