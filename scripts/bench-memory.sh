#!/usr/bin/env bash
# Memory of a model stored in bf16 (docs/BENCHMARKS.md), one markdown table per part:
#  eval    Qwen2.5-1.5B's shapes with seeded random weights in a 3.09 GB safetensors file (made
#          once by examples/bench_load.rs), one chunk of 512 tokens of WikiText-2 dev, with the
#          matrices kept as stored (`--quantized-exec stream`, the default) and widened to f32 at
#          load (`dequantize`, what every eval did before), in that order. Per mode: peak RSS
#          (the whole command), the eval's own seconds and tokens/s, and the perplexity (random
#          weights: it only has to agree).
#  export  `shrink run pipelines/convert.ron` (no passes) to GGUF of the configs of Llama-3.2-1B
#          (q/k rows permuted for llama.cpp) and Phi-3-mini-4k (q/k/v and gate/up fused), random
#          weights built in bf16 in memory: peak RSS against the bytes the model itself holds.
#          With BASELINE=path/to/an/older/shrink, that binary runs first on the same configs;
#          EXPORT_CONFIGS="llama-3.2-1b" runs only those.
#  predict `shrink run --dry-run --json`'s predicted peak memory (the largest over the passes:
#          weights held + working set; and with the weights read from mapped files added)
#          beside the run's measured peak RSS, for: pipelines/convert.ron on Llama-3.2-1B's config;
#          pipelines/real-shapes-gptq.ron on Qwen3-0.6B's config (random bf16 weights);
#          pipelines/smollm2-q4_0-gptq.ron and pipelines/memory-smollm2-qlora.ron on SmolLM2's
#          Q4_1 GGUF (memory-mapped).
#   [BASELINE=BIN] bash scripts/bench-memory.sh [eval] [export] [predict]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(eval export predict)
cargo build --release --quiet --bin shrink --example bench_load
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A directory holding the real-shape config NAME and a tokenizer (ids valid for every vocabulary).
shapes() {
  mkdir -p "$work/$1"
  cp "fixtures/real-shapes/$1.json" "$work/$1/config.json"
  cp fixtures/tiny-llama3/tokenizer.json "$work/$1/"
}
for part in "${parts[@]}"; do
  case $part in
  eval)
    model=target/bench/qwen2.5-1.5b-shapes-bf16
    [[ -f $model/model.safetensors ]] || ./target/release/examples/bench_load make-qwen "$model"
    echo
    echo "eval, file $(du -b "$model/model.safetensors" | cut -f1) bytes"
    echo
    echo "| --quantized-exec | peak RSS, GB | eval s | tokens/s | ppl |"
    echo "| --- | --- | --- | --- | --- |"
    for mode in stream dequantize; do
      ./target/release/shrink eval --model "$model" --data data/wikitext-2/dev.txt --ctx 512 \
        --chunks 1 --quantized-exec "$mode" --json > "$work/eval.json"
      jq -r --arg m "$mode" '"| \($m) | \(.peak_rss_bytes / 1e9 * 100 | round / 100) | \(.seconds * 10 | round / 10) | \(.tokens_per_second * 10 | round / 10) | \(.ppl * 1000 | round / 1000) |"' "$work/eval.json"
    done
    ;;
  export)
    bins=(./target/release/shrink)
    [[ -n ${BASELINE:-} ]] && bins=("$BASELINE" "${bins[@]}")
    echo
    echo "| binary | config | model bytes, GB | GGUF, GB | peak RSS, GB | run s |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for bin in "${bins[@]}"; do
      for n in ${EXPORT_CONFIGS:-llama-3.2-1b phi-3-mini-4k}; do
        shapes "$n"
        bytes=$(./target/release/shrink inspect "$work/$n/config.json" | awk '$1=="bytes"{print $2}')
        start=$(date +%s.%N)
        /usr/bin/time -f %M -o "$work/rss" "$bin" run pipelines/convert.ron \
          --model "$work/$n/config.json" --out "$work/$n/m.gguf" > /dev/null
        secs=$(echo "$(date +%s.%N) - $start" | bc)
        awk -v b="$bin" -v n="$n" -v bytes="$bytes" -v file="$(du -b "$work/$n/m.gguf" | cut -f1)" \
          -v kb="$(tail -1 "$work/rss")" -v s="$secs" \
          'BEGIN { printf "| %s | %s | %.2f | %.2f | %.2f | %.1f |\n", b, n, bytes / 1e9, file / 1e9, kb * 1024 / 1e9, s }'
        rm -f "$work/$n/m.gguf"
      done
    done
    ;;
  predict)
    bash scripts/fetch-smollm2.sh > /dev/null
    smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
    shapes llama-3.2-1b
    shapes qwen3-0.6b
    echo
    echo "| pipeline | model | predicted peak, GB | + mapped, GB | measured peak RSS, GB | run s |"
    echo "| --- | --- | --- | --- | --- | --- |"
    while read -r pipeline model out; do
      ./target/release/shrink run "$pipeline" --model "$model" --dry-run --json > "$work/plan.json"
      start=$(date +%s.%N)
      /usr/bin/time -f %M -o "$work/rss" ./target/release/shrink run "$pipeline" --model "$model" \
        --out "$work/$out" --memory-limit none > /dev/null
      secs=$(echo "$(date +%s.%N) - $start" | bc)
      jq -r --arg p "$pipeline" --arg m "$model" --arg rss "$(cat "$work/rss")" --arg s "$secs" \
        '[.plan[].memory] as $r | "| \($p) | \($m | sub(".*/(?<d>[^/]+)/config.json"; "\(.d)")) | \($r | map(.peak) | max / 1e7 | round / 100) | \($r | map(.peak + .mapped) | max / 1e7 | round / 100) | \($rss | tonumber * 1024 / 1e7 | round / 100) | \($s | tonumber * 10 | round / 10) |"' \
        "$work/plan.json"
      rm -rf "${work:?}/$out"
    done <<ROWS
pipelines/convert.ron $work/llama-3.2-1b/config.json m.gguf
pipelines/real-shapes-gptq.ron $work/qwen3-0.6b/config.json q.gguf
pipelines/smollm2-q4_0-gptq.ron $smol q.gguf
pipelines/memory-smollm2-qlora.ron $smol adapter
ROWS
    ;;
  *) echo "unknown part '$part' (eval, export, predict)" >&2; exit 1 ;;
  esac
done
