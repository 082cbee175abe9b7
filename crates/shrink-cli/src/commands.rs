//! The subcommands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shrink_formats::Tokenizer;
use shrink_import::Loaded;
use shrink_ir::{Op, SizeStats};
use shrink_runtime::{
    Device, Engine, ExecOptions, PerplexityOptions, QuantExec, SampleOptions, Scoring,
};

use crate::progress;

fn load(path: &Path) -> Result<Loaded> {
    load_with(path, &shrink_import::LoadOptions::default())
}

pub(crate) fn load_with(path: &Path, opts: &shrink_import::LoadOptions) -> Result<Loaded> {
    let pb = progress::spinner(&format!("loading {}", path.display()));
    let loaded = shrink_import::load_with(path, opts);
    pb.finish_and_clear();
    Ok(loaded?)
}

/// Loads the model and applies a PEFT adapter directory to it, if one is given.
fn load_with_adapter(path: &Path, adapter: Option<&Path>) -> Result<Loaded> {
    let mut loaded = load(path)?;
    if let Some(dir) = adapter {
        let n = shrink_import::peft::apply(&mut loaded.model, dir)
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
        eprintln!("applied {n} LoRA adapters from {}", dir.display());
    }
    Ok(loaded)
}

fn tokenizer(loaded: &mut Loaded) -> Result<&mut Tokenizer> {
    let path = loaded.path.display().to_string();
    loaded
        .tokenizer
        .as_mut()
        .with_context(|| format!("{path}: the model has no tokenizer (tokenizer.json)"))
}

/// `--quantized-exec auto`: matrices widened to f32 at load when the model's f32 form takes at
/// most half the memory available (or it cannot be known), kept as stored otherwise.
fn auto_exec(loaded: &Loaded) -> ExecOptions {
    let f32_bytes = loaded.model.size().params.saturating_mul(4);
    let avail = shrink_arch::limits::available_memory();
    let quantized = auto_quant_exec(f32_bytes, avail);
    if let (QuantExec::Stream, Some(avail)) = (quantized, avail) {
        eprintln!(
            "note: keeping the weights as stored (their f32 form, {:.1} GB, is more than half the \
             {:.1} GB available); --quantized-exec dequantize widens them anyway",
            f32_bytes as f64 / 1e9,
            avail as f64 / 1e9
        );
    }
    ExecOptions {
        quantized,
        ..ExecOptions::default()
    }
}

fn auto_quant_exec(f32_bytes: u64, available: Option<u64>) -> QuantExec {
    match available {
        Some(avail) if f32_bytes > avail / 2 => QuantExec::Stream,
        _ => QuantExec::Dequantize,
    }
}

fn engine(loaded: &Loaded, device: &str, exec: Option<ExecOptions>) -> Result<Engine> {
    let device: Device = device.parse().map_err(anyhow::Error::msg)?;
    let exec = exec.unwrap_or_else(|| auto_exec(loaded));
    let pb = progress::spinner(&format!("preparing the model on {device}"));
    let engine = Engine::with_options(&loaded.model, device, exec);
    pb.finish_and_clear();
    Ok(engine?)
}

pub struct EvalArgs {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub data: PathBuf,
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub scoring: Scoring,
    pub device: String,
    /// `None`: `--quantized-exec auto`.
    pub exec: Option<ExecOptions>,
    pub json: bool,
}

/// The `eval --json` contract: the evaluation record and the process's peak memory.
#[derive(Serialize)]
struct EvalReport<'a> {
    #[serde(flatten)]
    eval: &'a shrink_pipeline::EvalRecord,
    /// Peak resident memory of the whole command (loading included); null where unknown.
    peak_rss_bytes: Option<u64>,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    if a.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    if a.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("{}: cannot read the data file", a.data.display()))?;
    let mut loaded = load_with_adapter(&a.model, a.adapter.as_deref())?;
    let engine = engine(&loaded, &a.device, a.exec)?;
    let opts = PerplexityOptions {
        ctx: a.ctx,
        chunks: a.chunks,
        scoring: a.scoring,
    };
    let (report, chunks) = shrink_pipeline::evaluate(
        &engine,
        tokenizer(&mut loaded)?,
        &a.data,
        &text,
        opts,
        &mut progress::Bars::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let peak_rss_bytes = shrink_runtime::peak_rss_bytes();
    if a.json {
        let report = EvalReport {
            eval: &report,
            peak_rss_bytes,
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "ppl {:.4} over {} scored tokens ({} chunks of {}, {} tokens in file) in {:.1} s, {:.1} tokens/s on {}",
            report.ppl,
            report.tokens_scored,
            chunks,
            a.ctx,
            report.tokens_in_file,
            report.seconds,
            report.tokens_per_second,
            report.device
        );
        if let Some(b) = peak_rss_bytes {
            println!(
                "peak memory {:.1} MiB (resident)",
                b as f64 / (1024.0 * 1024.0)
            );
        }
    }
    Ok(())
}

pub struct GenerateArgs {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub prompt: String,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub device: String,
    /// `None`: `--quantized-exec auto`.
    pub exec: Option<ExecOptions>,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    let mut loaded = load_with_adapter(&a.model, a.adapter.as_deref())?;
    let engine = engine(&loaded, &a.device, a.exec)?;
    let eos: Vec<u32> = loaded
        .model
        .graph
        .meta
        .get("eos_token_id")
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect();
    let tok = tokenizer(&mut loaded)?;
    let prompt = tok
        .encode(&a.prompt, true)
        .map_err(anyhow::Error::msg)
        .context("tokenizing the prompt")?;
    let opts = SampleOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop: eos,
    };
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{}", a.prompt);
    let _ = stdout.flush();
    // Decode the whole continuation each time and print what is new, so tokens that split a
    // UTF-8 character print once complete.
    let mut ids: Vec<u32> = Vec::new();
    let mut shown = 0usize;
    let mut failure = None;
    engine.generate(&prompt, &opts, &mut |t| {
        ids.push(t);
        match tok.decode(&ids) {
            Ok(text) => {
                if !text.ends_with('\u{FFFD}') && text.len() > shown && text.is_char_boundary(shown)
                {
                    let _ = write!(stdout, "{}", &text[shown..]);
                    let _ = stdout.flush();
                    shown = text.len();
                }
            }
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(e) = failure {
        bail!("decoding generated tokens: {e}");
    }
    println!();
    Ok(())
}

/// Parameters and stored bytes per storage type: the scheme's name for quantized parameters
/// (`q4_0`, `nf4_b64_dq`), else the dtype. A tied parameter counts once.
fn storage_types(model: &shrink_ir::Model) -> BTreeMap<String, TypeSize> {
    let mut types: BTreeMap<String, TypeSize> = BTreeMap::new();
    for (name, ty) in model.graph.params() {
        let key = match ty.quant {
            Some(q) => q.to_string(),
            None => ty.dtype.to_string(),
        };
        let bytes = model.weights.get(name).map_or_else(
            || ty.storage_bytes().unwrap_or(0) as u64,
            |t| t.nbytes() as u64,
        );
        let e = types.entry(key).or_default();
        e.params += ty.numel() as u64;
        e.bytes += bytes;
    }
    for t in types.values_mut() {
        t.bits_per_weight = SizeStats {
            params: t.params,
            bytes: t.bytes,
            pruned: 0,
        }
        .bits_per_weight();
    }
    types
}

/// Size of the parameters of one storage type.
#[derive(Serialize, Default)]
struct TypeSize {
    params: u64,
    bytes: u64,
    bits_per_weight: f64,
}

/// The `inspect --json` contract.
#[derive(Serialize)]
struct InspectReport {
    params: u64,
    bytes: u64,
    bits_per_weight: f64,
    layers: u64,
    architecture: String,
    /// Per storage type (scheme name or dtype), in name order.
    types: BTreeMap<String, TypeSize>,
}

pub fn inspect(path: &Path, ir: bool, json: bool) -> Result<()> {
    // Sizes and structure only: a config.json alone is not given its random weights.
    let loaded = load_with(path, &shrink_import::LoadOptions::shapes())?;
    let model = &loaded.model;
    if ir {
        print!("{}", shrink_ir::text::print(&model.graph));
        return Ok(());
    }
    let size = model.size();
    let layers = model
        .graph
        .node_ids()
        .into_iter()
        .filter(|id| matches!(model.graph.node(*id).map(|n| &n.op), Some(Op::Attention(_))))
        .count() as u64;
    let report = InspectReport {
        params: size.params,
        bytes: size.bytes,
        bits_per_weight: size.bits_per_weight(),
        layers,
        architecture: model
            .graph
            .meta
            .get("architecture")
            .cloned()
            .unwrap_or_default(),
        types: storage_types(model),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("model         {}", path.display());
        println!("architecture  {}", report.architecture);
        println!("layers        {}", report.layers);
        println!("parameters    {}", report.params);
        println!("bytes         {}", report.bytes);
        println!("bits/weight   {:.3}", report.bits_per_weight);
        let types = &report.types;
        let width = types.keys().map(String::len).max().unwrap_or(0).max(5);
        println!(
            "  {:<width$} {:>12} {:>12} {:>11}",
            "type", "parameters", "bytes", "bits/weight"
        );
        for (t, size) in types {
            println!(
                "  {t:<width$} {:>12} {:>12} {:>11.3}",
                size.params, size.bytes, size.bits_per_weight
            );
        }
        println!(
            "  {:<width$} {:>12} {:>12} {:>11.3}",
            "total", report.params, report.bytes, report.bits_per_weight
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_widens_only_what_fits_in_half_the_memory() {
        let gb = 1u64 << 30;
        assert_eq!(
            auto_quant_exec(4 * gb, Some(16 * gb)),
            QuantExec::Dequantize
        );
        assert_eq!(
            auto_quant_exec(8 * gb, Some(16 * gb)),
            QuantExec::Dequantize
        );
        assert_eq!(
            auto_quant_exec(8 * gb + 1, Some(16 * gb)),
            QuantExec::Stream
        );
        assert_eq!(auto_quant_exec(15 * gb, None), QuantExec::Dequantize);
    }
}
