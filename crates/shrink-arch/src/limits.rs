//! Bounds on the sizes a model file or config may declare, checked before anything is
//! allocated from them. Each is far above every published model (docs/RELIABILITY.md lists
//! them with the largest value known in practice); a file past one is refused, naming the field.

/// Decoder layers (Llama 3.1 405B has 126).
pub const MAX_LAYERS: usize = 1 << 10;
/// Hidden size, MLP width (Llama 3.1 405B: 16,384 and 53,248).
pub const MAX_WIDTH: usize = 1 << 20;
/// Attention heads, KV heads, and the size of one head.
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;
/// Vocabulary (Gemma 3: 262,144).
pub const MAX_VOCAB: usize = 1 << 22;
/// Declared context: RoPE tables are sized by the positions a call uses, so only a GGUF's u32
/// bounds it.
pub const MAX_CONTEXT: usize = u32::MAX as usize;
/// Learned position embeddings (GPT-2: 1,024) are a weight of `positions × width`.
pub const MAX_LEARNED_POSITIONS: usize = 1 << 20;
/// Parameters of the whole model (about 1.1 trillion).
pub const MAX_PARAMS: u64 = 1 << 40;

/// `value` if it is within `1..=max`, else the message for the field.
pub fn dim(field: &str, value: usize, max: usize) -> Result<usize, String> {
    if value == 0 {
        Err(format!("{field} must be positive"))
    } else if value > max {
        Err(format!(
            "{field} is {value}, above shrink's limit of {max} (docs/RELIABILITY.md)"
        ))
    } else {
        Ok(value)
    }
}

/// A norm epsilon: finite and in (0, 1).
pub fn epsilon(field: &str, eps: f32) -> Result<f32, String> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        Ok(eps)
    } else {
        Err(format!("{field} ({eps}) must be a number in (0, 1)"))
    }
}

/// Sum of products of dimensions in u64, `None` on overflow: parameter counts of a config.
pub fn count(terms: &[&[usize]]) -> Option<u64> {
    terms.iter().try_fold(0u64, |acc, dims| {
        let n = dims
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(u64::try_from(d).ok()?))?;
        acc.checked_add(n)
    })
}

/// The parameter count of `terms` if it is within [`MAX_PARAMS`].
pub fn params(terms: &[&[usize]]) -> Result<u64, String> {
    match count(terms) {
        Some(n) if n <= MAX_PARAMS => Ok(n),
        Some(n) => Err(format!(
            "the config describes {n} parameters, above shrink's limit of {MAX_PARAMS}"
        )),
        None => Err("the config's sizes overflow a 64-bit parameter count".into()),
    }
}

/// Fails on a tensor holding a NaN or an infinity, naming the first.
pub fn finite(data: &shrink_ir::TensorData) -> Result<(), String> {
    let Some(i) = data.first_non_finite() else {
        return Ok(());
    };
    let at = match data.ty.shape.as_slice() {
        [_, cols] if *cols > 0 => format!(" (row {}, column {})", i / cols, i % cols),
        _ => String::new(),
    };
    Err(format!(
        "holds a non-finite value (NaN or infinity) at element {i}{at}"
    ))
}

/// The parameters a graph declares, within [`MAX_PARAMS`].
pub fn graph_params(graph: &shrink_ir::Graph) -> Result<u64, String> {
    let shapes: Vec<&[usize]> = graph
        .params()
        .values()
        .map(|t| t.shape.as_slice())
        .collect();
    params(&shapes)
}

/// Bytes of memory available to this process (Linux `MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    meminfo("MemAvailable:")
}

/// Bytes of the machine's memory (Linux `MemTotal`), if known.
pub fn total_memory() -> Option<u64> {
    meminfo("MemTotal:")
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_overflow_to_none() {
        assert_eq!(count(&[&[2, 3], &[4]]), Some(10));
        assert_eq!(count(&[&[usize::MAX, 2]]), None);
        assert_eq!(count(&[&[1 << 40], &[1 << 40], &[u64::MAX as usize]]), None);
        assert!(params(&[&[1 << 20, 1 << 21]]).is_err());
        assert!(params(&[&[1 << 20, 1 << 19]]).is_ok());
    }

    #[test]
    fn dims_and_epsilons() {
        assert_eq!(dim("x", 0, 4).unwrap_err(), "x must be positive");
        assert!(dim("x", 5, 4)
            .unwrap_err()
            .contains("above shrink's limit of 4"));
        assert_eq!(dim("x", 4, 4), Ok(4));
        for bad in [0.0, -1e-5, 1.0, f32::NAN, f32::INFINITY] {
            assert!(epsilon("eps", bad).is_err(), "{bad}");
        }
        assert_eq!(epsilon("eps", 1e-6), Ok(1e-6));
    }
}
