//! Perplexity over a token stream, as llama.cpp's perplexity tool computes it: the stream is
//! cut into non-overlapping chunks of `ctx` tokens and each chunk is scored on its own.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData as BurnData};

use crate::error::{Result, RuntimeError};
use crate::interp::Interpreter;

/// Which positions of a chunk are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// Every prediction in the chunk (`ctx - 1` per chunk).
    All,
    /// Only the second half, each prediction having at least `ctx/2` tokens of context
    /// (llama.cpp's perplexity tool: `ctx - 1 - ctx/2` per chunk).
    SecondHalf,
}

#[derive(Clone, Copy, Debug)]
pub struct PerplexityOptions {
    pub ctx: usize,
    /// At most this many chunks (all that fit when `None`).
    pub chunks: Option<usize>,
    pub scoring: Scoring,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Sum of negative log-likelihoods (nats).
    pub nll: f64,
    pub tokens_scored: u64,
    pub chunks: usize,
}

/// Progress after each chunk: chunks done, chunks in all, perplexity so far.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, f64);

pub fn perplexity<B: Backend>(
    model: &Interpreter<B>,
    tokens: &[u32],
    opts: PerplexityOptions,
    progress: Progress<'_>,
) -> Result<Perplexity> {
    if opts.ctx < 2 {
        return Err(RuntimeError::Input(format!(
            "ctx must be at least 2, got {}",
            opts.ctx
        )));
    }
    if opts.ctx > model.max_positions() {
        return Err(RuntimeError::TooLong {
            len: opts.ctx,
            max: model.max_positions(),
        });
    }
    let available = tokens.len() / opts.ctx;
    let n_chunks = opts.chunks.map_or(available, |c| c.min(available));
    if n_chunks == 0 {
        return Err(RuntimeError::Input(format!(
            "the text has {} tokens, fewer than one chunk of {}",
            tokens.len(),
            opts.ctx
        )));
    }
    let first = match opts.scoring {
        Scoring::All => 0,
        Scoring::SecondHalf => opts.ctx / 2,
    };
    let n = opts.ctx - 1 - first;
    if n == 0 {
        return Err(RuntimeError::Input(format!(
            "ctx {} scores no prediction with this scoring; use a ctx of at least {}",
            opts.ctx,
            if first == 0 { 2 } else { 3 }
        )));
    }
    let mut nll = 0.0f64;
    let mut count = 0u64;
    for c in 0..n_chunks {
        let chunk = &tokens[c * opts.ctx..(c + 1) * opts.ctx];
        let logits = model.forward_rows(&[chunk.to_vec()], None, Some(first..first + n))?;
        let targets = &chunk[first + 1..first + 1 + n];
        for (i, lp) in target_log_probs(logits, targets, model.device())?
            .into_iter()
            .enumerate()
        {
            // A NaN or infinite logit is a broken model, never a perplexity.
            if !lp.is_finite() {
                return Err(RuntimeError::Input(format!(
                    "the model's log-probability of token {} in chunk {} is {lp}: its logits are \
                     not finite (NaN or infinity)",
                    first + 1 + i,
                    c + 1
                )));
            }
            nll -= lp;
            count += 1;
        }
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    Ok(Perplexity {
        ppl: (nll / count as f64).exp(),
        nll,
        tokens_scored: count,
        chunks: n_chunks,
    })
}

/// `log softmax(logits)[target]` per position of `logits [1, n, vocab]` (the interpreter checked
/// the ids against the vocabulary).
fn target_log_probs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &[u32],
    device: &B::Device,
) -> Result<Vec<f64>> {
    let ids: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    if let Some(values) = crate::cpu::target_log_probs(&logits, &ids) {
        return Ok(values);
    }
    let n = targets.len();
    let logp = log_softmax(logits, 2);
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let idx: Tensor<B, 3, Int> = Tensor::from_data(BurnData::new(targets, [1, n, 1]), device);
    let values = logp
        .gather(2, idx)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| RuntimeError::Input(format!("reading logits back: {e:?}")))?;
    Ok(values.into_iter().map(f64::from).collect())
}
