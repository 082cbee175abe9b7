//! The `shrink` command line. The only crate that prints to the terminal; everything it does is a
//! call into the stage crates. Exit status: 0 on success, 1 with a one-line cause on stderr for
//! any failure, 2 for a malformed command line.

mod commands;
mod progress;
mod report;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "shrink",
    version,
    about = "Make LLMs smaller and faster: quantize, prune, distill, LoRA."
)]
struct Cli {
    /// Print every line of an error (a verifier's full report) instead of its first line.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScoreArg {
    /// Score every prediction of each chunk.
    All,
    /// Score only the second half of each chunk (as llama.cpp's perplexity tool).
    SecondHalf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum QuantExecArg {
    /// Keep quantized and f16/bf16 weights as stored and widen each matrix when it is used.
    Stream,
    /// Widen every weight to f32 at load.
    Dequantize,
    /// `dequantize` when the model's f32 form fits in half the memory available, else `stream`.
    Auto,
}

impl QuantExecArg {
    /// The options, or `None` for `auto` (decided once the model is loaded).
    fn options(self) -> Option<shrink_runtime::ExecOptions> {
        let quantized = match self {
            QuantExecArg::Stream => shrink_runtime::QuantExec::Stream,
            QuantExecArg::Dequantize => shrink_runtime::QuantExec::Dequantize,
            QuantExecArg::Auto => return None,
        };
        Some(shrink_runtime::ExecOptions {
            quantized,
            ..shrink_runtime::ExecOptions::default()
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: load, passes (verified after each), evaluation, export.
    Run {
        /// The pipeline file (RON).
        pipeline: PathBuf,
        /// Model to use instead of the pipeline's `model`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where the final export goes (`.gguf` file or a directory), instead of the pipeline's.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Write the IR before the first pass and after each pass into DIR (and a reproducer
        /// when a pass fails).
        #[arg(long)]
        dump_ir: Option<PathBuf>,
        /// Print the IR after every pass on stderr.
        #[arg(long)]
        print_ir_after_all: bool,
        /// Check the pipeline and the files it names, print its canonical form, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Continue a training pass from one of its checkpoints (`train.checkpoint` writes
        /// them); the passes before it run again, deterministically.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// The memory a run may need, as predicted from shapes before it starts (the dry run
        /// prints the prediction per pass): bytes with a unit (`20G`, `512M`), a share of the
        /// machine's memory (`90%`), or `none`. Default: 80% of the machine's memory.
        #[arg(long, value_parser = run::parse_memory_limit)]
        memory_limit: Option<run::MemoryLimit>,
    },
    /// Perplexity of a model on a text file.
    Eval {
        /// A GGUF file or a Hugging Face model directory.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)
        /// to apply to the model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// UTF-8 text file to score.
        #[arg(long)]
        data: PathBuf,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Score at most this many chunks (default: all that fit).
        #[arg(long)]
        chunks: Option<usize>,
        #[arg(long, value_enum, default_value_t = ScoreArg::All)]
        score: ScoreArg,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// How matrices stored quantized or in f16/bf16 run: `stream` keeps them as stored
        /// (memory-mapped) and widens each matrix to f32 when it is used (memory near the
        /// stored size; over whole chunks the cost is small beside the matmuls), `dequantize`
        /// turns them into f32 at load (f32 memory).
        #[arg(long, value_enum, default_value_t = QuantExecArg::Stream)]
        quantized_exec: QuantExecArg,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt.
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)
        /// to apply to the model.
        #[arg(long)]
        adapter: Option<PathBuf>,

        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 for greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// How matrices stored quantized or in f16/bf16 run: `dequantize` turns them into f32
        /// at load; `stream` keeps them as stored and widens every matrix at each use, which
        /// saves memory but, since generation runs the whole model once per token, costs the
        /// widening of every weight per token; `auto` (the default) dequantizes when the
        /// model's f32 form fits in half the memory available, and streams otherwise.
        #[arg(long, value_enum, default_value_t = QuantExecArg::Auto)]
        quantized_exec: QuantExecArg,
    },
    /// A size-against-perplexity chart (SVG) of one or more `shrink run --json` reports.
    Report {
        /// Run reports (`shrink run … --json > run.json`).
        runs: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long, default_value = "shrink-report.svg")]
        out: PathBuf,
    },
    /// The passes: name and summary, or with `--markdown` the reference of every option and
    /// its default (docs/passes.md).
    Passes {
        #[arg(long)]
        markdown: bool,
    },
    /// Size and structure of a model.
    Inspect {
        /// A GGUF file or a Hugging Face model directory.
        model: PathBuf,
        /// Print the IR text.
        #[arg(long)]
        ir: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Exit status of an internal error (a panic): BSD's EX_SOFTWARE.
pub const EXIT_INTERNAL: i32 = 70;

/// Runs the command line; returns the exit status. A panic, which no input should reach, is
/// reported as one line and exit status [`EXIT_INTERNAL`].
pub fn main() -> i32 {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "internal error: {}{at} (a bug: please report it with this input)",
            what.replace('\n', "\\n")
        );
    }));
    std::panic::catch_unwind(run_cli).unwrap_or(EXIT_INTERNAL)
}

/// The first line of `message`, saying how many more there are.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("").trim_end_matches(':').to_string();
    match lines.count() {
        0 => first,
        n => format!("{first} ({n} more lines: rerun with --verbose)"),
    }
}

fn run_cli() -> i32 {
    // How the tests reach the panic report above, which no input may.
    if std::env::var_os("SHRINK_TEST_PANIC").is_some() {
        panic!("SHRINK_TEST_PANIC is set\nsecond line");
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let verbose = cli.verbose;
    let result = match cli.command {
        Command::Run {
            pipeline,
            model,
            out,
            device,
            dump_ir,
            print_ir_after_all,
            dry_run,
            json,
            resume,
            memory_limit,
        } => run::run(run::RunArgs {
            pipeline,
            model,
            out,
            device,
            dump_ir,
            print_ir_after_all,
            dry_run,
            json,
            resume,
            memory_limit,
        }),
        Command::Eval {
            model,
            adapter,
            data,
            ctx,
            chunks,
            score,
            device,
            quantized_exec,
            json,
        } => commands::eval(commands::EvalArgs {
            model,
            adapter,
            data,
            ctx,
            chunks,
            scoring: match score {
                ScoreArg::All => shrink_runtime::Scoring::All,
                ScoreArg::SecondHalf => shrink_runtime::Scoring::SecondHalf,
            },
            device,
            exec: quantized_exec.options(),
            json,
        }),
        Command::Generate {
            model,
            adapter,
            prompt,
            max_tokens,
            temperature,
            top_p,
            seed,
            device,
            quantized_exec,
        } => commands::generate(commands::GenerateArgs {
            model,
            adapter,
            prompt,
            max_tokens,
            temperature,
            top_p,
            seed,
            device,
            exec: quantized_exec.options(),
        }),
        Command::Inspect { model, ir, json } => commands::inspect(&model, ir, json),
        Command::Report { runs, out } => report::report(&runs, &out),
        Command::Passes { markdown } => {
            let registry = shrink_passes::Registry::builtin();
            if markdown {
                print!("{}", registry.markdown());
            } else {
                for p in registry.iter() {
                    println!("{:<18} {}", p.name, p.summary);
                }
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let message = format!("{e:#}");
            if verbose {
                eprintln!("error: {message}");
            } else {
                eprintln!("error: {}", one_line(&message));
            }
            1
        }
    }
}
