//! Text generation with a KV cache: greedy, or seeded temperature / top-p sampling.

use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, RuntimeError};
use crate::interp::Interpreter;

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus: sample among the most likely tokens whose probabilities add up to `top_p`.
    pub top_p: f32,
    pub seed: u64,
    /// Generation ends after any of these tokens.
    pub stop: Vec<u32>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], opts: &SampleOptions, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - max) / opts.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut keep = probs.len();
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p.1 / total;
            if acc >= opts.top_p as f64 {
                keep = k + 1;
                break;
            }
        }
    }
    let kept = &probs[..keep];
    let mass: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * mass;
    for (i, p) in kept {
        r -= p;
        if r <= 0.0 {
            return *i as u32;
        }
    }
    kept.last().map_or(0, |p| p.0 as u32)
}

/// Generates up to `max_tokens` after `prompt`, calling `on_token` with each as it comes.
pub fn generate<B: Backend>(
    model: &Interpreter<B>,
    prompt: &[u32],
    opts: &SampleOptions,
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(RuntimeError::Input("the prompt has no tokens".into()));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut next_input = prompt.to_vec();
    for _ in 0..opts.max_tokens {
        if cache.len() + next_input.len() > model.max_positions() {
            break;
        }
        let s = next_input.len();
        let logits = model.forward_rows(&[next_input.clone()], Some(&mut cache), Some(s - 1..s))?;
        let v = logits.dims()[2];
        let last = logits
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| RuntimeError::Input(format!("reading logits back: {e:?}")))?;
        debug_assert_eq!(last.len(), v);
        let tok = sample(&last, opts, &mut rng);
        out.push(tok);
        on_token(tok);
        if opts.stop.contains(&tok) {
            break;
        }
        next_input = vec![tok];
    }
    Ok(out)
}
