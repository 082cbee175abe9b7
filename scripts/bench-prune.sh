#!/usr/bin/env bash
# The pruning table of docs/pruning.md: the six smollm2-prune*.ron pipelines run on
# SmolLM2-135M-Instruct (prune every decoder linear by magnitude, Wanda or SparseGPT, at 50%
# unstructured or 2:4, then eval on WikiText-2 test: ctx 512, 20 chunks, second half scored),
# one after the other. ONLY=<substring> runs the matching pipelines alone.
# Writes target/bench-prune/<name>.json (the run table in <name>.log) and prints one markdown row
# per pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/bench-prune
ONLY=${ONLY:-}
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@"; }
row pipeline criterion pattern "sparsity reached" params bytes "ppl (shrink)" "prune s"
for crit in magnitude wanda sparsegpt; do
  for kind in 50 24; do
    name=smollm2-prune$kind-$crit
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
    ./target/release/shrink run "pipelines/$name.ron" --model "$MODEL" --out "$OUT/$name.gguf" --json > "$OUT/$name.json" 2> "$OUT/$name.log"
    p='.passes[] | select(.name=="prune")'
    pattern=$(jq -r "$p | .options" "$OUT/$name.json" | sed -n 's/.*nm: Some((\([0-9]*\), \([0-9]*\))).*/\1:\2/p')
    row "$name" "$crit" "${pattern:-unstructured}" \
      "$(jq -r "$p | .stats.sparsity_overall" "$OUT/$name.json")" \
      "$(jq -r "$p | .stats.params_pruned" "$OUT/$name.json") of $(jq -r "$p | .stats.params_targeted" "$OUT/$name.json")" \
      "$(jq -r "$p | .bytes" "$OUT/$name.json")" \
      "$(jq -r '.eval.ppl * 1000 | round / 1000' "$OUT/$name.json")" \
      "$(jq -r "$p | .seconds * 10 | round / 10" "$OUT/$name.json")"
  done
done
