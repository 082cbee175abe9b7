#!/usr/bin/env bash
# Real shapes (docs/BENCHMARKS.md): the published configs of Llama-3.2-1B, Qwen3-0.6B, Gemma-3-1B
# and Phi-3-mini-4k (fixtures/real-shapes/*.json) with seeded random weights. Per config:
# `shrink inspect` (parameter count), one eval chunk of 512 tokens of WikiText-2 dev (the run's
# wall time, which includes the random init, and the eval's own tokens/s; perplexity of random
# weights means nothing); with --gptq first, also pipelines/real-shapes-gptq.ron (GPTQ Q4_0,
# 8 × 512 calibration tokens) to a GGUF: its pass time, the run's wall time and peak RSS. The
# tokenizer is the tiny Llama 3 fixture's (384 tokens, ids valid for every vocabulary): only the
# shapes matter here.
#   bash scripts/bench-real-shapes.sh [--gptq] [NAME...]     (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin shrink
gptq=0
if [[ ${1:-} == --gptq ]]; then gptq=1; shift; fi
names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=(llama-3.2-1b qwen3-0.6b gemma-3-1b phi-3-mini-4k)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(git rev-parse --short HEAD)"
printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' config architecture parameters \
  "eval: run s" "eval: tokens/s" "eval: peak RSS GB" "gptq: pass s" "gptq: run s" "gptq: peak RSS GB"
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
gb() { echo "$(cat "$1") / 1048576" | bc -l; }
for n in "${names[@]}"; do
  mkdir -p "$work/$n"
  cp "fixtures/real-shapes/$n.json" "$work/$n/config.json"
  cp fixtures/tiny-llama3/tokenizer.json "$work/$n/"
  arch=$(./target/release/shrink inspect "$work/$n/config.json" | awk '$1=="architecture"{print $2}')
  params=$(./target/release/shrink inspect "$work/$n/config.json" | awk '$1=="parameters"{print $2}')
  start=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/$n/rss" ./target/release/shrink eval --model "$work/$n/config.json" \
    --data data/wikitext-2/dev.txt --ctx 512 --chunks 1 > "$work/$n/eval.txt"
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  tps=$(grep -o '[0-9.]* tokens/s' "$work/$n/eval.txt" | cut -d' ' -f1)
  pass=- gsecs=- grss=-
  if [[ $gptq == 1 ]]; then
    start=$(date +%s.%N)
    /usr/bin/time -f %M -o "$work/$n/rss-gptq" ./target/release/shrink run pipelines/real-shapes-gptq.ron \
      --model "$work/$n/config.json" --out "$work/$n/q4_0.gguf" > "$work/$n/gptq.txt"
    gsecs=$(printf %.1f "$(echo "$(date +%s.%N) - $start" | bc)")
    pass=$(awk '$2=="quantize"{print $3}' "$work/$n/gptq.txt")
    grss=$(printf %.1f "$(gb "$work/$n/rss-gptq")")
    rm -f "$work/$n/q4_0.gguf"
  fi
  printf '| %s | %s | %s | %.1f | %s | %.1f | %s | %s | %s |\n' "$n" "$arch" "$params" "$secs" "$tps" \
    "$(gb "$work/$n/rss")" "$pass" "$gsecs" "$grss"
done
