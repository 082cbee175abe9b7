//! A whole run: load the model, run the passes, evaluate, export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use shrink_passes::ProgressSink;
use shrink_runtime::{Device, Engine, PerplexityOptions};

use crate::file::{OutputFormat, Pipeline};
use crate::manager::{run_passes, Instrumentation, ManagerError, PassRecord, RunContext};

/// Command-line overrides and settings of a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub model: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub device: Device,
    /// A training checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Bytes a run may predict it needs ([`MemoryRow::peak`]); `None`: no check.
    pub memory_limit: Option<u64>,
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b => format!("{:.1} MB", b as f64 / 1e6),
    }
}

/// The evaluation part of a run report (the `eval --json` fields).
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub ppl: f64,
    pub tokens_scored: u64,
    pub tokens_in_file: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub device: String,
}

/// The `run --json` report.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    /// Size of the model as loaded, before any pass.
    pub input: InputRecord,
    pub passes: Vec<PassRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalRecord>,
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InputRecord {
    pub model: String,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub sparsity: f64,
    /// Perplexity of the input, when the pipeline evaluates after every pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pipeline(#[from] crate::file::PipelineError),
    #[error(transparent)]
    Import(#[from] shrink_import::ImportError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("evaluation: {0}")]
    Eval(String),
    #[error(transparent)]
    Export(#[from] shrink_export::ExportError),
    #[error("plan: {0}")]
    Plan(String),
    #[error("output {0}")]
    Output(String),
    #[error("--resume {path}: {message}")]
    Resume { path: String, message: String },
}

/// Refuses to write a model with LoRA adapters as a plain model, or adapters that are not
/// there as a PEFT adapter.
fn check_output(format: OutputFormat, adapters: bool, out: &Path) -> Result<(), RunError> {
    let message = match (format, adapters) {
        (OutputFormat::PeftAdapter, false) => "output_format \"peft-adapter\" but the model has \
            no LoRA adapters when the passes end (add a `lora` pass, and no `lora-fold` after it)"
            .to_string(),
        (OutputFormat::Gguf | OutputFormat::Hf, true) => format!(
            "the model still carries LoRA adapters when the passes end, which a {} model cannot \
             hold: fold them into the weights (pass lora-fold) or write them alone \
             (output_format: \"peft-adapter\")",
            format.name()
        ),
        _ => return Ok(()),
    };
    Err(RunError::Output(format!("{}: {message}", out.display())))
}

/// A path made absolute through every symlink; for a path that does not exist yet, its parent
/// resolved and the name appended.
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            resolve(parent).join(name)
        }
        _ => p.to_path_buf(),
    }
}

/// Refuses an output that would overwrite a file the run reads: the model (the same file or
/// directory, or a directory holding it), the pipeline, or a data file it names. Checked
/// before anything runs.
pub fn check_output_paths(p: &Pipeline, opts: &RunOptions) -> Result<(), RunError> {
    let Some(out) = opts.out.as_ref().or(p.output.as_ref()) else {
        return Ok(());
    };
    let target = resolve(out);
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    if let Some(m) = model_path(p, opts) {
        inputs.push(("the input model".into(), m));
    }
    inputs.push(("the pipeline file".into(), p.path.clone()));
    inputs.extend(
        p.inputs()
            .into_iter()
            .map(|(what, path)| (what.to_string(), path)),
    );
    for (what, input) in inputs {
        let input_at = resolve(&input);
        let how = if input_at == target {
            "is"
        } else if input_at.starts_with(&target) {
            "would replace a directory holding"
        } else {
            continue;
        };
        return Err(RunError::Output(format!(
            "{}: {how} {what} ({}), which the run reads; write the output elsewhere",
            out.display(),
            input_at.display()
        )));
    }
    Ok(())
}

/// Checks that a checkpoint given to `--resume` was written by one of the pipeline's passes
/// as it is now (same position, pass and options), before anything runs.
pub fn check_resume(p: &Pipeline, checkpoint: &Path) -> Result<(), RunError> {
    let bad = |message: String| RunError::Resume {
        path: checkpoint.display().to_string(),
        message,
    };
    let written = shrink_runtime::train::checkpoint_fingerprint(checkpoint)
        .map_err(|e| bad(e.to_string()))?;
    let ours = p
        .passes
        .iter()
        .enumerate()
        .any(|(i, e)| shrink_passes::checkpoint_fingerprint(i, e.pass.as_ref()) == written);
    if ours {
        Ok(())
    } else {
        Err(bad(format!(
            "it was written by `{written}`, which is no pass of this pipeline as it stands"
        )))
    }
}

/// Perplexity of `engine` on `text` (read from `data`, which names it in errors), timed, as
/// the `eval --json` record; also the number of chunks scored. Shared by `shrink eval` and
/// pipeline evaluations.
pub fn evaluate(
    engine: &Engine,
    tokenizer: &mut shrink_formats::Tokenizer,
    data: &Path,
    text: &str,
    opts: PerplexityOptions,
    progress: &mut dyn ProgressSink,
) -> Result<(EvalRecord, usize), String> {
    progress.start(&format!("tokenizing {}", data.display()), 0);
    let tokens = tokenizer.encode(text, false);
    progress.finish();
    let tokens = tokens.map_err(|m| format!("{}: tokenizing: {m}", data.display()))?;
    let start = Instant::now();
    let r = shrink_passes::perplexity_with_progress(engine, &tokens, opts, "perplexity", progress);
    let r = r.map_err(|err| format!("{}: evaluating: {err}", data.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let record = EvalRecord {
        ppl: r.ppl,
        tokens_scored: r.tokens_scored,
        tokens_in_file: tokens.len() as u64,
        seconds,
        // Every token run through the model, scored or not.
        tokens_per_second: (r.chunks * opts.ctx) as f64 / seconds.max(1e-9),
        device: engine.device().to_string(),
    };
    Ok((record, r.chunks))
}

/// The model a run uses: the command line's, else the pipeline's.
pub fn model_path(p: &Pipeline, opts: &RunOptions) -> Option<PathBuf> {
    opts.model.clone().or_else(|| p.model.clone())
}

/// Runs a checked pipeline. `hooks` see every pass; `progress` shows long work.
pub fn run(
    p: &Pipeline,
    opts: &RunOptions,
    hooks: &mut [&mut dyn Instrumentation],
    progress: &mut dyn ProgressSink,
) -> Result<RunReport, RunError> {
    let model_path = model_path(p, opts);
    p.check_files(model_path.as_deref())?;
    if let Some(c) = &opts.resume {
        check_resume(p, c)?;
    }
    // Before any pass runs: an output that would overwrite an input, or cannot hold what the
    // passes leave.
    check_output_paths(p, opts)?;
    if let Some(out) = opts.out.as_ref().or(p.output.as_ref()) {
        check_output(p.output_format_for(out), p.leaves_adapters(), out)?;
    }
    let model_path = model_path.unwrap_or_default();
    progress.start(&format!("loading {}", model_path.display()), 0);
    let loaded = shrink_import::load(&model_path);
    progress.finish();
    let loaded = loaded?;
    // Before any pass runs: what the model's shapes and types alone refuse (the dry run's plan).
    check_plan(p, &loaded.model, opts.memory_limit)?;
    let original = loaded.model.clone();
    let mut model = loaded.model;
    let size = model.size();
    let mut tokenizer = loaded.tokenizer;
    // With `every_pass`: the evaluation text tokenized once, scored after every pass.
    let every = match &p.eval {
        Some(e) if e.every_pass => {
            let text = std::fs::read_to_string(&e.data)
                .map_err(|err| RunError::Eval(format!("{}: {err}", e.data.display())))?;
            let tok = tokenizer
                .as_mut()
                .ok_or_else(|| RunError::Eval("the model has no tokenizer".into()))?;
            let tokens = tok
                .encode(&text, false)
                .map_err(|m| RunError::Eval(format!("{}: tokenizing: {m}", e.data.display())))?;
            let popts = PerplexityOptions {
                ctx: e.ctx,
                chunks: e.chunks,
                scoring: e.scoring,
            };
            Some((tokens, popts))
        }
        _ => None,
    };
    let device = opts.device;
    let mut score =
        |m: &shrink_ir::Model, progress: &mut dyn ProgressSink| -> Result<f64, String> {
            let Some((tokens, popts)) = &every else {
                return Err("no evaluation".into());
            };
            let engine = Engine::new(m, device).map_err(|e| e.to_string())?;
            shrink_passes::perplexity_with_progress(&engine, tokens, *popts, "perplexity", progress)
                .map(|r| r.ppl)
                .map_err(|e| e.to_string())
        };
    let input_ppl = match every {
        Some(_) => Some(score(&model, progress).map_err(RunError::Eval)?),
        None => None,
    };
    let input = InputRecord {
        model: model_path.display().to_string(),
        params: size.params,
        bytes: size.bytes,
        bits_per_weight: size.bits_per_weight(),
        sparsity: size.sparsity(),
        ppl: input_ppl,
    };
    let base = p.path.parent().unwrap_or(Path::new("")).to_path_buf();
    // A model file a pass names (a distillation teacher): the same front ends as the input.
    let load_teacher = |path: &Path| -> Result<shrink_ir::Model, String> {
        shrink_import::load(path)
            .map(|l| l.model)
            .map_err(|e| e.to_string())
    };
    let passes = {
        let evaluate: Option<crate::manager::Evaluate<'_>> = if input_ppl.is_some() {
            Some(&mut score)
        } else {
            None
        };
        let mut rc = RunContext {
            device: opts.device,
            original: &original,
            tokenizer: tokenizer.as_ref(),
            seed: p.seed,
            base_dir: &base,
            resume: opts.resume.as_deref(),
            load_model: Some(&load_teacher),
            progress: &mut *progress,
            input_ppl,
            evaluate,
        };
        run_passes(&p.passes, &mut model, &mut rc, hooks)?
    };
    drop(original);
    let eval = match &p.eval {
        None => None,
        Some(e) => {
            let text = std::fs::read_to_string(&e.data)
                .map_err(|err| RunError::Eval(format!("{}: {err}", e.data.display())))?;
            let tok = tokenizer
                .as_mut()
                .ok_or_else(|| RunError::Eval("the model has no tokenizer".into()))?;
            let engine =
                Engine::new(&model, opts.device).map_err(|e| RunError::Eval(e.to_string()))?;
            let opts = PerplexityOptions {
                ctx: e.ctx,
                chunks: e.chunks,
                scoring: e.scoring,
            };
            let (record, _) =
                evaluate(&engine, tok, &e.data, &text, opts, progress).map_err(RunError::Eval)?;
            Some(record)
        }
    };
    let mut outputs = Vec::new();
    if let Some(out) = opts.out.clone().or_else(|| p.output.clone()) {
        let proof = model.verify().map_err(|errors| ManagerError::Verify {
            index: p.passes.len(),
            pass: "(export)",
            errors,
        })?;
        let format = p.output_format_for(&out);
        // `check_output` ran before the passes; the writers refuse adapters they cannot hold.
        progress.start(&format!("writing {}", out.display()), 0);
        let written = match format {
            OutputFormat::Gguf => {
                let tok = tokenizer.as_ref().ok_or_else(|| {
                    RunError::Eval(format!("{}: no tokenizer to export", model_path.display()))
                })?;
                shrink_export::gguf::write(&model, &proof, tok, &out).map(|_| vec![out.clone()])
            }
            OutputFormat::Hf => shrink_export::hf::write(&model, &proof, tokenizer.as_ref(), &out),
            OutputFormat::PeftAdapter => {
                shrink_export::peft::write_adapter(&model, &model_path.display().to_string(), &out)
            }
        };
        progress.finish();
        written?;
        outputs.push(out.display().to_string());
    }
    Ok(RunReport {
        pipeline: p.path.display().to_string(),
        input,
        passes,
        eval,
        outputs,
    })
}

/// One row of a dry run's plan: the size predicted after a pass (or of the input, `index`
/// `None`), from shapes and storage types alone.
#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub pass: String,
    pub options: String,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    /// False when the sizes depend on what the data decides (this pass or an earlier one):
    /// parameter counts stay exact, bytes are an estimate.
    pub exact: bool,
    /// Memory while the pass runs (for the input: as loaded).
    pub memory: MemoryRow,
}

/// Predicted memory of one step of a run, in bytes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MemoryRow {
    /// Weights held in memory: the input's own (the run keeps the model it loaded) and every
    /// parameter a pass has rewritten so far, at its new size.
    pub weights: u64,
    /// Weights still read from the memory-mapped input file: paged in as they are read and
    /// dropped by the kernel under pressure, so not counted in `peak`.
    pub mapped: u64,
    /// What the pass holds beside the weights ([`shrink_passes::Pass::working_set`]).
    pub working_set: u64,
    /// `weights + working_set`: what the memory limit is checked against.
    pub peak: u64,
}

/// Predicts the parameter count and bytes after each pass of `p` on `model`, without weight
/// data or running anything (`shrink run --dry-run`). The error names the pass that cannot
/// apply to the model (a shape a scheme cannot take, a target matching nothing, …).
pub fn plan(p: &Pipeline, model: &shrink_ir::Model) -> Result<Vec<PlanRow>, RunError> {
    plan_passes(p, model, false)
}

/// The plan's checks before a real run: the passes up to the first whose result the data
/// decides (after it, per-layer shapes are guesses, and a refusal could be wrong).
/// A pass predicted to need more than `limit` is refused with the prediction.
fn check_plan(p: &Pipeline, model: &shrink_ir::Model, limit: Option<u64>) -> Result<(), RunError> {
    let rows = plan_passes(p, model, true)?;
    let Some(limit) = limit else { return Ok(()) };
    for (i, r) in rows.iter().enumerate() {
        let m = r.memory;
        if m.peak > limit {
            let what = match i {
                0 => "the model as loaded".to_string(),
                _ => format!("pass {} ({})", i - 1, r.pass),
            };
            return Err(RunError::Plan(format!(
                "{what} is predicted to need {} (weights held {} + working set {}), over the \
                 memory limit of {}; --memory-limit raises it, `shrink run --dry-run` shows \
                 the prediction of every pass",
                human_bytes(m.peak),
                human_bytes(m.weights),
                human_bytes(m.working_set),
                human_bytes(limit)
            )));
        }
    }
    Ok(())
}

fn plan_passes(
    p: &Pipeline,
    model: &shrink_ir::Model,
    stop_when_inexact: bool,
) -> Result<Vec<PlanRow>, RunError> {
    let mut shapes = shrink_ir::Model {
        graph: model.graph.clone(),
        weights: shrink_ir::WeightStore::new(),
    };
    let input_types = model.graph.params().clone();
    let stored = |m: &shrink_ir::Model, name: &str| {
        m.graph
            .param(name)
            .and_then(|t| t.storage_bytes().ok())
            .unwrap_or(0) as u64
    };
    // The input as loaded: mapped tensors are read from the file, the rest is held.
    let (mut input_held, mut input_mapped) = (0u64, std::collections::BTreeMap::new());
    for name in input_types.keys() {
        match model.weights.get(name) {
            Some(t) if t.is_mapped() => {
                input_mapped.insert(name.clone(), t.nbytes() as u64);
            }
            Some(t) => input_held += t.nbytes() as u64,
            None => input_held += stored(model, name),
        }
    }
    let mut rewritten: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let memory = |shapes: &shrink_ir::Model,
                  rewritten: &std::collections::BTreeSet<String>,
                  working_set: u64| {
        let weights = input_held + rewritten.iter().map(|n| stored(shapes, n)).sum::<u64>();
        let mapped = input_mapped
            .iter()
            .filter(|(n, _)| !rewritten.contains(*n))
            .map(|(_, b)| b)
            .sum();
        MemoryRow {
            weights,
            mapped,
            working_set,
            peak: weights.saturating_add(working_set),
        }
    };
    let row = |pass: &str, options: String, m: &shrink_ir::Model, exact: bool, memory| {
        let s = m.size();
        PlanRow {
            pass: pass.to_string(),
            options,
            params: s.params,
            bytes: s.bytes,
            bits_per_weight: s.bits_per_weight(),
            exact,
            memory,
        }
    };
    let mut exact = true;
    let mut rows = vec![row(
        "(input)",
        String::new(),
        &shapes,
        exact,
        memory(&shapes, &rewritten, 0),
    )];
    for (i, e) in p.passes.iter().enumerate() {
        let at = |message: String| {
            RunError::Plan(format!(
                "pass {i} ({}) at {}:{}: {message}",
                e.pass.name(),
                e.position.0,
                e.position.1
            ))
        };
        let working_set = e.pass.working_set(&shapes).map_err(at)?;
        rewritten.extend(e.pass.rewrites(&shapes));
        e.pass.plan(&mut shapes).map_err(at)?;
        // What the plan changed (type, shape, or a new parameter) is written by the pass.
        for (name, ty) in shapes.graph.params() {
            if input_types.get(name) != Some(ty) {
                rewritten.insert(name.clone());
            }
        }
        rewritten.retain(|n| shapes.graph.param(n).is_some());
        exact &= e.pass.plan_is_exact();
        let mem = memory(&shapes, &rewritten, working_set);
        rows.push(row(e.pass.name(), e.pass.options(), &shapes, exact, mem));
        if stop_when_inexact && !exact {
            break;
        }
    }
    Ok(rows)
}
