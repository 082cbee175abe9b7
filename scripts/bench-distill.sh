#!/usr/bin/env bash
# Recovery after structured pruning: pipelines/smollm2-prune-mlp25-{distill,finetune}.ron on SmolLM2-135M-Instruct
# (25% of MLP channels removed, then 48 steps of 4 × 256 tokens of WikiText-2 valid: distillation against the
# unpruned model, or plain cross-entropy, same budget, data, schedule and seed). Each pass reports WikiText-2
# test perplexity (ctx 512, 20 chunks, second half scored) before and after. Writes target/distill/<name>.json
# and prints the table rows and the loss curves.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/distill
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for kind in distill finetune; do
  name=smollm2-prune-mlp25-$kind
  ./target/release/shrink run "pipelines/$name.ron" --model "$MODEL" --out "$OUT/$name.gguf" --json > "$OUT/$kind.json"
done
echo "| pipeline | ppl before | ppl after | gap recovered (log-ppl) | train s | s/step |"
echo "| --- | --- | --- | --- | --- | --- |"
for kind in distill finetune; do
  jq -r --arg k "$kind" '.passes[1] as $p | $p.stats as $s
    | (23.011271 | log) as $ref
    | "| smollm2-prune-mlp25-\($k) | \($s.heldout_ppl_before * 1000 | round / 1000) | \($s.heldout_ppl_after * 1000 | round / 1000) | \((($s.heldout_ppl_before | log) - ($s.heldout_ppl_after | log)) / (($s.heldout_ppl_before | log) - $ref) * 1000 | round / 10)% | \($p.seconds | round) | \($s.seconds_per_step * 10 | round / 10) |"' "$OUT/$kind.json"
done
for kind in distill finetune; do
  echo "curve $kind (step loss ce kl):"
  jq -r '.passes[1].stats.curve[] | "\(.step) \(.loss) \(.ce) \(.kl // "-")"' "$OUT/$kind.json"
done
