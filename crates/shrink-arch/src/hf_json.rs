//! Typed reads of a Hugging Face `config.json`, each error naming the field it is about.

use serde_json::{Map, Value};

use crate::ConfigError;

type Result<T> = std::result::Result<T, ConfigError>;

/// A `config.json` object with typed accessors.
pub(crate) struct ConfigJson<'a> {
    pub(crate) json: &'a Map<String, Value>,
}

impl ConfigJson<'_> {
    pub(crate) fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    pub(crate) fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    /// A sliding window (`field`): absent or null is none; zero is refused.
    pub(crate) fn opt_window(&self, field: &str) -> Result<Option<usize>> {
        match self.opt_usize(field)? {
            Some(0) => Err(self.err(field, "a sliding window must span at least one position")),
            w => Ok(w),
        }
    }

    /// `layer_types`, one flag per layer: whether it is `sliding_attention` (else
    /// `full_attention`); `None` when absent or null.
    pub(crate) fn opt_layer_types(&self, layers: usize) -> Result<Option<Vec<bool>>> {
        match self.json.get("layer_types") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.len() == layers => items
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("full_attention") => Ok(false),
                    Some("sliding_attention") => Ok(true),
                    _ => Err(self.err(
                        "layer_types",
                        format!(
                            "element {i}: {t} is not supported (full_attention, \
                             sliding_attention)"
                        ),
                    )),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.err(
                "layer_types",
                format!("expected a list of {layers} layer types, got {v}"),
            )),
        }
    }

    /// A required size within `1..=max` ([`crate::limits`]).
    pub(crate) fn bounded(&self, field: &str, max: usize) -> Result<usize> {
        crate::limits::dim(field, self.usize(field)?, max).map_err(|m| self.err(field, m))
    }

    pub(crate) fn opt_f32(&self, field: &str) -> Result<Option<f32>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| self.err(field, format!("expected a number, got {v}"))),
        }
    }

    pub(crate) fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected true or false, got {v}"))),
        }
    }

    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a string, got {v}"))),
        }
    }

    /// A per-layer size: one integer for every layer, or a list of `layers` integers (configs
    /// of structurally pruned models). `None` when absent.
    pub(crate) fn opt_per_layer(&self, field: &str, layers: usize) -> Result<Option<Vec<usize>>> {
        match self.json.get(field) {
            Some(Value::Array(items)) => {
                if items.len() != layers {
                    return Err(self.err(
                        field,
                        format!(
                            "a list of {} sizes, but num_hidden_layers is {layers} (one size per \
                             layer)",
                            items.len()
                        ),
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_u64().map(|n| n as usize).ok_or_else(|| {
                            self.err(
                                field,
                                format!("element {i}: expected a non-negative integer, got {v}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            _ => Ok(self.opt_usize(field)?.map(|n| vec![n; layers])),
        }
    }

    fn token(&self, field: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.err(field, format!("expected a token id, got {v}")))
    }

    /// A token id that may be given as a list (several EOS ids): the first is taken.
    pub(crate) fn opt_token(&self, field: &str) -> Result<Option<u32>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => Ok(None),
                Some(v) => self.token(field, v).map(Some),
            },
            Some(v) => self.token(field, v).map(Some),
        }
    }
}

/// An f32 as the JSON number with the same shortest decimal form (1e-5 stays 1e-05, not
/// 9.999999747378752e-06), which reads back to the same f32.
pub(crate) fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// `layer_types` as transformers writes it, from one flag per layer (sliding or not).
pub(crate) fn layer_types_json(sliding: impl Iterator<Item = bool>) -> Value {
    let types: Vec<&str> = sliding
        .map(|s| {
            if s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    Value::from(types)
}

pub(crate) fn token_json(t: Option<u32>) -> Value {
    t.map_or(Value::Null, |t| serde_json::json!(t))
}
