//! `shrink-fuzz`: a structure-aware mutation fuzzer of every parser of shrink, on stable Rust.
//!
//! Each target (gguf, safetensors, peft, pipeline, ir, tokenizer) starts from seed files,
//! mutates them the way their format is built (integers planted at a GGUF's counts and
//! offsets, JSON fields rewritten, UTF-8 and comments spliced into text) and runs shrink's
//! parser on each. Every execution must end in an error or an accepted input that verifies;
//! a panic, a broken property, an execution over the time limit or an allocation past the
//! memory bound (a fixed 64 MiB plus 16 × the input's size) is a crash, saved under
//! `target/fuzz/crashes/`. Deterministic for a given `--seed`. `scripts/fuzz.sh N` runs it.

mod alloc;
mod mutate;
mod targets;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use targets::{Env, Input};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Heap bytes an execution may use above what was live before it: a fixed part plus a
/// multiple of the input's size.
const FIXED_BOUND: usize = 64 << 20;
const INPUT_FACTOR: usize = 16;
/// Seconds an execution may run.
const TIME_LIMIT: u64 = 20;
/// Accepted inputs kept as further seeds, per target.
const CORPUS_MAX: usize = 64;

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());
/// Milliseconds since the epoch when the running execution started; 0 between executions.
static STARTED: AtomicU64 = AtomicU64::new(0);

struct Args {
    runs: u64,
    seed: u64,
    targets: Vec<String>,
    repo: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 1000,
        seed: 0,
        targets: Vec::new(),
        repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse().context("--runs")?,
            "--seed" => a.seed = value()?.parse().context("--seed")?,
            "--target" => a.targets.push(value()?),
            "--repo" => a.repo = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "shrink-fuzz [--runs N] [--seed S] [--target T]... [--repo DIR]\n  targets: {}",
                    targets::NAMES.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}'"),
        }
    }
    if a.targets.is_empty() {
        a.targets = targets::NAMES.iter().map(|s| s.to_string()).collect();
    }
    for t in &a.targets {
        if !targets::NAMES.contains(&t.as_str()) {
            bail!(
                "unknown target '{t}' (known: {})",
                targets::NAMES.join(", ")
            );
        }
    }
    Ok(a)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stops the process when one execution runs past [`TIME_LIMIT`], saving its input.
fn watchdog() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(500));
        let started = STARTED.load(Ordering::Relaxed);
        if started != 0 && now_ms().saturating_sub(started) > TIME_LIMIT * 1000 {
            let saved = alloc::CURRENT.lock().ok().and_then(|c| c.clone());
            let input = alloc::CURRENT_INPUT
                .lock()
                .map(|i| i.clone())
                .unwrap_or_default();
            if let Some((target, path)) = saved {
                let _ = std::fs::write(&path, input);
                eprintln!(
                    "shrink-fuzz: target {target}: an execution ran past {TIME_LIMIT} s; input saved to {}",
                    path.display()
                );
            }
            std::process::exit(1);
        }
    });
}

#[derive(Default)]
struct Tally {
    runs: u64,
    accepted: u64,
    refused: u64,
    crashes: Vec<String>,
    peak: usize,
    seconds: f64,
}

fn fuzz_target(env: &mut Env, a: &Args, target: &str, crash_dir: &Path) -> Result<Tally> {
    let seeds = env.seeds(&a.repo, target)?;
    if seeds.is_empty() {
        bail!("target {target} has no seeds");
    }
    let mut corpus: Vec<Input> = seeds.clone();
    // One stream per target, so a target's inputs do not depend on which others ran.
    let salt = targets::NAMES
        .iter()
        .position(|n| *n == target)
        .unwrap_or(0) as u64;
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_mul(0x9E37_79B9).wrapping_add(salt));
    let mut tally = Tally::default();
    let start = Instant::now();
    for i in 0..a.runs {
        // The seeds themselves first, unmutated.
        let input = match usize::try_from(i).ok().and_then(|i| seeds.get(i)) {
            Some(s) => s.clone(),
            None => {
                let mut input = corpus[rng.random_range(0..corpus.len())].clone();
                env.mutate(target, &mut rng, &mut input);
                input
            }
        };
        let crash_path = crash_dir.join(format!("{target}-seed{}-{i}.bin", a.seed));
        if let Ok(mut c) = alloc::CURRENT.lock() {
            *c = Some((target.to_string(), crash_path.clone()));
        }
        if let Ok(mut c) = alloc::CURRENT_INPUT.lock() {
            *c = input.serialize();
        }
        let bound = FIXED_BOUND.saturating_add(INPUT_FACTOR.saturating_mul(input.len()));
        STARTED.store(now_ms(), Ordering::Relaxed);
        let base = alloc::begin(bound);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| env.execute(target, &input)));
        let peak = alloc::end(base);
        STARTED.store(0, Ordering::Relaxed);
        tally.runs += 1;
        tally.peak = tally.peak.max(peak);
        let crash = match outcome {
            Ok(Ok(true)) => {
                tally.accepted += 1;
                if corpus.len() < CORPUS_MAX {
                    corpus.push(input.clone());
                }
                None
            }
            Ok(Ok(false)) => {
                tally.refused += 1;
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!(
                "panic: {}",
                LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default()
            )),
        };
        if let Some(why) = crash {
            std::fs::create_dir_all(crash_dir)?;
            std::fs::write(&crash_path, input.serialize())?;
            let line = format!("{why} (input: {})", crash_path.display());
            if tally.crashes.len() < 5 {
                eprintln!("shrink-fuzz: target {target}: {line}");
            }
            tally.crashes.push(line);
        }
    }
    tally.seconds = start.elapsed().as_secs_f64();
    Ok(tally)
}

fn main() {
    std::process::exit(match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("shrink-fuzz: error: {e:#}");
            1
        }
    })
}

fn run() -> Result<bool> {
    let a = parse_args()?;
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = format!("{what}{at}");
        }
    }));
    let shm = Path::new("/dev/shm");
    let work_root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        a.repo.join("target/fuzz")
    };
    let work = work_root.join(format!("shrink-fuzz-{}", std::process::id()));
    let crash_dir = a.repo.join("target/fuzz/crashes");
    let mut env = Env::new(&a.repo, work.clone())?;
    watchdog();
    let mut total = Tally::default();
    for target in &a.targets {
        let t = fuzz_target(&mut env, &a, target, &crash_dir)?;
        println!(
            "fuzz {target:<12} {:>9} executions: {:>9} refused, {:>7} accepted, {} crashes; \
             peak {:.1} MB above the base; {:.0} executions/s",
            t.runs,
            t.refused,
            t.accepted,
            t.crashes.len(),
            t.peak as f64 / 1e6,
            t.runs as f64 / t.seconds.max(1e-9)
        );
        total.runs += t.runs;
        total.crashes.extend(t.crashes);
        total.seconds += t.seconds;
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "fuzz: {} targets, {} executions (seed {}), {} crashes, {:.0} s",
        a.targets.len(),
        total.runs,
        a.seed,
        total.crashes.len(),
        total.seconds
    );
    Ok(total.crashes.is_empty())
}
