//! `dead-code`: removes nodes that no output depends on, then parameters that no node reads.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use shrink_ir::{Model, NodeId, Op};

use crate::{canonical_ron, parse_options, Pass, PassContext, PassError, PassInfo, PassReport};

pub const INFO: PassInfo = PassInfo {
    name: "dead-code",
    summary: "Drop nodes no output depends on and parameters no node reads.",
    build: |raw| Ok(Box::new(DeadCode(parse_options(raw)?))),
};

/// `dead-code` takes no options (`()`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadCodeOptions {}

pub struct DeadCode(pub DeadCodeOptions);

impl Pass for DeadCode {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        sweep(model);
        Ok(())
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let (dead, unused) = sweep(model);
        let mut report = PassReport {
            changed: dead + unused > 0,
            ..Default::default()
        };
        report.stats.insert("nodes_removed".into(), dead.into());
        report.stats.insert("params_removed".into(), unused.into());
        Ok(report)
    }
}

/// Removes dead nodes and unread parameters; returns how many of each.
fn sweep(model: &mut Model) -> (usize, usize) {
    let g = &mut model.graph;
    // Live: outputs, inputs (the graph's interface), and everything an output reaches back to.
    let mut live: BTreeSet<NodeId> = BTreeSet::new();
    let mut stack: Vec<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|id| {
            matches!(
                g.node(*id).map(|n| &n.op),
                Some(Op::Output { .. } | Op::Input { .. })
            )
        })
        .collect();
    while let Some(id) = stack.pop() {
        if !live.insert(id) {
            continue;
        }
        if let Some(n) = g.node(id) {
            stack.extend(n.inputs.iter().filter_map(|v| g.producer(*v)));
        }
    }
    let dead: Vec<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|id| !live.contains(id))
        .collect();
    for id in dead.iter().rev() {
        g.remove_node(*id);
    }
    let used = g.used_params();
    let unused: Vec<String> = g
        .params()
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    for name in &unused {
        g.remove_param(name);
        model.weights.remove(name);
    }
    (dead.len(), unused.len())
}
