#!/usr/bin/env bash
# The SmolLM2 flagship chain, pipelines/smollm2-flagship.ron (prune MLP 25% → distill → GPTQ q4_0,
# embedding q4_1 → LoRA fine-tune on tiny Shakespeare → fold by GPTQ → GGUF), and what its issue
# checks: the GGUF's size; WikiText-2 test perplexity (20 chunks of 512, second half scored) and
# tiny Shakespeare held-out perplexity (the last 4,000 lines, ctx 512, second half), each beside
# the float model's, all evaluated in the same run on the same device.
# Environment: DEVICE (cpu, cuda; default cpu), SHRINK (a built shrink; default: build one),
# MODEL (default: the fetched SmolLM2 GGUF), OUT_DIR (default target/flagship).
# Writes OUT_DIR/{flagship,input,eval-*}.json and the GGUF, and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT_DIR:-target/flagship}
if [ -z "${SHRINK:-}" ]; then
  bash scripts/fetch-smollm2.sh >/dev/null
  cargo build --release --quiet
  SHRINK=./target/release/shrink
fi
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, device $DEVICE"
start=$(date +%s)
"$SHRINK" run pipelines/smollm2-flagship.ron --model "$MODEL" --device "$DEVICE" \
  --out "$OUT/smollm2-flagship.gguf" --json > "$OUT/flagship.json"
echo "pipeline: $(( $(date +%s) - start )) s"
echo "GGUF: $(stat -c %s "$OUT/smollm2-flagship.gguf") bytes (input $(stat -c %s "$MODEL"))"
ppl() { grep -o '"ppl": *[0-9.]*' "$1" | head -1 | grep -o '[0-9.]*$'; }
# The float model's WikiText-2 perplexity is the run's input row (the pipeline evaluates the
# same text with the same settings); the GGUF is evaluated as written.
grep -o '"input":{[^}]*}' "$OUT/flagship.json" > "$OUT/input.json"
"$SHRINK" eval --model "$OUT/smollm2-flagship.gguf" --device "$DEVICE" --data data/wikitext-2/test.txt \
  --ctx 512 --chunks 20 --score second-half --json > "$OUT/eval-flagship-wikitext.json"
for m in float:"$MODEL" flagship:"$OUT/smollm2-flagship.gguf"; do
  name=${m%%:*}; path=${m#*:}
  "$SHRINK" eval --model "$path" --device "$DEVICE" --data data/tinyshakespeare/heldout.txt \
    --ctx 512 --score second-half --json > "$OUT/eval-$name-shakespeare.json"
done
echo "float: wikitext $(ppl "$OUT/input.json") shakespeare $(ppl "$OUT/eval-float-shakespeare.json")"
echo "flagship: wikitext $(ppl "$OUT/eval-flagship-wikitext.json") shakespeare $(ppl "$OUT/eval-flagship-shakespeare.json")"
