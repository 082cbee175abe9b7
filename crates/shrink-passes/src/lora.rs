//! `lora`: attaches LoRA adapters (Hu et al., 2021) to linears chosen by name. `A` starts from
//! PEFT's Kaiming-uniform (`U(±1/√in)`, as `kaiming_uniform_(a=√5)` gives) and `B` at zero, so
//! the model's output is unchanged until a training pass (`finetune`, `distill`) trains them;
//! with adapters attached, those passes train the adapters alone. `init: random` draws `B`
//! like `A` (`U(±1/√r)`, PEFT's `init_lora_weights=False`), for tests of folding and export.
//!
//! The pass prints PEFT's count line, e.g.
//! `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`.

use rand::Rng;
use serde::{Deserialize, Serialize};
use shrink_ir::{lora, Model, Op};

use crate::pattern::glob;
use crate::{canonical_ron, parse_options, Pass, PassContext, PassError, PassInfo, PassReport};

pub const INFO: PassInfo = PassInfo {
    name: "lora",
    summary: "Attach LoRA adapters to linears (B = 0: the output is unchanged until trained).",
    build: |raw| Ok(Box::new(LoraPass(parse_options(raw)?))),
};

/// How the adapter matrices start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// `A` Kaiming-uniform, `B = 0` (PEFT's default).
    Kaiming,
    /// `A` and `B` both uniform, as PEFT's `init_lora_weights=False` (for testing).
    Random,
}

/// Options of `lora`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraOptions {
    /// The scale's numerator: updates are scaled by `alpha / r` (or `alpha / √r`).
    pub alpha: f64,
    /// Dropout on each adapter's input while training.
    pub dropout: f64,
    /// Modules to leave out, as `targets` names them.
    pub exclude: Vec<String>,
    pub init: LoraInit,
    /// Rank of every adapter.
    pub r: usize,
    /// rsLoRA: scale by `alpha / √r` (Kalajdzievski, 2023).
    pub rslora: bool,
    /// Seed of the initial draws (default: from the pipeline's seed and the pass's position).
    /// Two pipelines with the same seed and targets attach the same adapters.
    pub seed: Option<u64>,
    /// Linears to adapt, by module path (the weight's name without `.weight`): a name matches
    /// a module equal to it or ending in `.name` (as PEFT's `target_modules`); `*` and `?`
    /// are wildcards over the whole path; `all-linear` is every linear but the output head.
    pub targets: Vec<String>,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions {
            alpha: 8.0,
            dropout: 0.0,
            exclude: vec![],
            init: LoraInit::Kaiming,
            r: 8,
            rslora: false,
            seed: None,
            targets: vec![ALL_LINEAR.into()],
        }
    }
}

const ALL_LINEAR: &str = "all-linear";

/// Whether target `t` names module `m` (see [`LoraOptions::targets`]).
pub(crate) fn target_matches(t: &str, m: &str) -> bool {
    if t.contains(['*', '?']) {
        glob(t, m)
    } else {
        m == t || m.ends_with(&format!(".{t}"))
    }
}

impl LoraOptions {
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }) as f32
    }

    fn check(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha == 0.0 {
            return Err(format!("alpha {} must be finite and non-zero", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return Err("targets is empty: name modules or \"all-linear\"".into());
        }
        Ok(())
    }

    /// The linears to adapt: `(weight name, out, in)` in graph order. Every target must match.
    fn select(&self, model: &Model) -> Result<Vec<(String, usize, usize)>, String> {
        let g = &model.graph;
        let mut linears = Vec::new();
        for id in g.order().map_err(|_| "the graph has a cycle".to_string())? {
            let Some(n) = g.node(id) else { continue };
            if let Op::Linear { weight, .. } = &n.op {
                let head = g.feeds_only_outputs(id);
                if !linears.iter().any(|(w, _)| w == weight) {
                    linears.push((weight.clone(), head));
                }
            }
        }
        let mut chosen = Vec::new();
        for t in &self.targets {
            let hits: Vec<&String> = linears
                .iter()
                .filter(|(w, head)| {
                    let m = lora::module_of(w);
                    if t == ALL_LINEAR {
                        !head
                    } else {
                        target_matches(t, m)
                    }
                })
                .map(|(w, _)| w)
                .collect();
            if hits.is_empty() {
                let example = linears.first().map_or(String::new(), |(w, _)| {
                    format!(" (modules are named like '{}')", lora::module_of(w))
                });
                return Err(format!("target '{t}' matches no linear{example}"));
            }
            for w in hits {
                if !chosen.contains(w) {
                    chosen.push(w.clone());
                }
            }
        }
        for e in &self.exclude {
            if !chosen.iter().any(|w| target_matches(e, lora::module_of(w))) {
                return Err(format!("exclude '{e}' matches no targeted linear"));
            }
        }
        chosen.retain(|w| {
            !self
                .exclude
                .iter()
                .any(|e| target_matches(e, lora::module_of(w)))
        });
        let attached: Vec<String> = lora::adapters(model)
            .into_iter()
            .map(|a| a.weight)
            .collect();
        let mut out = Vec::new();
        // In graph order, so the random draws do not depend on the order of `targets`.
        for (w, _) in &linears {
            if !chosen.contains(w) {
                continue;
            }
            let module = lora::module_of(w);
            let ty = g
                .param(w)
                .ok_or_else(|| format!("{module}: weight not declared"))?;
            let [o, i] = ty.shape[..] else {
                return Err(format!("{module}: weight is not a matrix"));
            };
            if self.r > o.min(i) {
                return Err(format!(
                    "{module}: r = {} is larger than the smaller side of its [{o}, {i}] weight",
                    self.r
                ));
            }
            if attached.contains(w) {
                return Err(format!("{module} already carries an adapter"));
            }
            out.push((w.clone(), o, i));
        }
        Ok(out)
    }
}

pub struct LoraPass(pub LoraOptions);

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// PEFT's `print_trainable_parameters` line: adapters are what trains.
pub fn trainable_line(model: &Model) -> (u64, u64, String) {
    let trainable: u64 = lora::adapters(model)
        .iter()
        .flat_map(|a| [&a.lora.a, &a.lora.b])
        .filter_map(|p| model.graph.param(p))
        .map(|t| t.numel() as u64)
        .sum();
    let all = model.size().params;
    let pct = if all == 0 {
        0.0
    } else {
        100.0 * trainable as f64 / all as f64
    };
    let line = format!(
        "trainable params: {} || all params: {} || trainable%: {pct:.4}",
        thousands(trainable),
        thousands(all)
    );
    (trainable, all, line)
}

impl Pass for LoraPass {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn check(&self) -> Result<(), String> {
        self.0.check()
    }

    fn effect(&self) -> Option<crate::Effect> {
        Some(crate::Effect::AttachesAdapters)
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        let o = &self.0;
        for (w, out, inp) in o.select(model)? {
            let (a, b) = (vec![0.0; o.r * inp], vec![0.0; out * o.r]);
            lora::attach(
                model,
                &w,
                (vec![o.r, inp], a),
                (vec![out, o.r], b),
                o.scale(),
                o.dropout as f32,
            )?;
        }
        Ok(())
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let fail = |message: String| PassError::Failed {
            pass: INFO.name,
            message,
        };
        let o = &self.0;
        o.check().map_err(fail)?;
        let targets = o.select(model).map_err(fail)?;
        let scale = o.scale();
        let mut rng = match o.seed {
            Some(s) => <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(s),
            None => cx.rng.clone(),
        };
        for (w, out, inp) in &targets {
            let bound_a = 1.0 / (*inp as f32).sqrt();
            let a: Vec<f32> = (0..o.r * inp)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound_a)
                .collect();
            let b: Vec<f32> = match o.init {
                LoraInit::Kaiming => vec![0.0; out * o.r],
                LoraInit::Random => {
                    let bound_b = 1.0 / (o.r as f32).sqrt();
                    (0..out * o.r)
                        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound_b)
                        .collect()
                }
            };
            lora::attach(
                model,
                w,
                (vec![o.r, *inp], a),
                (vec![*out, o.r], b),
                scale,
                o.dropout as f32,
            )
            .map_err(fail)?;
        }
        let (trainable, all, line) = trainable_line(model);
        cx.progress.message(&line);
        let mut report = PassReport {
            changed: true,
            ..Default::default()
        };
        let s = &mut report.stats;
        s.insert("adapters".into(), targets.len().into());
        s.insert("scale".into(), crate::json_f64(scale as f64));
        s.insert("trainable_params".into(), trainable.into());
        s.insert("all_params".into(), all.into());
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_count_format() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(294_912), "294,912");
        assert_eq!(thousands(124_734_720), "124,734,720");
    }

    #[test]
    fn targets_match_as_peft_does() {
        assert!(target_matches("q_proj", "model.layers.0.self_attn.q_proj"));
        assert!(target_matches("c_attn", "transformer.h.11.attn.c_attn"));
        assert!(!target_matches("proj", "model.layers.0.self_attn.q_proj"));
        assert!(target_matches("*.mlp.*", "model.layers.0.mlp.up_proj"));
        assert!(!target_matches(
            "*.mlp.*",
            "model.layers.0.self_attn.q_proj"
        ));
    }
}
