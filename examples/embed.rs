//! Embedding shrink in another tool: load a model, run two passes, export a GGUF file.
//!   cargo run --release --example embed -- fixtures/tiny-llama target/embed-example.gguf
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rand::SeedableRng;
use shrink::passes::{NoProgress, PassContext, Registry};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let input = PathBuf::from(args.next().unwrap_or_else(|| "fixtures/tiny-llama".into()));
    let output = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/embed-example.gguf".into()),
    );
    let loaded = shrink::import::load(&input)?;
    let mut model = loaded.model.clone();
    let registry = Registry::builtin();
    let passes = [("cast", "(to: f16)"), ("dead-code", "()")];
    let (before, mut progress) = (BTreeMap::new(), NoProgress);
    for (index, (name, options)) in passes.into_iter().enumerate() {
        let info = registry.get(name).context("unknown pass")?;
        let pass = (info.build)(Some(ron::value::RawValue::from_ron(options)?))?;
        let mut cx = PassContext {
            device: shrink::runtime::Device::Cpu,
            original: &loaded.model,
            before: &before,
            index,
            resume: None,
            tokenizer: loaded.tokenizer.as_ref(),
            rng: rand::rngs::StdRng::seed_from_u64(index as u64),
            base_dir: std::path::Path::new("."),
            load_model: None,
            progress: &mut progress,
        };
        let report = pass.run(&mut model, &mut cx)?;
        model.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{name}: {:?}", report.stats);
    }
    let proof = model.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer = loaded.tokenizer.as_ref().context("no tokenizer")?;
    shrink::export::gguf::write(&model, &proof, tokenizer, &output)?;
    let size = model.size();
    println!(
        "wrote {} ({} params, {} bytes)",
        output.display(),
        size.params,
        size.bytes
    );
    Ok(())
}
