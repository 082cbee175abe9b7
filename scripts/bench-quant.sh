#!/usr/bin/env bash
# The quantization table of docs/BENCHMARKS.md: every smollm2-*.ron quantization pipeline run
# on SmolLM2-135M-Instruct (quantize, then eval on WikiText-2 test: ctx 512, 20 chunks, second
# half scored), one after the other. With LLAMACPP=<dir of llama.cpp's tools>, each exported
# GGUF is also scored by llama-perplexity with the same settings, and the float model's
# baseline (F32, and llama-quantize's Q8_0/Q4_0 of it) is measured in the same run.
# Writes target/bench-quant/<name>.json and prints one markdown row per result.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/wikitext-2/test.txt
OUT=target/bench-quant
ONLY=${ONLY:-}
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
llama_ppl() { # file → ppl of llama-perplexity (same settings as shrink's eval)
  "$LLAMACPP/llama-perplexity" -m "$1" -f "$DATA" -c 512 --chunks 20 -t "$(nproc)" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
row() { printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$@"; }
row pipeline scheme method bytes bits/weight "ppl (shrink)" "quantize s"
for p in pipelines/smollm2-q8_0-rtn.ron pipelines/smollm2-q8_0-gptq.ron pipelines/smollm2-q4_0-rtn.ron \
         pipelines/smollm2-q4_0-gptq.ron pipelines/smollm2-q4_0-gptq-tuned.ron pipelines/smollm2-q4_0-awq.ron \
         pipelines/smollm2-int4-b64-rtn.ron \
         pipelines/smollm2-nf4-rtn.ron pipelines/smollm2-nf4-dq-rtn.ron; do
  name=$(basename "$p" .ron)
  [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
  case "$name" in *int4*|*nf4*) out="$OUT/$name" ;; *) out="$OUT/$name.gguf" ;; esac
  ./target/release/shrink run "$p" --model "$MODEL" --out "$out" --json > "$OUT/$name.json"
  q='.passes[] | select(.name=="quantize")'
  row "$name" "$(jq -r "$q | .options" "$OUT/$name.json" | sed -n 's/.*scheme: "\([^"]*\)").*/\1/p')" \
    "$(jq -r "$q | .options" "$OUT/$name.json" | sed -n 's/.*method: \([a-z]*\).*/\1/p')" \
    "$(jq -r "$q | .bytes" "$OUT/$name.json")" "$(jq -r "$q | .bits_per_weight * 1000 | round / 1000" "$OUT/$name.json")" \
    "$(jq -r '.eval.ppl * 1000 | round / 1000' "$OUT/$name.json")" "$(jq -r "$q | .seconds * 10 | round / 10" "$OUT/$name.json")"
  if [[ -n "${LLAMACPP:-}" && "$out" == *.gguf ]]; then
    echo "llama-perplexity $name: $(llama_ppl "$out")"
  fi
done
if [[ -n "${LLAMACPP:-}" && -z "$ONLY" ]]; then
  "$LLAMACPP/llama-quantize" --allow-requantize "$MODEL" "$OUT/f32.gguf" F32 >/dev/null 2>&1
  for t in Q8_0 Q4_0; do
    "$LLAMACPP/llama-quantize" "$OUT/f32.gguf" "$OUT/llamacpp-$t.gguf" "$t" >/dev/null 2>&1
    echo "llama.cpp $t: bytes $(stat -c %s "$OUT/llamacpp-$t.gguf") ppl $(llama_ppl "$OUT/llamacpp-$t.gguf")"
  done
  echo "llama.cpp F32: ppl $(llama_ppl "$OUT/f32.gguf")"
fi
