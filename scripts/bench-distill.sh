#!/usr/bin/env bash
# Recovery after structured pruning: pipelines/smollm2-prune-mlp25-{distill,finetune}.ron on SmolLM2-135M-Instruct
# (teacher correction: 48 steps of 4 × 256 tokens of WikiText-2 calib on the unpruned model; 25% of MLP channels
# removed; then 96 steps of the same data: distillation against the corrected unpruned model, or plain
# cross-entropy, same start, budget, data, schedule and seed). Each training pass scores the WikiText-2 dev
# split (ctx 512, 20 chunks, second half scored) before and after; the pipeline's eval scores test once, at
# the end. Writes target/distill/<name>.json and prints the table rows (dev figures, the gap recovered in
# dev log-ppl to the corrected teacher, then test) and the loss curves.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/distill
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Both pipelines open with the same teacher correction (same options, same checkpoint directory):
# the finetune run resumes it from the distill run's last checkpoint instead of training it again.
TEACHER=target/checkpoints/smollm2-prune-mlp25-teacher/step-000048.safetensors
./target/release/shrink run pipelines/smollm2-prune-mlp25-distill.ron --model "$MODEL" \
  --out "$OUT/smollm2-prune-mlp25-distill.gguf" --json > "$OUT/distill.json"
./target/release/shrink run pipelines/smollm2-prune-mlp25-finetune.ron --model "$MODEL" --resume "$TEACHER" \
  --out "$OUT/smollm2-prune-mlp25-finetune.gguf" --json > "$OUT/finetune.json"
echo "| pipeline | dev: teacher before → after correction | dev: pruned | dev: recovered | gap recovered (dev log-ppl) | test | train s | s/step |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for kind in distill finetune; do
  jq -r --arg k "$kind" '.passes[0].stats as $t | .passes[2] as $p | $p.stats as $s
    | def r: . * 1000 | round / 1000;
    "| smollm2-prune-mlp25-\($k) | \($t.heldout_ppl_before | r) → \($t.heldout_ppl_after | r) | \($s.heldout_ppl_before | r) | \($s.heldout_ppl_after | r) | \((($s.heldout_ppl_before | log) - ($s.heldout_ppl_after | log)) / (($s.heldout_ppl_before | log) - ($t.heldout_ppl_after | log)) * 1000 | round / 10)% | \(.eval.ppl | r) | \($p.seconds | round) | \($s.seconds_per_step * 10 | round / 10) |"' "$OUT/$kind.json"
done
for kind in distill finetune; do
  echo "curve $kind (step loss ce kl):"
  jq -r '.passes[2].stats.curve[] | "\(.step) \(.loss) \(.ce) \(.kl // "-")"' "$OUT/$kind.json"
done
