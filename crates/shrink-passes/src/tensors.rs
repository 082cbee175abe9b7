//! Parameters read and written as f32, shared by the passes that rewrite weights in float
//! (quantize's AWQ scaling, both pruning passes). Errors name the parameter; each pass adds
//! its own name.

use shrink_ir::{DType, Model, TensorData};

/// A matrix parameter as f32 (dequantized if it is stored quantized), checked finite: the
/// error names the row and column of the first NaN/Inf.
pub(crate) fn finite_matrix(model: &Model, name: &str) -> Result<(Vec<f32>, usize, usize), String> {
    let t = model
        .weights
        .get(name)
        .ok_or_else(|| format!("'{name}' has no data"))?;
    let [rows, cols] = t.ty.shape[..] else {
        return Err(format!("'{name}' is not a matrix ({})", t.ty));
    };
    let v = t.to_f32();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "'{name}' holds {} at row {}, column {}",
            v[i],
            i / cols,
            i % cols
        ));
    }
    Ok((v, rows, cols))
}

/// Stores `values` of `shape` as parameter `name` in its float dtype, or as f32 when it was
/// quantized (what a float rewrite produces no longer fits the scheme's codes); the
/// declaration follows.
pub(crate) fn store_f32(
    model: &mut Model,
    name: &str,
    shape: Vec<usize>,
    values: &[f32],
) -> Result<(), String> {
    let ty = model
        .graph
        .param(name)
        .ok_or_else(|| format!("'{name}' is not declared"))?;
    let dtype = if ty.quant.is_some() {
        DType::F32
    } else {
        ty.dtype
    };
    let data = TensorData::from_f32(dtype, shape, values).map_err(|m| format!("'{name}': {m}"))?;
    if let Some(p) = model.graph.param_mut(name) {
        *p = data.ty.clone();
    }
    model.weights.insert(name.to_string(), data);
    Ok(())
}

/// Replaces the group scales of quantized parameter `name` (its codes and scheme stay).
pub(crate) fn store_scales(model: &mut Model, name: &str, scales: &[f32]) -> Result<(), String> {
    let t = model
        .weights
        .get(name)
        .ok_or_else(|| format!("'{name}' has no data"))?;
    let scheme =
        t.ty.quant
            .ok_or_else(|| format!("'{name}' is not quantized"))?;
    let shape = t.ty.shape.clone();
    let mut bytes = t.bytes().to_vec();
    scheme
        .set_scales(&mut bytes, &shape, scales)
        .map_err(|m| format!("'{name}': {m}"))?;
    let data = TensorData::quantized(scheme, shape, bytes).map_err(|m| format!("'{name}': {m}"))?;
    model.weights.insert(name.to_string(), data);
    Ok(())
}
