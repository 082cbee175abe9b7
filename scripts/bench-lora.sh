#!/usr/bin/env bash
# LoRA fine-tune of SmolLM2-135M-Instruct on tiny Shakespeare: pipelines/smollm2-lora-shakespeare.ron (r=8,
# alpha=16 on q/k/v/o and the MLP projections; 300 steps of 2 × 512 tokens of train.txt; folded).
# The finetune pass scores the dev lines (ctx 512, every chunk, second half scored) before and after;
# the pipeline's eval scores the held-out last 4,000 lines once, after the fold. The adapter file size
# is that of the same adapters written as a PEFT directory
# (pipelines/smollm2-lora-random.ron: same targets and rank, so the same tensors and bytes).
# Writes target/lora/*.json and prints the table row, the adapter size and the loss curve.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/lora
DEVICE=${DEVICE:-cpu}
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), device $DEVICE"
./target/release/shrink run pipelines/smollm2-lora-shakespeare.ron --model "$MODEL" --device "$DEVICE" \
  --out "$OUT/smollm2-lora-shakespeare.gguf" --json > "$OUT/shakespeare.json"
./target/release/shrink run pipelines/smollm2-lora-random.ron --model "$MODEL" --out "$OUT/adapter" --json > "$OUT/adapter.json"
echo "| pipeline | trainable params | dev ppl before | after | change | held-out ppl (folded) | train s | s/step | tok/s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
jq -r '.passes[0].stats as $l | .passes[1] as $p | $p.stats as $s
  | "| smollm2-lora-shakespeare | \($l.trainable_params) | \($s.heldout_ppl_before * 1000 | round / 1000) | \($s.heldout_ppl_after * 1000 | round / 1000) | \((($s.heldout_ppl_after / $s.heldout_ppl_before) - 1) * 1000 | round / 10)% | \(.eval.ppl * 1000 | round / 1000) | \($p.seconds | round) | \($s.seconds_per_step * 10 | round / 10) | \($s.tokens_per_second | round) |"' "$OUT/shakespeare.json"
echo "adapter directory: $(du -b "$OUT"/adapter/adapter_model.safetensors | cut -f1) bytes (safetensors), $(du -b "$OUT"/adapter/adapter_config.json | cut -f1) bytes (config)"
echo "curve (step loss lr grad_norm):"
jq -r '.passes[1].stats.curve[] | "\(.step) \(.loss) \(.lr) \(.grad_norm)"' "$OUT/shakespeare.json"
