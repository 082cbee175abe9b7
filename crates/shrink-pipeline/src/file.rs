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
        // A message quotes the file's text, which may hold line breaks: one line regardless.
        let message = self.message.replace('\r', "\\r").replace('\n', "\\n");
        match self.position {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {message}", self.path.display()),
            None => write!(f, "{}: {message}", self.path.display()),
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

// Fields whose position an error may need are kept as ron's raw text (a slice of the file, so
// its offset is its position) and parsed in a second step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    passes: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    eval: Option<&'a RawValue>,
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
    #[serde(borrow)]
    pass: &'a RawValue,
    #[serde(borrow, default)]
    options: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    ctx: Option<&'a RawValue>,
    #[serde(borrow, default)]
    chunks: Option<&'a RawValue>,
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

/// Line and column (1-based; the column in characters, as ron counts) of byte `offset` in
/// `text`, which must lie on a character boundary.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The pipeline text, for positions of ron's raw values (slices of it).
struct Source<'t> {
    text: &'t str,
}

impl Source<'_> {
    /// Byte offset of a raw value's text in the file.
    fn offset(&self, raw: &RawValue) -> usize {
        let at = raw.get_ron().as_ptr() as usize;
        at.saturating_sub(self.text.as_ptr() as usize)
            .min(self.text.len())
    }

    /// Where the value itself starts (after any whitespace and comments before it).
    fn at(&self, raw: &RawValue) -> (usize, usize) {
        line_col(self.text, self.offset(raw.trim()))
    }

    /// A position ron reports inside `raw`, as a position in the file.
    fn inside(&self, raw: &RawValue, pos: ron::error::Position) -> (usize, usize) {
        let (sl, sc) = line_col(self.text, self.offset(raw));
        if pos.line <= 1 {
            (sl, sc + pos.col.saturating_sub(1))
        } else {
            (sl + pos.line - 1, pos.col)
        }
    }

    /// Parses a raw value with the pipeline's ron options.
    fn parse<'de, T: Deserialize<'de>>(
        &self,
        raw: &'de RawValue,
    ) -> Result<T, ((usize, usize), String)> {
        ron_options()
            .from_str(raw.get_ron())
            .map_err(|e| (self.inside(raw, e.position), e.code.to_string()))
    }
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
        let src = Source { text };
        let parsed = |r: ((usize, usize), String)| err(Some(r.0), r.1);
        let base = path.parent().unwrap_or(Path::new(""));
        let mut passes = Vec::with_capacity(raw.passes.len());
        // For the ordering checks: the pass that quantized the weights, whether adapters are on.
        let mut quantized_at: Option<(usize, usize)> = None;
        let mut adapters = false;
        for entry_raw in &raw.passes {
            let at = src.at(entry_raw);
            let entry: RawEntry = src.parse(entry_raw).map_err(parsed)?;
            let name: String = src.parse(entry.pass).map_err(parsed)?;
            let name_at = Some(src.at(entry.pass));
            let info = registry.get(&name).ok_or_else(|| {
                let known: Vec<&str> = registry.iter().map(|p| p.name).collect();
                err(
                    name_at,
                    format!("unknown pass '{name}' (known: {})", known.join(", ")),
                )
            })?;
            let pass = (info.build)(entry.options).map_err(|e| {
                // Positions inside the options are relative to where they start in the file.
                let pos = entry
                    .options
                    .map_or(name_at, |o| Some(src.inside(o, e.position)));
                err(pos, format!("pass '{name}': {}", e.code))
            })?;
            pass.check()
                .map_err(|m| err(name_at, format!("pass '{name}': {m}")))?;
            if let Some(wanted) = pass.model_before() {
                if !passes.iter().any(|p: &PassEntry| p.pass.name() == wanted) {
                    return Err(err(
                        name_at,
                        format!(
                            "pass '{name}' reads the model before pass '{wanted}', and no pass '{wanted}' comes before it"
                        ),
                    ));
                }
            }
            let order_err = |why: String| err(name_at, format!("pass '{name}': {why}"));
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
                Some(Effect::Quantizes) => quantized_at = Some(at),
                Some(Effect::AttachesAdapters) => adapters = true,
                Some(Effect::FoldsAdapters) => adapters = false,
                None => {}
            }
            let attaches = |p: &PassEntry| p.pass.effect() == Some(Effect::AttachesAdapters);
            if pass.effect() == Some(Effect::FoldsAdapters) && !passes.iter().any(attaches) {
                return Err(err(
                    name_at,
                    "pass 'lora-fold' has no adapters to fold: no 'lora' pass comes before it"
                        .into(),
                ));
            }
            passes.push(PassEntry { pass, position: at });
        }
        let model: Option<String> = raw
            .model
            .map(|m| src.parse(m))
            .transpose()
            .map_err(parsed)?;
        let model_position = raw.model.map(|m| src.at(m));
        let mut eval_data_position = None;
        let eval = match raw.eval {
            None => None,
            Some(eval_raw) => {
                let e: RawEval = src.parse(eval_raw).map_err(parsed)?;
                let data: String = src.parse(e.data).map_err(parsed)?;
                eval_data_position = Some(src.at(e.data));
                let ctx: usize = match e.ctx {
                    Some(r) => src.parse(r).map_err(parsed)?,
                    None => default_ctx(),
                };
                if ctx < 2 {
                    return Err(err(
                        e.ctx.map(|r| src.at(r)),
                        format!("eval ctx must be at least 2, got {ctx}"),
                    ));
                }
                let chunks: Option<usize> = match e.chunks {
                    Some(r) => src.parse(r).map_err(parsed)?,
                    None => None,
                };
                if chunks == Some(0) {
                    return Err(err(
                        e.chunks.map(|r| src.at(r)),
                        "eval chunks must be at least 1".into(),
                    ));
                }
                Some(EvalSpec {
                    data: base.join(data),
                    ctx,
                    chunks,
                    every_pass: e.every_pass,
                    scoring: e.score.0.unwrap_or(Scoring::All),
                })
            }
        };
        Ok(Pipeline {
            path: path.to_path_buf(),
            model: model.map(|m| base.join(m)),
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

    /// The files the pipeline reads besides its model: the eval data and the passes' files,
    /// each with what it is.
    pub fn inputs(&self) -> Vec<(&'static str, PathBuf)> {
        let base = self.path.parent().unwrap_or(Path::new(""));
        let mut out: Vec<(&'static str, PathBuf)> = Vec::new();
        if let Some(e) = &self.eval {
            out.push(("the eval data file", e.data.clone()));
        }
        for e in &self.passes {
            for (field, rel) in e.pass.files() {
                out.push((field, base.join(&rel)));
            }
        }
        out
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
