#!/usr/bin/env bash
# The CPU flagship, pipelines/smollm2-flagship-short.ron, end to end in one process (about two
# hours on 2 cores), then held-out Shakespeare scored once on the float model and on the GGUF it
# wrote, and the chart drawn from the run's report. Every figure docs/BENCHMARKS.md and README
# quote for this pipeline comes from one run of this script.
# Environment: DEVICE (cpu, cuda; default cpu), SHRINK (a built shrink; default: build one),
# MODEL (default: the fetched SmolLM2 GGUF), OUT_DIR (default target/flagship-short).
# Writes OUT_DIR/{run.json,eval-*.json,smollm2-flagship-short.gguf,chart.svg} and prints the
# summary: WikiText-2 test after every pass, the dev splits after each training pass.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT_DIR:-target/flagship-short}
if [ -z "${SHRINK:-}" ]; then
  bash scripts/fetch-smollm2.sh >/dev/null
  cargo build --release --quiet --bin shrink
  SHRINK=./target/release/shrink
fi
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), device $DEVICE"
start=$(date +%s)
"$SHRINK" run pipelines/smollm2-flagship-short.ron --model "$MODEL" --device "$DEVICE" \
  --out "$OUT/smollm2-flagship-short.gguf" --json > "$OUT/run.json"
echo "pipeline: $(( $(date +%s) - start )) s"
echo "GGUF: $(stat -c %s "$OUT/smollm2-flagship-short.gguf") bytes (input $(stat -c %s "$MODEL"))"
for m in float:"$MODEL" flagship-short:"$OUT/smollm2-flagship-short.gguf"; do
  name=${m%%:*}; path=${m#*:}
  "$SHRINK" eval --model "$path" --device "$DEVICE" --data data/tinyshakespeare/heldout.txt \
    --ctx 512 --score second-half --json > "$OUT/eval-$name-shakespeare.json"
done
"$SHRINK" report "$OUT/run.json" --out "$OUT/chart.svg" >/dev/null
echo "| after | seconds | bytes | WikiText-2 test | dev after the pass |"
echo "| --- | --- | --- | --- | --- |"
jq -r '"| (input) | | \(.input.bytes) | \(.input.ppl * 1000 | round / 1000) | |",
  (.passes | to_entries[] | "| \(.key + 1): \(.value.name) | \(.value.seconds | round) | \(.value.bytes) | \(.value.ppl * 1000 | round / 1000) | \(.value.stats.heldout_ppl_after // "" | if . == "" then "" else (. * 1000 | round / 1000) end) |")' "$OUT/run.json"
shk() { jq -r '.ppl * 1000 | round / 1000' "$1"; }
echo "held-out Shakespeare: float $(shk "$OUT/eval-float-shakespeare.json"), flagship-short $(shk "$OUT/eval-flagship-short-shakespeare.json")"
echo "chart: $OUT/chart.svg"
