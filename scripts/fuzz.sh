#!/usr/bin/env bash
# Runs shrink's fuzzer: N executions (default 10000) per target, fixed seed (SEED, default 0).
# Prints a line per target and a summary line; exits 1 on any crash (inputs saved under
# target/fuzz/crashes/). See docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
bash scripts/fetch-llamacpp-vocab.sh >/dev/null   # the SentencePiece vocabulary of the tokenizer target
cargo build --release -p shrink-fuzz --quiet
target/release/shrink-fuzz --runs "$n" --seed "${SEED:-0}" "${@:2}"
