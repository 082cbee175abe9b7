#!/usr/bin/env bash
# Memory of evaluation on a model stored in bf16 (docs/BENCHMARKS.md): Qwen2.5-1.5B's shapes with
# seeded random weights in a 3.09 GB safetensors file (made once by examples/bench_load.rs), one
# chunk of 512 tokens of WikiText-2 dev, with the matrices kept as stored (`--quantized-exec
# stream`, the default) and widened to f32 at load (`dequantize`, what every eval did before),
# in that order, in one run. Prints one markdown row per mode: peak RSS (the whole command), the
# eval's own seconds and tokens/s, and the perplexity (random weights: it only has to agree).
#   bash scripts/bench-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
model=target/bench/qwen2.5-1.5b-shapes-bf16
cargo build --release --quiet --bin shrink --example bench_load
[[ -f $model/model.safetensors ]] || ./target/release/examples/bench_load make-qwen "$model"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes); file $(du -b "$model/model.safetensors" | cut -f1) bytes"
echo "| --quantized-exec | peak RSS, GB | eval s | tokens/s | ppl |"
echo "| --- | --- | --- | --- | --- |"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for mode in stream dequantize; do
  ./target/release/shrink eval --model "$model" --data data/wikitext-2/dev.txt --ctx 512 --chunks 1 \
    --quantized-exec "$mode" --json > "$out"
  jq -r --arg m "$mode" '"| \($m) | \(.peak_rss_bytes / 1e9 * 100 | round / 100) | \(.seconds * 10 | round / 10) | \(.tokens_per_second * 10 | round / 10) | \(.ppl * 1000 | round / 1000) |"' "$out"
done
