//! `shrink run`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shrink_ir::Model;
use shrink_passes::{Pass, Registry};
use shrink_pipeline::instrument::IrDump;
use shrink_pipeline::{Instrumentation, PassRecord, Pipeline, RunOptions, RunReport};
use shrink_runtime::Device;

use crate::progress::Bars;

pub struct RunArgs {
    pub pipeline: PathBuf,
    pub model: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub device: String,
    pub dump_ir: Option<PathBuf>,
    pub print_ir_after_all: bool,
    pub dry_run: bool,
    pub json: bool,
    pub resume: Option<PathBuf>,
    pub memory_limit: Option<MemoryLimit>,
}

/// `--memory-limit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryLimit {
    Bytes(u64),
    /// A share of the machine's memory, in percent.
    Percent(f64),
    None,
}

impl MemoryLimit {
    /// The limit in bytes (`None`: unchecked, or a share of a memory size this system hides).
    fn bytes(self) -> Option<u64> {
        match self {
            MemoryLimit::Bytes(b) => Some(b),
            MemoryLimit::Percent(p) => {
                shrink_arch::limits::total_memory().map(|t| (t as f64 * p / 100.0) as u64)
            }
            MemoryLimit::None => None,
        }
    }
}

/// `20G`, `20GB`, `1.5T`, `512M`, `90%`, `none`; units are powers of 1000.
pub fn parse_memory_limit(s: &str) -> Result<MemoryLimit, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(MemoryLimit::None);
    }
    let bad = || format!("'{s}' is not a memory size: give e.g. 20G, 512M, 90% or none");
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        return if p > 0.0 && p <= 100.0 {
            Ok(MemoryLimit::Percent(p))
        } else {
            Err(format!(
                "'{s}': a share of memory is over 0% and at most 100%"
            ))
        };
    }
    let upper = t.to_ascii_uppercase();
    let number = upper.trim_end_matches('B');
    let (digits, scale) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 1e3),
        Some('M') => (&number[..number.len() - 1], 1e6),
        Some('G') => (&number[..number.len() - 1], 1e9),
        Some('T') => (&number[..number.len() - 1], 1e12),
        _ => (number, 1.0),
    };
    let v: f64 = digits.trim().parse().map_err(|_| bad())?;
    let bytes = v * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(MemoryLimit::Bytes(bytes as u64))
}

/// `--print-ir-after-all`.
struct PrintIrAfterAll;

impl Instrumentation for PrintIrAfterAll {
    fn after_pass(
        &mut self,
        index: usize,
        pass: &dyn Pass,
        model: &Model,
        _record: &PassRecord,
    ) -> Result<(), String> {
        eprintln!(
            "; IR after pass {}: {} {}\n{}",
            index + 1,
            pass.name(),
            pass.options(),
            shrink_ir::text::print_model(model)
        );
        Ok(())
    }
}

/// One table row per pass, printed as each finishes (to stderr with `--json`).
struct Table {
    to_stderr: bool,
}

impl Table {
    fn line(&self, s: &str) {
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn fmt_ppl(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.3}"))
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

impl Instrumentation for Table {
    fn start(&mut self, model: &Model, ppl: Option<f64>) -> Result<(), String> {
        let s = model.size();
        self.line(&format!(
            "{:<3} {:<14} {:>9} {:>14} {:>12} {:>8} {:>8} {:>10}  stats",
            "#", "pass", "seconds", "params", "bytes", "bits/w", "sparsity", "ppl"
        ));
        self.line(&format!(
            "{:<3} {:<14} {:>9} {:>14} {:>12} {:>8.3} {:>8.3} {:>10}",
            "0",
            "(input)",
            "",
            s.params,
            fmt_bytes(s.bytes),
            s.bits_per_weight(),
            s.sparsity(),
            fmt_ppl(ppl)
        ));
        Ok(())
    }

    fn after_pass(
        &mut self,
        index: usize,
        _pass: &dyn Pass,
        _model: &Model,
        r: &PassRecord,
    ) -> Result<(), String> {
        // A per-tensor map (prune's sparsity) or per-layer list would swamp the row: its size
        // only; --json has it.
        let stats: Vec<String> = r
            .stats
            .iter()
            .map(|(k, v)| {
                let n = v
                    .as_object()
                    .map(|m| m.len())
                    .or_else(|| v.as_array().map(Vec::len));
                match n {
                    Some(n) if n > 8 => format!("{k}=<{n} entries>"),
                    _ => format!("{k}={v}"),
                }
            })
            .collect();
        self.line(&format!(
            "{:<3} {:<14} {:>9.2} {:>14} {:>12} {:>8.3} {:>8.3} {:>10}  {}",
            index + 1,
            r.name,
            r.seconds,
            r.params,
            fmt_bytes(r.bytes),
            r.bits_per_weight,
            r.sparsity,
            fmt_ppl(r.ppl),
            stats.join(" ")
        ));
        Ok(())
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    let registry = Registry::builtin();
    let pipeline = Pipeline::from_file(&a.pipeline, &registry)?;
    let device: Device = a.device.parse().map_err(anyhow::Error::msg)?;
    let opts = RunOptions {
        model: a.model.clone(),
        out: a.out.clone(),
        device,
        resume: a.resume.clone(),
        memory_limit: match a.memory_limit {
            Some(l) => l.bytes(),
            // 80% of the machine's memory.
            None => MemoryLimit::Percent(80.0).bytes(),
        },
    };
    let model_path = shrink_pipeline::run::model_path(&pipeline, &opts);
    // Checked here too (cheap) so that nothing, not even the dump directory, is made first.
    pipeline.check_files(model_path.as_deref())?;
    shrink_pipeline::run::check_output_paths(&pipeline, &opts)?;
    if a.dry_run {
        return dry_run(&pipeline, model_path.as_deref(), a.json, opts.memory_limit);
    }
    let mut table = Table { to_stderr: a.json };
    let mut dump = match &a.dump_ir {
        Some(dir) => {
            let model = model_path.clone().unwrap_or_default();
            let model = std::fs::canonicalize(&model).unwrap_or(model);
            let lines = pipeline
                .passes
                .iter()
                .map(|e| format!("(pass: {:?}, options: {})", e.pass.name(), e.pass.options()))
                .collect();
            Some(IrDump::new(dir, &model, lines).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let mut printer = PrintIrAfterAll;
    let mut hooks: Vec<&mut dyn Instrumentation> = vec![&mut table];
    if let Some(d) = dump.as_mut() {
        hooks.push(d);
    }
    if a.print_ir_after_all {
        hooks.push(&mut printer);
    }
    let mut bars = Bars::new(a.json);
    let report: RunReport = shrink_pipeline::run(&pipeline, &opts, &mut hooks, &mut bars)
        .with_context(|| format!("{}", a.pipeline.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(e) = &report.eval {
            println!(
                "eval: ppl {:.4} over {} scored tokens in {:.1} s ({:.1} tokens/s on {})",
                e.ppl, e.tokens_scored, e.seconds, e.tokens_per_second, e.device
            );
        }
        for o in &report.outputs {
            println!("wrote {o}");
        }
    }
    Ok(())
}

/// `--dry-run`: the canonical pipeline, then the predicted size after each pass and the memory
/// while it runs (from the model's shapes; nothing runs). `--json`: `{"pipeline": text,
/// "plan": [rows], "memory_limit": bytes or null}`.
fn dry_run(
    pipeline: &Pipeline,
    model: Option<&std::path::Path>,
    json: bool,
    limit: Option<u64>,
) -> Result<()> {
    let model = model.context("no model: give `model:` in the pipeline or --model")?;
    // A config.json alone needs no random weights for a plan: a 70B one is planned too.
    let loaded = crate::commands::load_with(model, &shrink_import::LoadOptions::shapes())?;
    let rows = shrink_pipeline::plan(pipeline, &loaded.model)
        .with_context(|| format!("{}", pipeline.path.display()))?;
    if json {
        let v = serde_json::json!({
            "pipeline": pipeline.canonical(),
            "plan": rows,
            "memory_limit": limit,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let gb = |b: u64| format!("{:.2}", b as f64 / 1e9);
    print!("{}", pipeline.canonical());
    println!("# predicted from shapes (nothing ran); memory in GB while the pass runs:");
    println!(
        "#   {:<18} {:>14} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "pass", "params", "bytes", "bits/w", "weights", "working", "peak", "mapped"
    );
    for (i, r) in rows.iter().enumerate() {
        let n = if i == 0 {
            "-".to_string()
        } else {
            i.to_string()
        };
        let approx = if r.exact { "  " } else { " ≈" };
        let m = r.memory;
        let over = match limit {
            Some(l) if m.peak > l => "  over the limit",
            _ => "",
        };
        println!(
            "# {n:<2} {:<16} {:>14} {:>12} {:>8.3}{approx} {:>6} {:>8} {:>8} {:>8}{over}",
            r.pass,
            r.params,
            r.bytes,
            r.bits_per_weight,
            gb(m.weights),
            gb(m.working_set),
            gb(m.peak),
            gb(m.mapped)
        );
    }
    if rows.iter().any(|r| !r.exact) {
        println!("# ≈: bytes depend on what the data decides (a measured allocation keeps untouched layers as they were stored)");
    }
    println!(
        "# weights: held in memory (the loaded model's own and what passes rewrote); mapped: read \
         from the file as needed, not counted in peak; limit: {}",
        limit.map_or("none".to_string(), |l| format!(
            "{} GB (--memory-limit)",
            gb(l)
        ))
    );
    Ok(())
}
