//! `distill`: trains the current model (the student) to match a frozen teacher's next-token
//! distribution: `alpha·CE + (1−alpha)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`
//! (Hinton et al., 2015). The teacher is the input model, the model as it was before a named
//! earlier pass of the pipeline, or a model file.

use serde::{Deserialize, Serialize};
use shrink_ir::Model;
use shrink_runtime::train::{HiddenLoss, HiddenTerm, Loss};

use crate::training::TrainOptions;
use crate::{canonical_ron, parse_options, Pass, PassContext, PassError, PassInfo, PassReport};

pub const INFO: PassInfo = PassInfo {
    name: "distill",
    summary: "Train the model against a frozen teacher's output distribution (KD loss).",
    build: |raw| Ok(Box::new(Distill(parse_options(raw)?))),
};

/// A loss term between a student layer's output and a teacher layer's (the residual stream
/// after the layer), as Minitron adds to the logit loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenOptions {
    pub loss: HiddenLossName,
    pub student_layer: usize,
    pub teacher_layer: usize,
    pub weight: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenLossName {
    Mse,
    Cosine,
}

/// Options of `distill`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillOptions {
    /// Weight of the cross-entropy on the next token; the KL term gets `1 − alpha`.
    pub alpha: f64,
    /// Terms on layer outputs, added to the loss (widths must match).
    pub hidden: Vec<HiddenOptions>,
    /// The teacher is the model as it was before the last pass of this name that comes
    /// earlier in the pipeline; `None`: the input model.
    pub teacher: Option<String>,
    /// A model file as the teacher instead (relative to the pipeline file).
    pub teacher_model: Option<String>,
    /// Softmax temperature of both distributions in the KL term.
    pub temperature: f64,
    pub train: TrainOptions,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            alpha: 0.5,
            hidden: Vec::new(),
            teacher: None,
            teacher_model: None,
            temperature: 2.0,
            train: TrainOptions::default(),
        }
    }
}

pub struct Distill(pub DistillOptions);

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed {
        pass: INFO.name,
        message: message.into(),
    }
}

impl Pass for Distill {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn model_before(&self) -> Option<&str> {
        self.0.teacher.as_deref()
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        self.0.train.plan(model)
    }

    fn rewrites(&self, model: &Model) -> Vec<String> {
        self.0.train.rewrites(model)
    }

    fn working_set(&self, model: &Model) -> Result<u64, String> {
        Ok(self.0.train.working_set(
            model,
            self.0.teacher.is_some() || self.0.teacher_model.is_some(),
        ))
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        let mut f = self.0.train.files();
        if let Some(t) = &self.0.teacher_model {
            f.push(("teacher_model", t.clone()));
        }
        f
    }

    fn needs(&self) -> crate::Needs {
        self.0.train.needs()
    }

    fn check(&self) -> Result<(), String> {
        let o = &self.0;
        if !(0.0..=1.0).contains(&o.alpha) {
            return Err(format!("alpha {} is not in [0, 1]", o.alpha));
        }
        if !(o.temperature.is_finite() && o.temperature > 0.0 && o.temperature <= 100.0) {
            return Err(format!(
                "temperature {} is out of range (0, 100]",
                o.temperature
            ));
        }
        if let Some(h) = o
            .hidden
            .iter()
            .find(|h| !(h.weight.is_finite() && h.weight >= 0.0))
        {
            return Err(format!(
                "hidden: weight {} is not a finite value ≥ 0",
                h.weight
            ));
        }
        if o.teacher.is_some() && o.teacher_model.is_some() {
            return Err("give teacher or teacher_model, not both".into());
        }
        o.train.check()
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let o = &self.0;
        self.check().map_err(fail)?;
        // Shared references out of the context, so that it can be borrowed mutably below.
        let (before, original) = (cx.before, cx.original);
        let loaded;
        let teacher: &Model = match (&o.teacher, &o.teacher_model) {
            (Some(name), _) => before.get(name).ok_or_else(|| {
                fail(format!(
                    "teacher: no pass '{name}' comes before this one in the pipeline"
                ))
            })?,
            (None, Some(path)) => {
                let path = cx.base_dir.join(path);
                let load = cx.load_model.ok_or_else(|| {
                    fail("teacher_model: this caller loads no model files (give teacher instead)")
                })?;
                loaded = load(&path).map_err(|e| fail(format!("teacher_model: {e}")))?;
                &loaded
            }
            (None, None) => original,
        };
        let loss = Loss::Distill {
            alpha: o.alpha,
            temperature: o.temperature,
        };
        let fingerprint = crate::checkpoint_fingerprint(cx.index, self);
        let mut prepared = o.train.prepare(loss, cx, fingerprint).map_err(fail)?;
        prepared.config.hidden = hidden_terms(&o.hidden, model, teacher).map_err(fail)?;
        let stats = prepared
            .run(model, Some(teacher), &o.train.params, cx, "distilling")
            .map_err(fail)?;
        Ok(PassReport {
            changed: true,
            stats,
        })
    }
}

/// The values the hidden terms compare: each layer's output, found from the graphs.
fn hidden_terms(
    terms: &[HiddenOptions],
    student: &Model,
    teacher: &Model,
) -> Result<Vec<HiddenTerm>, String> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let s = crate::prune_structured::groups::analyse(&student.graph)?;
    let t = crate::prune_structured::groups::analyse(&teacher.graph)?;
    let layer = |layers: &[crate::prune_structured::groups::Layer], i: usize, who: &str| {
        layers.get(i).map(|l| l.output()).ok_or_else(|| {
            format!(
                "hidden: {who}_layer {i}, but the {who} has {} layers",
                layers.len()
            )
        })
    };
    terms
        .iter()
        .map(|h| {
            Ok(HiddenTerm {
                student: layer(&s.layers, h.student_layer, "student")?,
                teacher: layer(&t.layers, h.teacher_layer, "teacher")?,
                loss: match h.loss {
                    HiddenLossName::Mse => HiddenLoss::Mse,
                    HiddenLossName::Cosine => HiddenLoss::Cosine,
                },
                weight: h.weight,
                label: format!(
                    "student layer {} → teacher layer {}",
                    h.student_layer, h.teacher_layer
                ),
            })
        })
        .collect()
}
