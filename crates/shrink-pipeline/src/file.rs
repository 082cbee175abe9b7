//! Pipeline files (RON): the model, the passes in order with their options, an optional
//! evaluation and an optional output. Every error names the file, line and column.
//!
//! ```ron
//! (
//!     model: "../models/SmolLM2-135M-Instruct.Q4_1.gguf",   // optional: `--model` overrides
//!     passes: [
//!         (pass: "cast", options: (to: f16)),
//!         (pass: "dead-code"),
//!     ],
//!     eval: (data: "../data/wikitext-2/test.txt", ctx: 512, chunks: 20, score: "second-half"),
//!     // eval: (..., every_pass: true) also scores the input and the model after every pass
//!     output: "out.gguf",                                    // optional: `--out` overrides
//!     output_format: "gguf",      // optional: "gguf", "hf" or "peft-adapter" (default: by extension)
//!     seed: 0,
//! )
//! ```
//! Paths in a pipeline are relative to the pipeline file's directory.

use std::fmt;
use std::path::{Path, PathBuf};

use ron::extensions::Extensions;
use ron::value::RawValue;
use serde::Deserialize;
use shrink_passes::{Effect, Needs, Pass, Registry};
use shrink_runtime::Scoring;

/// An error in a pipeline file, at a position where one is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PipelineError {
    pub path: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Evaluation after the last pass.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSpec {
    pub data: PathBuf,
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub scoring: Scoring,
    /// Also evaluate the input and the model after every pass (the report's `ppl` per row).
    pub every_pass: bool,
}

/// What the output is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OutputFormat {
    /// A GGUF file (llama.cpp).
    Gguf,
    /// A Hugging Face model directory.
    Hf,
    /// The model's LoRA adapters alone, as a PEFT adapter directory.
    PeftAdapter,
}

impl TryFrom<String> for OutputFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        [
            OutputFormat::Gguf,
            OutputFormat::Hf,
            OutputFormat::PeftAdapter,
        ]
        .into_iter()
        .find(|f| f.name() == s)
        .ok_or_else(|| {
            format!("unknown output_format '{s}', expected \"gguf\", \"hf\" or \"peft-adapter\"")
        })
    }
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Gguf => "gguf",
            OutputFormat::Hf => "hf",
            OutputFormat::PeftAdapter => "peft-adapter",
        }
    }
}

/// One pass of a pipeline, built, with where it was written.
pub struct PassEntry {
    pub pass: Box<dyn Pass>,
    pub position: (usize, usize),
}

/// A parsed, checked pipeline.
pub struct Pipeline {
    pub path: PathBuf,
    pub model: Option<PathBuf>,
    pub passes: Vec<PassEntry>,
    pub eval: Option<EvalSpec>,
    pub output: Option<PathBuf>,
    /// `None`: a `.gguf` output is GGUF, any other a Hugging Face directory.
    pub output_format: Option<OutputFormat>,
    pub seed: u64,
    /// Positions of the file-naming fields, for errors found later (a missing file).
    pub model_position: Option<(usize, usize)>,
    pub eval_data_position: Option<(usize, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline<'a> {
    #[serde(default)]
    model: Option<String>,
    #[serde(borrow)]
    passes: Vec<RawEntry<'a>>,
    #[serde(default)]
    eval: Option<RawEval>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    output_format: Option<OutputFormat>,
    #[serde(default)]
    seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry<'a> {
    pass: String,
    #[serde(borrow, default)]
    options: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval {
    data: String,
    #[serde(default = "default_ctx")]
    ctx: usize,
    #[serde(default)]
    chunks: Option<usize>,
    #[serde(default)]
    every_pass: bool,
    #[serde(default)]
    score: ScoreName,
}

fn default_ctx() -> usize {
    512
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(try_from = "String")]
struct ScoreName(Option<Scoring>);

impl TryFrom<String> for ScoreName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "all" => Ok(ScoreName(Some(Scoring::All))),
            "second-half" => Ok(ScoreName(Some(Scoring::SecondHalf))),
            other => Err(format!(
                "unknown score '{other}', expected \"all\" or \"second-half\""
            )),
        }
    }
}

fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME)
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Offset of the first `key:` (outside strings and comments) at or after `from`.
fn find_key(text: &str, from: usize, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {
                let prev_ok =
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                if prev_ok && text[i..].starts_with(key) {
                    let rest = text[i + key.len()..].trim_start();
                    let next = bytes.get(i + key.len()).copied().unwrap_or(b' ');
                    if rest.starts_with(':') && !(next.is_ascii_alphanumeric() || next == b'_') {
                        return Some(i);
                    }
                }
                i += 1;
            }
        }
    }
    None
}

/// Offset of the value after `key:` found at `key_at`.
fn value_after(text: &str, key_at: usize) -> usize {
    let colon = text[key_at..].find(':').map_or(key_at, |c| key_at + c + 1);
    colon + (text[colon..].len() - text[colon..].trim_start().len())
}

impl Pipeline {
    /// Reads and checks a pipeline file: syntax, pass names and options. Files it names are
    /// checked by [`Pipeline::check_files`].
    pub fn from_file(path: &Path, registry: &Registry) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError {
            path: path.to_path_buf(),
            position: None,
            message: format!("cannot read the pipeline: {e}"),
        })?;
        Pipeline::parse(path, &text, registry)
    }

    /// Parses pipeline text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Pipeline, PipelineError> {
        let err = |position: Option<(usize, usize)>, message: String| PipelineError {
            path: path.to_path_buf(),
            position,
            message,
        };
        let raw: RawPipeline = ron_options()
            .from_str(text)
            .map_err(|e| err(Some((e.position.line, e.position.col)), e.code.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut passes = Vec::with_capacity(raw.passes.len());
        let mut search_from = 0;
        // For the ordering checks: the pass that quantized the weights, whether adapters are on.
        let mut quantized_at: Option<(usize, usize)> = None;
        let mut adapters = false;
        for entry in &raw.passes {
            let at = find_key(text, search_from, "pass").unwrap_or(search_from);
            search_from = at + 4;
            let name_at = value_after(text, at);
            let info = registry.get(&entry.pass).ok_or_else(|| {
                let known: Vec<&str> = registry.iter().map(|p| p.name).collect();
                err(
                    Some(line_col(text, name_at)),
                    format!(
                        "unknown pass '{}' (known: {})",
                        entry.pass,
                        known.join(", ")
                    ),
                )
            })?;
            let pass = (info.build)(entry.options).map_err(|e| {
                // Positions inside the options are relative to where they start in the file.
                let start = entry.options.map_or(name_at, |o| {
                    o.get_ron().as_ptr() as usize - text.as_ptr() as usize
                });
                let (sl, sc) = line_col(text, start);
                let (l, c) = (e.position.line, e.position.col);
                let pos = if l <= 1 {
                    (sl, sc + c.saturating_sub(1))
                } else {
                    (sl + l - 1, c)
                };
                err(Some(pos), format!("pass '{}': {}", entry.pass, e.code))
            })?;
            pass.check().map_err(|m| {
                err(
                    Some(line_col(text, name_at)),
                    format!("pass '{}': {m}", entry.pass),
                )
            })?;
            if let Some(wanted) = pass.model_before() {
                if !passes.iter().any(|p: &PassEntry| p.pass.name() == wanted) {
                    return Err(err(
                        Some(line_col(text, name_at)),
                        format!(
                            "pass '{}' reads the model before pass '{wanted}', and no pass '{wanted}' comes before it",
                            entry.pass
                        ),
                    ));
                }
            }
            let order_err = |why: String| {
                err(
                    Some(line_col(text, name_at)),
                    format!("pass '{}': {why}", entry.pass),
                )
            };
            match (pass.needs(), quantized_at) {
                (Needs::DenseWeights, Some((l, c))) => {
                    return Err(order_err(format!(
                        "it rewrites weights in f32, but the 'quantize' pass at {l}:{c} quantized them \
                         before it: its output would be widened back to f32; put it before 'quantize'"
                    )))
                }
                (Needs::DenseWeightsOrAdapters, Some((l, c))) if !adapters => {
                    return Err(order_err(format!(
                        "it would train the weights that the 'quantize' pass at {l}:{c} quantized, \
                         widening them back to f32; train before quantizing, train only their scales \
                         (`train: (quantized: scales)`), or attach LoRA adapters first (a 'lora' \
                         pass: QLoRA trains them alone)"
                    )))
                }
                _ => {}
            }
            match pass.effect() {
                Some(Effect::Quantizes) => quantized_at = Some(line_col(text, at)),
                Some(Effect::AttachesAdapters) => adapters = true,
                Some(Effect::FoldsAdapters) => adapters = false,
                None => {}
            }
            let attaches = |p: &PassEntry| p.pass.effect() == Some(Effect::AttachesAdapters);
            if pass.effect() == Some(Effect::FoldsAdapters) && !passes.iter().any(attaches) {
                return Err(err(
                    Some(line_col(text, name_at)),
                    "pass 'lora-fold' has no adapters to fold: no 'lora' pass comes before it"
                        .into(),
                ));
            }
            passes.push(PassEntry {
                pass,
                position: line_col(text, at),
            });
        }
        let model_position =
            find_key(text, 0, "model").map(|k| line_col(text, value_after(text, k)));
        let eval_data_position = find_key(text, 0, "eval")
            .and_then(|e| find_key(text, e, "data"))
            .map(|k| line_col(text, value_after(text, k)));
        let eval = match raw.eval {
            None => None,
            Some(e) => {
                if e.ctx < 2 {
                    let at = find_key(text, 0, "ctx").map(|k| line_col(text, value_after(text, k)));
                    return Err(err(
                        at,
                        format!("eval ctx must be at least 2, got {}", e.ctx),
                    ));
                }
                if e.chunks == Some(0) {
                    let at =
                        find_key(text, 0, "chunks").map(|k| line_col(text, value_after(text, k)));
                    return Err(err(at, "eval chunks must be at least 1".into()));
                }
                Some(EvalSpec {
                    data: base.join(e.data),
                    ctx: e.ctx,
                    chunks: e.chunks,
                    every_pass: e.every_pass,
                    scoring: e.score.0.unwrap_or(Scoring::All),
                })
            }
        };
        Ok(Pipeline {
            path: path.to_path_buf(),
            model: raw.model.map(|m| base.join(m)),
            passes,
            eval,
            output: raw.output.map(|o| base.join(o)),
            output_format: raw.output_format,
            seed: raw.seed,
            model_position,
            eval_data_position,
        })
    }

    /// Checks that every file the pipeline reads exists, before any pass runs. `model` is the
    /// model to use (the pipeline's, or the command line's when it overrides).
    pub fn check_files(&self, model: Option<&Path>) -> Result<(), PipelineError> {
        let missing = |p: &Path, position, what: &str| PipelineError {
            path: self.path.clone(),
            position,
            message: format!("{what} '{}' does not exist", p.display()),
        };
        match model {
            Some(m) if !m.exists() => {
                // Only a model the pipeline names has a position in it.
                let pos = if self.model.as_deref() == Some(m) {
                    self.model_position
                } else {
                    None
                };
                return Err(missing(m, pos, "model"));
            }
            None => {
                return Err(PipelineError {
                    path: self.path.clone(),
                    position: None,
                    message: "no model: give `model:` in the pipeline or --model".into(),
                })
            }
            _ => {}
        }
        if let Some(e) = &self.eval {
            if !e.data.is_file() {
                return Err(missing(&e.data, self.eval_data_position, "eval data file"));
            }
        }
        let base = self.path.parent().unwrap_or(Path::new(""));
        for e in &self.passes {
            for (field, rel) in e.pass.files() {
                let p = base.join(&rel);
                if !p.exists() {
                    return Err(missing(
                        &p,
                        Some(e.position),
                        &format!("pass '{}': {field}", e.pass.name()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the model leaves the last pass with LoRA adapters attached (a `lora` pass with
    /// no `lora-fold` after it).
    pub fn leaves_adapters(&self) -> bool {
        self.passes
            .iter()
            .rev()
            .filter_map(|e| e.pass.effect())
            .find(|e| matches!(e, Effect::AttachesAdapters | Effect::FoldsAdapters))
            == Some(Effect::AttachesAdapters)
    }

    /// How `out` is written: the pipeline's `output_format`, else by extension.
    pub fn output_format_for(&self, out: &Path) -> OutputFormat {
        self.output_format.unwrap_or(
            if out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                OutputFormat::Gguf
            } else {
                OutputFormat::Hf
            },
        )
    }

    /// The pipeline in canonical form: every option explicit, options sorted, paths as given
    /// relative to the file. Two pipelines compare by this text.
    pub fn canonical(&self) -> String {
        let base = self.path.parent().unwrap_or(Path::new(""));
        let rel = |p: &Path| -> String {
            let s = p.strip_prefix(base).unwrap_or(p).display().to_string();
            format!("{s:?}")
        };
        let mut s = String::from("(\n");
        if let Some(m) = &self.model {
            s += &format!("    model: {},\n", rel(m));
        }
        s += "    passes: [\n";
        for e in &self.passes {
            s += &format!(
                "        (pass: {:?}, options: {}),\n",
                e.pass.name(),
                e.pass.options()
            );
        }
        s += "    ],\n";
        if let Some(e) = &self.eval {
            let score = match e.scoring {
                Scoring::All => "all",
                Scoring::SecondHalf => "second-half",
            };
            let chunks = e.chunks.map_or(String::new(), |c| format!("chunks: {c}, "));
            let chunks = if e.every_pass {
                format!("{chunks}every_pass: true, ")
            } else {
                chunks
            };
            s += &format!(
                "    eval: ({chunks}ctx: {}, data: {}, score: {score:?}),\n",
                e.ctx,
                rel(&e.data)
            );
        }
        if let Some(o) = &self.output {
            s += &format!("    output: {},\n", rel(o));
        }
        if let Some(f) = self.output_format {
            s += &format!("    output_format: {:?},\n", f.name());
        }
        s += &format!("    seed: {},\n)\n", self.seed);
        s
    }
}
