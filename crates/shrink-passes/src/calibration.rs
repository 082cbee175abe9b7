//! Calibration data: sequences of tokens drawn from a text file, shared by the passes that
//! calibrate on activations (GPTQ, AWQ, Wanda, SparseGPT).

use std::path::Path;

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use shrink_formats::Tokenizer;

/// Where calibration sequences come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationOptions {
    /// A UTF-8 text file, relative to the pipeline file, or a list read in order as one
    /// text. Never the evaluation text.
    pub data: Option<TextFiles>,
    /// Number of sequences.
    pub samples: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        CalibrationOptions {
            data: None,
            samples: 64,
            seq_len: 512,
        }
    }
}

impl CalibrationOptions {
    /// The file it reads, for [`crate::Pass::files`].
    pub fn files(&self) -> Vec<(&'static str, String)> {
        self.data
            .iter()
            .flat_map(|d| d.paths())
            .map(|d| ("calibration.data", d.to_string()))
            .collect()
    }

    /// `samples` windows of `seq_len` tokens at seeded random offsets of the tokenized file
    /// (as GPTQ draws from WikiText-2).
    pub fn sequences(
        &self,
        base_dir: &Path,
        tokenizer: Option<&Tokenizer>,
        rng: &mut StdRng,
    ) -> Result<Vec<Vec<u32>>, String> {
        let data = self.data.as_ref().filter(|d| !d.is_empty()).ok_or(
            "calibration.data is not set: name a text file to draw calibration sequences from",
        )?;
        if self.samples == 0 || self.seq_len < 2 {
            return Err(format!(
                "calibration needs samples ≥ 1 and seq_len ≥ 2 (got {} and {})",
                self.samples, self.seq_len
            ));
        }
        let ids = data.tokens(base_dir, tokenizer, "calibration.data", "calibration")?;
        if ids.len() < self.seq_len {
            return Err(format!(
                "calibration.data {data} has {} tokens, fewer than one sequence of seq_len {}",
                ids.len(),
                self.seq_len
            ));
        }
        let last = ids.len() - self.seq_len;
        Ok((0..self.samples)
            .map(|_| {
                let at = rng.random_range(0..=last);
                ids[at..at + self.seq_len].to_vec()
            })
            .collect())
    }
}

/// Bytes a calibrated pass holds beside the stored weights, predicted from shapes: the
/// calibration run's working set ([`shrink_runtime::calibrate::working_set`]) with the pass's
/// own bytes per site, `site_bytes(features, rows, tokens)` (f64: no size overflows).
pub(crate) fn working_set(
    model: &shrink_ir::Model,
    o: &CalibrationOptions,
    wants: &dyn Fn(&str) -> bool,
    reference: bool,
    site_bytes: &dyn Fn(f64, f64, f64) -> f64,
) -> Result<u64, String> {
    let tokens = o.samples as f64 * o.seq_len as f64;
    let plan = shrink_runtime::calibrate::Plan {
        sequences: o.samples,
        seq_len: o.seq_len,
        wants,
        reference,
        site_bytes: &|f, rows| site_bytes(f, rows, tokens),
    };
    shrink_runtime::calibrate::working_set(model, &plan).map_err(|e| e.to_string())
}

/// One text file, or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextFiles {
    One(String),
    Many(Vec<String>),
}

impl TextFiles {
    pub fn paths(&self) -> Vec<&str> {
        match self {
            TextFiles::One(p) => vec![p.as_str()],
            TextFiles::Many(ps) => ps.iter().map(String::as_str).collect(),
        }
    }

    /// Whether the option names no file at all (`[]`).
    pub fn is_empty(&self) -> bool {
        self.paths().is_empty()
    }

    /// The tokens of every file, in order, as one stream (paths relative to `base_dir`).
    pub(crate) fn tokens(
        &self,
        base_dir: &Path,
        tokenizer: Option<&Tokenizer>,
        field: &str,
        purpose: &str,
    ) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        for p in self.paths() {
            ids.extend(tokenize_file(&base_dir.join(p), tokenizer, field, purpose)?);
        }
        Ok(ids)
    }
}

impl std::fmt::Display for TextFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.paths().join(" + "))
    }
}

/// The tokens of a UTF-8 text file. `field` names the option that gave the file, `purpose`
/// what needs the tokenizer, in errors.
pub(crate) fn tokenize_file(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    field: &str,
    purpose: &str,
) -> Result<Vec<u32>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{field} {}: {e}", path.display()))?;
    let mut tok = tokenizer
        .cloned()
        .ok_or_else(|| format!("{purpose} needs the model's tokenizer, and this model has none"))?;
    tok.encode(&text, false)
        .map_err(|e| format!("tokenizing {}: {e}", path.display()))
}
