//! `finetune`: trains the model on next-token cross-entropy alone, on the same loop as
//! `distill` (for comparison with it, and for LoRA adapters).

use serde::{Deserialize, Serialize};
use shrink_ir::Model;
use shrink_runtime::train::Loss;

use crate::training::TrainOptions;
use crate::{canonical_ron, parse_options, Pass, PassContext, PassError, PassInfo, PassReport};

pub const INFO: PassInfo = PassInfo {
    name: "finetune",
    summary: "Train the model on next-token cross-entropy.",
    build: |raw| Ok(Box::new(Finetune(parse_options(raw)?))),
};

/// Options of `finetune`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneOptions {
    pub train: TrainOptions,
}

pub struct Finetune(pub FinetuneOptions);

impl Pass for Finetune {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn check(&self) -> Result<(), String> {
        self.0.train.check()
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        self.0.train.plan(model)
    }

    fn rewrites(&self, model: &Model) -> Vec<String> {
        self.0.train.rewrites(model)
    }

    fn working_set(&self, model: &Model) -> Result<u64, String> {
        Ok(self.0.train.working_set(model, false))
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        self.0.train.files()
    }

    fn needs(&self) -> crate::Needs {
        self.0.train.needs()
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let fail = |message: String| PassError::Failed {
            pass: INFO.name,
            message,
        };
        let fingerprint = crate::checkpoint_fingerprint(cx.index, self);
        let prepared = self
            .0
            .train
            .prepare(Loss::CrossEntropy, cx, fingerprint)
            .map_err(fail)?;
        let stats = prepared
            .run(model, None, &self.0.train.params, cx, "fine-tuning")
            .map_err(fail)?;
        Ok(PassReport {
            changed: true,
            stats,
        })
    }
}
