#!/usr/bin/env bash
# The structured-pruning rows of docs/BENCHMARKS.md: pipelines/smollm2-prune-{mlp25,depth4,depth4-last}.ron
# run on SmolLM2-135M-Instruct (prune, then eval on WikiText-2 test: ctx 512, 20 chunks, second half scored),
# then the eval speed of the MLP-pruned model against the unpruned one, measured in this run: `shrink eval`
# with the same settings and --quantized-exec dequantize (both compute with dense f32 weights), alternating
# the two models RUNS times. With LLAMACPP=<dir of llama.cpp's tools>, llama-perplexity scores each GGUF too.
# With SPEED_ONLY=1, only the eval speed (the pruned GGUF from an earlier run must be there).
# Writes target/bench-prune/<name>.json and prints markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/wikitext-2/test.txt
OUT=target/bench-prune
RUNS=${RUNS:-2}
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
row pipeline params "MLP params" bytes "ppl (shrink)" "prune s"
mlp_params() { # model → parameters of every mlp.* tensor, from the IR's param lines
  ./target/release/shrink inspect "$1" --ir | grep '^param .*\.mlp\.' |
    sed 's/.*\[\([0-9]*\), \([0-9]*\)\]$/\1 \2/' | awk '{ n += $1 * $2 } END { print n }'
}
names="smollm2-prune-mlp25 smollm2-prune-depth4 smollm2-prune-depth4-last"
[[ -n "${SPEED_ONLY:-}" ]] && names=""
for name in $names; do
  out="$OUT/$name.gguf"
  ./target/release/shrink run "pipelines/$name.ron" --model "$MODEL" --out "$out" --json > "$OUT/$name.json"
  q='.passes[] | select(.name=="prune-structured")'
  row "$name" "$(jq -r "$q | .params" "$OUT/$name.json")" "$(mlp_params "$out")" "$(jq -r "$q | .bytes" "$OUT/$name.json")" \
    "$(jq -r '.eval.ppl * 1000 | round / 1000' "$OUT/$name.json")" "$(jq -r "$q | .seconds * 10 | round / 10" "$OUT/$name.json")"
  if [[ -n "${LLAMACPP:-}" ]]; then
    echo "llama-perplexity $name: $("$LLAMACPP/llama-perplexity" -m "$out" -f "$DATA" -c 512 --chunks 20 -t "$(nproc)" 2>&1 |
      sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')"
  fi
done
echo "unpruned MLP params: $(mlp_params "$MODEL")"
eval_tps() { # model → tokens/s of shrink eval
  ./target/release/shrink eval --model "$1" --data "$DATA" --ctx 512 --chunks 20 --score second-half \
    --quantized-exec dequantize --json | jq '.tokens_per_second'
}
for i in $(seq "$RUNS"); do
  base=$(eval_tps "$MODEL")
  pruned=$(eval_tps "$OUT/smollm2-prune-mlp25.gguf")
  echo "eval run $i: unpruned $base tokens/s, mlp25 $pruned tokens/s, speed-up $(jq -n "$pruned / $base * 1000 | round / 1000")"
done
