//! `cast`: changes the storage dtype of parameters (f32 ↔ f16/bf16). Compute stays f32; this
//! halves the bytes of what it selects.

use serde::{Deserialize, Serialize};
use shrink_ir::{DType, Model, TensorData};

use crate::{canonical_ron, parse_options, Pass, PassContext, PassError, PassInfo, PassReport};

pub const INFO: PassInfo = PassInfo {
    name: "cast",
    summary: "Store the selected parameters as f32, f16 or bf16.",
    build: |raw| Ok(Box::new(Cast(parse_options(raw)?))),
};

/// Target storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CastTo {
    F32,
    F16,
    Bf16,
}

impl CastTo {
    fn dtype(self) -> DType {
        match self {
            CastTo::F32 => DType::F32,
            CastTo::F16 => DType::F16,
            CastTo::Bf16 => DType::BF16,
        }
    }
}

/// Options of `cast`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CastOptions {
    /// Parameters matching any of these are left alone.
    pub exclude: Vec<String>,
    /// Parameters to cast, by name pattern.
    pub include: Vec<String>,
    pub to: CastTo,
    /// Also cast 1-D parameters (norm weights, biases). Off by default: llama.cpp and most
    /// tools keep them f32, and they are a tiny share of the bytes.
    pub vectors: bool,
}

impl Default for CastOptions {
    fn default() -> Self {
        CastOptions {
            exclude: Vec::new(),
            include: vec!["*".into()],
            to: CastTo::F16,
            vectors: false,
        }
    }
}

pub struct Cast(pub CastOptions);

impl Cast {
    /// The parameters the pass rewrites.
    fn selected(&self, model: &Model) -> Vec<String> {
        let o = &self.0;
        let patterns = crate::Patterns {
            include: o.include.clone(),
            exclude: o.exclude.clone(),
        };
        let to = o.to.dtype();
        model
            .graph
            .params()
            .iter()
            .filter(|(name, ty)| {
                patterns.selects(name)
                    && ty.dtype.is_float()
                    && ty.dtype != to
                    && (o.vectors || ty.shape.len() >= 2)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Pass for Cast {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn options(&self) -> String {
        canonical_ron(&self.0)
    }

    fn plan(&self, model: &mut Model) -> Result<(), String> {
        let to = self.0.to.dtype();
        for name in self.selected(model) {
            if let Some(p) = model.graph.param_mut(&name) {
                p.dtype = to;
            }
        }
        Ok(())
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext<'_>) -> Result<PassReport, PassError> {
        let to = self.0.to.dtype();
        let names = self.selected(model);
        let before = model.size().bytes;
        for name in &names {
            let Some(data) = model.weights.get(name) else {
                continue;
            };
            let values = data.to_f32();
            let cast = TensorData::from_f32(to, data.ty.shape.clone(), &values).map_err(|m| {
                PassError::Failed {
                    pass: INFO.name,
                    message: format!("'{name}': {m}"),
                }
            })?;
            if let Some(p) = model.graph.param_mut(name) {
                *p = cast.ty.clone();
            }
            model.weights.insert(name.clone(), cast);
        }
        let after = model.size().bytes;
        let mut report = PassReport {
            changed: !names.is_empty(),
            ..Default::default()
        };
        report
            .stats
            .insert("params_cast".into(), names.len().into());
        report.stats.insert("bytes_before".into(), before.into());
        report.stats.insert("bytes_after".into(), after.into());
        Ok(report)
    }
}
