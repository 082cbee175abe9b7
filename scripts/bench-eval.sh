#!/usr/bin/env bash
# Throughput of `shrink eval` on CPU against PyTorch fp32 (transformers, 2 threads): the same
# model (SmolLM2 Q4_1 dequantized to f32), file, chunks and scoring, one after the other in one
# run. Needs the release binary and a Python with torch, transformers, gguf and accelerate
# (PYTHON, default python3). Prints one JSON line per engine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CHUNKS=${CHUNKS:-20}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/wikitext-2/test.txt
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'shrink  '
./target/release/shrink eval --model "$MODEL" --data "$DATA" --ctx 512 --chunks "$CHUNKS" \
  --score second-half --json
printf 'pytorch '
"$PYTHON" scripts/bench_torch_eval.py --model "$MODEL" --data "$DATA" --ctx 512 \
  --chunks "$CHUNKS" --threads 2 2>/dev/null
