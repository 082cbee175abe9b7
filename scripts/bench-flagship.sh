#!/usr/bin/env bash
# A SmolLM2 flagship chain end to end in one process: pipelines/$FLAGSHIP.ron (default
# smollm2-flagship; scripts/bench-flagship-short.sh runs smollm2-flagship-short), then what its issue
# checks, each beside the float model's and measured in the same run on the same device: the GGUF's
# size; WikiText-2 test perplexity after every pass (the run's report) and of the GGUF as written
# (20 chunks of 512, second half scored); tiny Shakespeare held-out perplexity, scored once (the last
# 4,000 lines, ctx 512, second half). The training passes score the dev splits (the table's last
# column). Every figure the docs quote for these pipelines comes from one run of this script.
# Environment: FLAGSHIP, DEVICE (cpu, cuda; default cpu), SHRINK (a built shrink; default: build
# one), MODEL (default: the fetched SmolLM2 GGUF), OUT_DIR (default target/$FLAGSHIP).
# Writes OUT_DIR/{run.json,eval-*.json,$FLAGSHIP.gguf,chart.svg} and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGSHIP=${FLAGSHIP:-smollm2-flagship}
DEVICE=${DEVICE:-cpu}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT_DIR:-target/$FLAGSHIP}
if [ -z "${SHRINK:-}" ]; then
  bash scripts/fetch-smollm2.sh >/dev/null
  cargo build --release --quiet --bin shrink
  SHRINK=./target/release/shrink
fi
mkdir -p "$OUT"
gguf="$OUT/$FLAGSHIP.gguf"
echo "# $FLAGSHIP: $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), device $DEVICE"
start=$(date +%s)
"$SHRINK" run "pipelines/$FLAGSHIP.ron" --model "$MODEL" --device "$DEVICE" --out "$gguf" --json > "$OUT/run.json"
echo "pipeline: $(( $(date +%s) - start )) s"
echo "GGUF: $(stat -c %s "$gguf") bytes (input $(stat -c %s "$MODEL"))"
score() { # model text name → OUT/eval-name.json
  "$SHRINK" eval --model "$1" --device "$DEVICE" --data "$2" --ctx 512 --score second-half "${@:4}" \
    --json > "$OUT/eval-$3.json"
}
score "$gguf" data/wikitext-2/test.txt flagship-wikitext --chunks 20
score "$MODEL" data/tinyshakespeare/heldout.txt float-shakespeare
score "$gguf" data/tinyshakespeare/heldout.txt flagship-shakespeare
"$SHRINK" report "$OUT/run.json" --out "$OUT/chart.svg" >/dev/null
echo "| after | seconds | bytes | WikiText-2 test | dev after the pass |"
echo "| --- | --- | --- | --- | --- |"
jq -r 'def r: . * 1000 | round / 1000;
  "| (input) | | \(.input.bytes) | \(.input.ppl | r) | |",
  (.passes | to_entries[] | .value as $p
    | "| \(.key + 1): \($p.name) | \($p.seconds | round) | \($p.bytes) | \($p.ppl | r) | \($p.stats.heldout_ppl_after | if . then r else "" end) |")' "$OUT/run.json"
ppl() { jq -r '.ppl * 1000 | round / 1000' "$OUT/eval-$1.json"; }
echo "the GGUF as written: WikiText-2 test $(ppl flagship-wikitext)"
echo "held-out Shakespeare: float $(ppl float-shakespeare), $FLAGSHIP $(ppl flagship-shakespeare)"
echo "chart: $OUT/chart.svg"
