//! LoRA adapters as the IR holds them: an optional [`Lora`] on a linear, whose `A` and `B`
//! are ordinary f32 parameters named as PEFT names them (`<module>.lora_A.weight`,
//! `<module>.lora_B.weight`, where the base weight is `<module>.weight`).

use crate::graph::NodeId;
use crate::op::{Lora, Op};
use crate::types::{DType, ParamType};
use crate::weights::TensorData;
use crate::Model;

/// One attached adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub node: NodeId,
    /// The base weight's parameter name.
    pub weight: String,
    pub lora: Lora,
}

/// The module path of a linear: its weight's name without `.weight`.
pub fn module_of(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

/// Parameter names of the adapter on the linear whose weight is `weight`.
pub fn param_names(weight: &str) -> (String, String) {
    let m = module_of(weight);
    (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"))
}

/// Every adapter of the model, in node order.
pub fn adapters(model: &Model) -> Vec<Adapter> {
    let g = &model.graph;
    g.node_ids()
        .into_iter()
        .filter_map(|id| match &g.node(id)?.op {
            Op::Linear {
                weight,
                lora: Some(l),
                ..
            } => Some(Adapter {
                node: id,
                weight: weight.clone(),
                lora: l.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The linear whose weight is `weight` (the first, if a tied weight has several).
pub fn linear_of(model: &Model, weight: &str) -> Option<NodeId> {
    let g = &model.graph;
    g.node_ids().into_iter().find(|&id| {
        g.node(id)
            .is_some_and(|n| matches!(&n.op, Op::Linear { weight: w, .. } if w == weight))
    })
}

/// Attaches an adapter with `a[r, in]` and `b[out, r]` (row-major f32) to the linear whose
/// weight is `weight`, replacing one already there. The error names the module.
pub fn attach(
    model: &mut Model,
    weight: &str,
    a: (Vec<usize>, Vec<f32>),
    b: (Vec<usize>, Vec<f32>),
    scale: f32,
    dropout: f32,
) -> Result<(), String> {
    let module = module_of(weight).to_string();
    let node = linear_of(model, weight).ok_or_else(|| format!("{module}: no linear reads it"))?;
    let w = model
        .graph
        .param(weight)
        .ok_or_else(|| format!("{module}: weight '{weight}' is not declared"))?;
    let [out, inp] = w.shape[..] else {
        return Err(format!("{module}: weight is not a matrix"));
    };
    let r = a.0.first().copied().unwrap_or(0);
    if a.0 != [r, inp] || b.0 != [out, r] || r == 0 {
        return Err(format!(
            "{module}: adapter A {:?} and B {:?} do not fit the base weight [{out}, {inp}] \
             (want A [r, {inp}] and B [{out}, r])",
            a.0, b.0
        ));
    }
    let (na, nb) = param_names(weight);
    for (name, (shape, values)) in [(&na, a), (&nb, b)] {
        let data = TensorData::from_f32(DType::F32, shape.clone(), &values)
            .map_err(|e| format!("{module}: {name}: {e}"))?;
        model
            .graph
            .declare_param(name.clone(), ParamType::new(DType::F32, shape));
        model.weights.insert(name.clone(), data);
    }
    if let Some(n) = model.graph.node_mut(node) {
        if let Op::Linear { lora, .. } = &mut n.op {
            *lora = Some(Lora {
                a: na,
                b: nb,
                scale,
                dropout,
            });
        }
    }
    Ok(())
}

/// Detaches the adapter of `node`, dropping its parameters; returns it.
pub fn detach(model: &mut Model, node: NodeId) -> Option<Lora> {
    let lora = match &mut model.graph.node_mut(node)?.op {
        Op::Linear { lora, .. } => lora.take()?,
        _ => return None,
    };
    for p in [&lora.a, &lora.b] {
        model.graph.remove_param(p);
        model.weights.remove(p);
    }
    Some(lora)
}
