//! How many units each layer loses.
//!
//! Sensitivity allocation: each layer has a measured cost curve (KL divergence of the whole
//! model's output when only that layer loses `n` units, at a few `n`), read as piecewise linear
//! through `(0, 0)` and extended with its last slope. Units then go in steps, each from the
//! layer whose next step costs least, up to a per-layer cap: for convex curves this greedy
//! choice minimises the summed cost, and a layer whose output the model depends on (layer 0 of
//! SmolLM2) keeps almost all of its units.

/// Units removed per instance when each loses the same fraction: `amount` in all, in steps
/// of `step`, the rounding remainder going to the first instances.
pub fn uniform(widths: &[usize], amount: usize, step: usize) -> Result<Vec<usize>, String> {
    let total: usize = widths.iter().sum();
    if total == 0 {
        return Ok(vec![0; widths.len()]);
    }
    let step = step.max(1);
    let mut out: Vec<usize> = widths
        .iter()
        .map(|w| (amount as f64 * *w as f64 / total as f64 / step as f64).floor() as usize * step)
        .collect();
    let mut left = amount.saturating_sub(out.iter().sum());
    for (n, w) in out.iter_mut().zip(widths) {
        if left < step {
            break;
        }
        if *n + step < *w {
            *n += step;
            left -= step;
        }
    }
    if let Some(i) = out.iter().zip(widths).position(|(n, w)| n >= w) {
        return Err(format!(
            "the amount would remove every unit of layer {i} ({} of {}); lower ratio or count",
            out[i], widths[i]
        ));
    }
    Ok(out)
}

/// Cost of removing `n` units on a curve of `(units, cost)` points.
pub fn cost(curve: &[(usize, f64)], n: usize) -> f64 {
    let mut prev = (0usize, 0f64);
    let mut slope = 0f64;
    for &(x, y) in curve {
        // Costs never fall as more goes.
        let y = y.max(prev.1);
        if x <= prev.0 {
            continue;
        }
        slope = (y - prev.1) / (x - prev.0) as f64;
        if n <= x {
            return prev.1 + slope * (n - prev.0) as f64;
        }
        prev = (x, y);
    }
    prev.1 + slope * n.saturating_sub(prev.0) as f64
}

/// Units removed per instance: `amount` in all, in steps of `step`, each step where it costs
/// least, none beyond `cap`.
pub fn by_sensitivity(
    curves: &[Vec<(usize, f64)>],
    cap: &[usize],
    amount: usize,
    step: usize,
) -> Result<Vec<usize>, String> {
    let step = step.max(1);
    let room: usize = cap.iter().sum();
    if amount > room {
        return Err(format!(
            "cannot remove {amount} units: max_layer_ratio allows {room} in all"
        ));
    }
    let mut out = vec![0usize; curves.len()];
    let mut left = amount;
    while left > 0 {
        let take = step.min(left);
        let best = (0..curves.len())
            .filter(|i| out[*i] + take <= cap[*i])
            .map(|i| {
                let c = &curves[i];
                (i, cost(c, out[i] + take) - cost(c, out[i]))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let Some((i, _)) = best else {
            return Err(format!(
                "cannot remove {amount} units in steps of {step} within max_layer_ratio"
            ));
        };
        out[i] += take;
        left -= take;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_spreads_the_amount_in_steps() {
        assert_eq!(uniform(&[64, 64, 64], 96, 16).unwrap(), vec![32, 32, 32]);
        assert_eq!(uniform(&[64, 64, 64], 48, 16).unwrap(), vec![16, 16, 16]);
        // 64 = 3·16 + 16: the remainder goes to the first.
        assert_eq!(uniform(&[64, 64, 64], 64, 16).unwrap(), vec![32, 16, 16]);
        assert!(uniform(&[2, 2], 4, 1).unwrap_err().contains("every unit"));
    }

    #[test]
    fn cost_interpolates_and_extends() {
        let c = vec![(10, 1.0), (20, 4.0)];
        assert_eq!(cost(&c, 0), 0.0);
        assert!((cost(&c, 5) - 0.5).abs() < 1e-12);
        assert!((cost(&c, 15) - 2.5).abs() < 1e-12);
        assert!((cost(&c, 30) - 7.0).abs() < 1e-12);
        // A probe that measured less at more units is read as flat.
        assert!((cost(&[(10, 2.0), (20, 1.0)], 20) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn sensitive_layers_keep_their_units() {
        // Layer 0 is costly, layer 2 nearly free, layer 1 in between.
        let curves = vec![
            vec![(16, 10.0), (32, 40.0)],
            vec![(16, 0.2), (32, 1.0)],
            vec![(16, 0.1), (32, 0.3)],
        ];
        let out = by_sensitivity(&curves, &[32, 32, 32], 48, 16).unwrap();
        assert_eq!(out, vec![0, 16, 32]);
        assert!(by_sensitivity(&curves, &[32, 32, 32], 112, 16).is_err());
    }
}
