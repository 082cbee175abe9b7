//! Integration tests of shrink: one test binary (builds of burn are slow), a module per subsystem.
//!
//! Tests marked `#[ignore = "real model…"]` need SmolLM2 in `models/` (`scripts/fetch-smollm2.sh`);
//! CI fetches it and runs them with `--include-ignored`.

mod bad_input;
mod common;
mod distill;
mod families;
mod ir_text;
mod lora;
mod pipelines;
mod prune;
mod prune_structured;
mod quant;
mod smollm2;
mod tiny_models;
mod tokenizer;
