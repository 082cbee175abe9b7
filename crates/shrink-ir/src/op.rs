//! The operations of the IR. They are coarse on purpose: a pass reasons about "the attention of
//! layer 3" or "the down projection", not about the dozen tensor ops that implement them.

use crate::types::{DType, Dim, ParamType, ValueType};

/// Normalisation flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`.
    Rms,
    /// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias`.
    Layer,
}

/// Elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU with the tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// GELU with the exact erf.
    Gelu,
    Relu,
}

impl Activation {
    pub const ALL: [Activation; 4] = [
        Activation::Silu,
        Activation::GeluTanh,
        Activation::Gelu,
        Activation::Relu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
        }
    }
}

/// Rotary position embedding in the "rotate half" form of Hugging Face's LLaMA: feature `i` pairs
/// with feature `i + dim/2` of each head. GGUF files store Q/K rows permuted for the interleaved
/// form; importers undo that so the IR has one convention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    /// Rotated features per head (even, at most `head_dim`); the rest pass through.
    pub dim: usize,
    pub scaling: RopeScaling,
}

/// How a RoPE's inverse frequencies are rescaled for a longer context than the model was first
/// trained on (transformers' `rope_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RopeScaling {
    /// `theta^(-2i/dim)` as it is (`default`).
    #[default]
    None,
    /// Every inverse frequency divided by `factor` (`linear`: positions interpolated).
    Linear { factor: f32 },
    /// Llama 3.1's: frequencies whose wavelength exceeds `original_context / low_freq_factor`
    /// divided by `factor`, those below `original_context / high_freq_factor` kept, the band
    /// between interpolated smoothly (`llama3`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// YaRN (`yarn`, Qwen's long context): frequencies that turn fewer than `beta_slow` times
    /// over `original_context` positions divided by `factor`, those turning more than
    /// `beta_fast` times kept, a linear ramp between (over dimension indices, rounded outwards
    /// when `truncate`); `cos` and `sin` multiplied by `attention_factor`.
    Yarn {
        factor: f32,
        original_context: usize,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        truncate: bool,
    },
}

impl RopeScaling {
    /// YaRN's default `attention_factor` for a `factor`, `0.1·ln(factor) + 1` (1 at or below 1),
    /// as transformers and llama.cpp compute it; `mscale` scales the logarithm.
    pub fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * mscale * factor.ln() + 1.0
        }
    }
}

impl Rope {
    /// The `dim/2` inverse frequencies, computed in f32 in transformers' order of operations
    /// (`_compute_default_rope_parameters` and its scaled variants), so angles match to the bit.
    pub fn inv_freqs(&self) -> Vec<f32> {
        let dim = self.dim as f32;
        let ramp = self.yarn_ramp();
        (0..self.dim / 2)
            .map(|i| {
                let pos = self.theta.powf((2 * i) as f32 / dim);
                let inv = 1.0f32 / pos;
                match self.scaling {
                    RopeScaling::None => inv,
                    RopeScaling::Linear { factor } => inv / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_context,
                    } => {
                        // torch computes `scalar / tensor` as `reciprocal(tensor) * scalar`,
                        // and the wavelength bounds in f64 before comparing in f32.
                        let old = original_context as f64;
                        let wavelen = (1.0 / inv) * (2.0 * std::f64::consts::PI) as f32;
                        if wavelen < (old / high as f64) as f32 {
                            inv
                        } else if wavelen > (old / low as f64) as f32 {
                            inv / factor
                        } else {
                            let smooth = ((1.0 / wavelen) * old as f32 - low)
                                / (high as f64 - low as f64) as f32;
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    }
                    RopeScaling::Yarn { factor, .. } => {
                        // transformers: `1 / (factor · base^(2i/dim))` interpolated, the plain
                        // frequency extrapolated, mixed by `1 - ramp`.
                        let interp = 1.0 / (factor * pos);
                        let extrap = 1.0 - ramp[i];
                        interp * (1.0 - extrap) + inv * extrap
                    }
                }
            })
            .collect()
    }

    /// YaRN's ramp over the `dim/2` frequency indices, in transformers' arithmetic: the
    /// correction range in f64 from the rotation counts, the ramp in f32; empty for the rest.
    fn yarn_ramp(&self) -> Vec<f32> {
        let RopeScaling::Yarn {
            original_context,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } = self.scaling
        else {
            return Vec::new();
        };
        let (dim, base) = (self.dim as f64, self.theta as f64);
        let correction_dim = |rotations: f64| {
            dim * (original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let (mut low, mut high) = (
            correction_dim(beta_fast as f64),
            correction_dim(beta_slow as f64),
        );
        if truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
        if low == high {
            high += 0.001;
        }
        let (low32, span) = (low as f32, (high - low) as f32);
        (0..self.dim / 2)
            .map(|i| ((i as f32 - low32) / span).clamp(0.0, 1.0))
            .collect()
    }

    /// What `cos` and `sin` are multiplied by (YaRN's `attention_factor`; 1 for the rest).
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        }
    }

    /// Why the attribute is invalid, if it is.
    pub fn check(&self, head_dim: usize) -> Result<(), String> {
        if self.dim == 0 || !self.dim.is_multiple_of(2) || self.dim > head_dim {
            return Err(format!(
                "rope dim {} must be even and at most head_dim {head_dim}",
                self.dim
            ));
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return Err(format!("rope theta {} must be positive", self.theta));
        }
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("rope {name} {v} must be positive"))
            }
        };
        match self.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ));
                }
                if original_context == 0 {
                    return Err("rope original_context must be positive".into());
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate: _,
            } => {
                positive("factor", factor)?;
                positive("beta_fast", beta_fast)?;
                positive("beta_slow", beta_slow)?;
                positive("attention_factor", attention_factor)?;
                if original_context == 0 {
                    return Err("rope original_context must be positive".into());
                }
                Ok(())
            }
        }
    }
}

/// Scaled dot-product attention over already projected q, k, v, with its head layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub heads: usize,
    /// Key/value heads; `heads / kv_heads` query heads share each (grouped-query attention).
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope: Option<Rope>,
    pub causal: bool,
    /// Sliding-window attention (Mistral, Qwen2's upper layers): query `i` sees keys
    /// `i - window + 1 ..= i` only. `None`: every earlier key.
    pub window: Option<usize>,
    /// The factor on `q·k` (Gemma's `query_pre_attn_scalar^-0.5`); `None`: `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Scaled scores soft-capped to `cap · tanh(score / cap)` before the mask and softmax
    /// (Gemma 2's `attn_logit_softcapping`).
    pub softcap: Option<f32>,
}

impl AttentionSpec {
    /// The factor the scores `q·k` are multiplied by.
    pub fn score_scale(&self) -> f32 {
        self.scale
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }
}

/// A LoRA adapter on a linear (Hu et al., 2021): `y += scale · (dropout(x) Aᵀ) Bᵀ` with
/// `a[r, in]` and `b[out, r]`, so the update of the `[out, in]` weight is `scale · B·A`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub a: String,
    pub b: String,
    /// `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
    pub scale: f32,
    /// Dropout on the adapter's input while training (0 at inference).
    pub dropout: f32,
}

/// One operation. Parameters are referenced by name in the weight store.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Graph input: token ids `i64[b, s]`.
    Input {
        name: String,
    },
    /// Token embedding lookup `weight[vocab, dim]`: `i64[b, s]` → `f32[b, s, dim]`.
    Embedding {
        weight: String,
    },
    /// Learned absolute positions `weight[max_pos, dim]` for the positions of the tokens
    /// (offset by the cache length when generating): `i64[b, s]` → `f32[b, s, dim]`.
    PositionEmbedding {
        weight: String,
    },
    /// Normalises each row of the last axis; with `group`, each run of `group` consecutive
    /// features separately (Qwen3's per-head q/k RMSNorm: `group = head_dim`, one weight shared
    /// by every head). `weight` and `bias` have the length of what is normalised.
    Norm {
        kind: NormKind,
        eps: f32,
        weight: String,
        bias: Option<String>,
        group: Option<usize>,
    },
    /// `y = x Wᵀ + b` with `weight[out, in]`, plus a LoRA adapter's update when one is
    /// attached.
    Linear {
        weight: String,
        bias: Option<String>,
        lora: Option<Lora>,
    },
    /// Splits the last axis into consecutive parts (GPT-2's fused `c_attn`).
    Split {
        sizes: Vec<usize>,
    },
    /// `(q, k, v)` → `f32[b, s, heads * head_dim]`.
    Attention(AttentionSpec),
    Activation(Activation),
    Add,
    Mul,
    /// `x · factor` (Gemma's embedding scaled by √hidden).
    Scale {
        factor: f32,
    },
    /// `cap · tanh(x / cap)` (Gemma 2's `final_logit_softcapping` on the logits).
    SoftCap {
        cap: f32,
    },
    /// Graph output (a sink, no results).
    Output {
        name: String,
    },
}

impl Op {
    /// The name of the op in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Embedding { .. } => "embedding",
            Op::PositionEmbedding { .. } => "position_embedding",
            Op::Norm {
                kind: NormKind::Rms,
                ..
            } => "rms_norm",
            Op::Norm {
                kind: NormKind::Layer,
                ..
            } => "layer_norm",
            Op::Linear { .. } => "linear",
            Op::Split { .. } => "split",
            Op::Attention(_) => "attention",
            Op::Activation(a) => a.name(),
            Op::Add => "add",
            Op::Scale { .. } => "scale",
            Op::SoftCap { .. } => "softcap",
            Op::Mul => "mul",
            Op::Output { .. } => "output",
        }
    }

    /// Number of operands the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } => 0,
            Op::Attention(_) => 3,
            Op::Add | Op::Mul => 2,
            _ => 1,
        }
    }

    /// Names of the parameters the op reads, in a fixed order.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Op::Embedding { weight } | Op::PositionEmbedding { weight } => vec![weight],
            Op::Norm { weight, bias, .. } => {
                let mut v = vec![weight.as_str()];
                v.extend(bias.as_deref());
                v
            }
            Op::Linear { weight, bias, lora } => {
                let mut v = vec![weight.as_str()];
                v.extend(bias.as_deref());
                if let Some(l) = lora {
                    v.extend([l.a.as_str(), l.b.as_str()]);
                }
                v
            }
            _ => vec![],
        }
    }

    /// Mutable access to the parameter names the op reads (for renaming passes).
    pub fn params_mut(&mut self) -> Vec<&mut String> {
        match self {
            Op::Embedding { weight } | Op::PositionEmbedding { weight } => vec![weight],
            Op::Norm { weight, bias, .. } => {
                let mut v = vec![weight];
                v.extend(bias.as_mut());
                v
            }
            Op::Linear { weight, bias, lora } => {
                let mut v = vec![weight];
                v.extend(bias.as_mut());
                if let Some(l) = lora {
                    v.extend([&mut l.a, &mut l.b]);
                }
                v
            }
            _ => vec![],
        }
    }

    /// Result types of the op given its operand types and a lookup of parameter types.
    /// The error says what does not fit; the verifier adds where.
    pub fn infer(
        &self,
        inputs: &[ValueType],
        param: &dyn Fn(&str) -> Option<ParamType>,
    ) -> Result<Vec<ValueType>, String> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "{} takes {} operand(s), got {}",
                self.name(),
                self.arity(),
                inputs.len()
            ));
        }
        let get = |name: &str, rank: usize| -> Result<ParamType, String> {
            let p = param(name).ok_or_else(|| format!("parameter '{name}' is not declared"))?;
            if p.shape.len() != rank {
                return Err(format!(
                    "parameter '{name}' has shape {p}, expected rank {rank}"
                ));
            }
            if !p.dtype.is_float() {
                return Err(format!("parameter '{name}' has non-float type {p}"));
            }
            Ok(p)
        };
        let hidden = |i: usize| -> Result<usize, String> {
            let t = &inputs[i];
            if t.dtype != DType::F32
                || t.shape.len() != 3
                || t.shape[0] != Dim::Batch
                || t.shape[1] != Dim::Seq
            {
                return Err(format!("operand {i} has type {t}, expected f32[b, s, N]"));
            }
            t.features()
                .ok_or_else(|| format!("operand {i} has type {t}, expected a fixed last axis"))
        };
        let tokens = |i: usize| -> Result<(), String> {
            if inputs[i] != ValueType::tokens() {
                return Err(format!(
                    "operand {i} has type {}, expected {}",
                    inputs[i],
                    ValueType::tokens()
                ));
            }
            Ok(())
        };
        match self {
            Op::Input { .. } => Ok(vec![ValueType::tokens()]),
            Op::Embedding { weight } | Op::PositionEmbedding { weight } => {
                tokens(0)?;
                let w = get(weight, 2)?;
                Ok(vec![ValueType::hidden(w.shape[1])])
            }
            Op::Norm {
                weight,
                bias,
                group,
                ..
            } => {
                let d = hidden(0)?;
                let n = match *group {
                    None => d,
                    Some(g) if g > 0 && d.is_multiple_of(g) => g,
                    Some(g) => {
                        return Err(format!(
                            "norm group {g} does not divide the operand's {d} features"
                        ))
                    }
                };
                for name in std::iter::once(weight).chain(bias) {
                    let p = get(name, 1)?;
                    if p.shape[0] != n {
                        return Err(format!("parameter '{name}' has shape {p}, expected [{n}]"));
                    }
                }
                Ok(vec![ValueType::hidden(d)])
            }
            Op::Linear { weight, bias, lora } => {
                let d = hidden(0)?;
                let w = get(weight, 2)?;
                if let Some(l) = lora {
                    let (a, b) = (get(&l.a, 2)?, get(&l.b, 2)?);
                    let r = a.shape[0];
                    if r == 0 || a.shape[1] != d || b.shape != [w.shape[0], r] {
                        return Err(format!(
                            "LoRA '{}' {a} and '{}' {b} do not fit weight '{weight}' {w}: \
                             want A [r, {d}] and B [{}, r]",
                            l.a, l.b, w.shape[0]
                        ));
                    }
                    if a.quant.is_some() || b.quant.is_some() {
                        return Err(format!("LoRA '{}' / '{}' must not be quantized", l.a, l.b));
                    }
                    if !(l.scale.is_finite() && (0.0..1.0).contains(&l.dropout)) {
                        return Err(format!(
                            "LoRA on '{weight}': scale {} must be finite and dropout {} in [0, 1)",
                            l.scale, l.dropout
                        ));
                    }
                }
                if w.shape[1] != d {
                    return Err(format!(
                        "weight '{weight}' has shape {w} ([out, in]) but the operand has {d} features"
                    ));
                }
                if let Some(b) = bias {
                    let p = get(b, 1)?;
                    if p.shape[0] != w.shape[0] {
                        return Err(format!(
                            "bias '{b}' has shape {p}, expected [{}]",
                            w.shape[0]
                        ));
                    }
                }
                Ok(vec![ValueType::hidden(w.shape[0])])
            }
            Op::Split { sizes } => {
                let d = hidden(0)?;
                let total: usize = sizes.iter().sum();
                if sizes.is_empty() || sizes.contains(&0) || total != d {
                    return Err(format!(
                        "split sizes {sizes:?} do not partition {d} features"
                    ));
                }
                Ok(sizes.iter().map(|&n| ValueType::hidden(n)).collect())
            }
            Op::Attention(a) => {
                let (q, k, v) = (hidden(0)?, hidden(1)?, hidden(2)?);
                if a.heads == 0 || a.kv_heads == 0 || a.head_dim == 0 {
                    return Err("heads, kv_heads and head_dim must be positive".into());
                }
                if a.heads % a.kv_heads != 0 {
                    return Err(format!(
                        "heads={} is not a multiple of kv_heads={}",
                        a.heads, a.kv_heads
                    ));
                }
                if q != a.heads * a.head_dim {
                    return Err(format!(
                        "q has {q} features but heads*head_dim = {}",
                        a.heads * a.head_dim
                    ));
                }
                for (name, n) in [("k", k), ("v", v)] {
                    if n != a.kv_heads * a.head_dim {
                        return Err(format!(
                            "{name} has {n} features but kv_heads*head_dim = {}",
                            a.kv_heads * a.head_dim
                        ));
                    }
                }
                if let Some(r) = a.rope {
                    r.check(a.head_dim)?;
                }
                if a.window == Some(0) {
                    return Err("a sliding window must span at least one position".into());
                }
                if a.window.is_some() && !a.causal {
                    return Err("a sliding window needs causal attention".into());
                }
                if let Some(s) = a.scale.filter(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(format!("attention scale {s} must be positive"));
                }
                if let Some(c) = a.softcap.filter(|c| !(c.is_finite() && *c > 0.0)) {
                    return Err(format!("attention softcap {c} must be positive"));
                }
                Ok(vec![ValueType::hidden(q)])
            }
            Op::Activation(_) => Ok(vec![ValueType::hidden(hidden(0)?)]),
            Op::Scale { factor } => {
                if !factor.is_finite() {
                    return Err(format!("scale factor {factor} is not finite"));
                }
                Ok(vec![ValueType::hidden(hidden(0)?)])
            }
            Op::SoftCap { cap } => {
                if !(cap.is_finite() && *cap > 0.0) {
                    return Err(format!("softcap {cap} must be positive"));
                }
                Ok(vec![ValueType::hidden(hidden(0)?)])
            }
            Op::Add | Op::Mul => {
                let (x, y) = (hidden(0)?, hidden(1)?);
                if x != y {
                    return Err(format!("operands have {x} and {y} features"));
                }
                Ok(vec![ValueType::hidden(x)])
            }
            Op::Output { .. } => {
                if !inputs[0].dtype.is_float() {
                    return Err(format!("output of type {} is not float", inputs[0]));
                }
                Ok(vec![])
            }
        }
    }
}
