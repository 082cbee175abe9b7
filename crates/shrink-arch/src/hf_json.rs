//! What the families' serde mirrors of a Hugging Face `config.json` share (RoPE objects, per-layer
//! sizes, token ids, layer types), and the reader whose errors name the field path.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::ConfigError;

type Result<T> = std::result::Result<T, ConfigError>;

/// The error for `field` (a path such as `rope_scaling.factor`).
pub(crate) fn field_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// A `config.json` object read into a family's serde mirror; an error names the path of the
/// field it is about (`rope_scaling.factor`, `layer_types[3]`).
pub(crate) fn read<'de, T: Deserialize<'de>>(json: &'de Map<String, Value>) -> Result<T> {
    read_at("", json)
}

/// [`read`] of the object at `prefix` (empty for the file itself).
pub(crate) fn read_at<'de, T: Deserialize<'de>>(
    prefix: &str,
    json: &'de Map<String, Value>,
) -> Result<T> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let mut path: Vec<String> = Vec::new();
        if !prefix.is_empty() {
            path.push(prefix.to_string());
        }
        let at = e.path().to_string();
        if at != "." {
            path.push(at);
        }
        let message = e.into_inner().to_string();
        // serde names a missing field in its message, at the path of the object that lacks it.
        match message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            Some(name) => {
                path.push(name.to_string());
                field_err(path.join("."), "missing")
            }
            None => field_err(path.join("."), message),
        }
    })
}

/// A size in `1..=max` ([`crate::limits`]), named `field` in the error.
pub(crate) fn bounded(field: &str, value: usize, max: usize) -> Result<usize> {
    crate::limits::dim(field, value, max).map_err(|m| field_err(field, m))
}

/// A sliding window (`field`): none, or at least one position.
pub(crate) fn window(field: &str, w: Option<usize>) -> Result<Option<usize>> {
    match w {
        Some(0) => Err(field_err(
            field,
            "a sliding window must span at least one position",
        )),
        w => Ok(w),
    }
}

/// One entry of `layer_types`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LayerType {
    FullAttention,
    SlidingAttention,
}

/// `layer_types` as one flag per layer (sliding or not), checked to have one entry per layer.
pub(crate) fn sliding_flags(types: &[LayerType], layers: usize) -> Result<Vec<bool>> {
    if types.len() != layers {
        return Err(field_err(
            "layer_types",
            format!(
                "a list of {} layer types, but num_hidden_layers is {layers}",
                types.len()
            ),
        ));
    }
    Ok(types
        .iter()
        .map(|t| *t == LayerType::SlidingAttention)
        .collect())
}

/// A size given once for every layer, or as a list with one per layer (configs of structurally
/// pruned models).
#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a non-negative integer, or a list of one per layer"
)]
pub(crate) enum PerLayer {
    One(usize),
    Each(Vec<usize>),
}

impl PerLayer {
    /// One size per layer; `field` names a list of the wrong length.
    pub(crate) fn per_layer(&self, field: &str, layers: usize) -> Result<Vec<usize>> {
        match self {
            PerLayer::One(n) => Ok(vec![*n; layers]),
            PerLayer::Each(v) if v.len() == layers => Ok(v.clone()),
            PerLayer::Each(v) => Err(field_err(
                field,
                format!(
                    "a list of {} sizes, but num_hidden_layers is {layers} (one size per layer)",
                    v.len()
                ),
            )),
        }
    }
}

/// A token id that may be given as a list (several EOS ids): the first is taken; null or an
/// empty list is none.
pub(crate) fn token_id<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a token id or a list of token ids")]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Ids>::deserialize(d)? {
        None => None,
        Some(Ids::One(t)) => Some(t),
        Some(Ids::Many(v)) => v.first().copied(),
    })
}

/// A field where null and absence mean different things: `None` absent, `Some(None)` null.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// One RoPE object of `config.json`: the Hub's `rope_scaling`, transformers 5's
/// `rope_parameters`, or one of its per-layer-type entries. Keys transformers ignores for the
/// types shrink computes are ignored.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RopeJson {
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type` (`rope_type` wins when both are given, as transformers'
    /// standardisation writes both).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rope_theta: Option<f32>,
    pub partial_rotary_factor: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub attention_factor: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
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
