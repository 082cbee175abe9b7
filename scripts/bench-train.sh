#!/usr/bin/env bash
# Training step time of shrink against PyTorch on the same setup, one after the other in one run:
# SmolLM2-135M-Instruct pruned by pipelines/smollm2-prune-mlp25.ron as the student, the unpruned model as
# the teacher, every parameter training, batches of BATCH × SEQ tokens of WikiText-2 valid, AdamW, clipping
# at 1.0; `distill` (teacher forward + student forward/backward + step) and `finetune` (no teacher). STEPS
# steps each, the first one not timed. PyTorch: scripts/bench_torch_train.py (transformers, fp32, 2
# threads; PYTHON with torch, transformers, gguf). Prints one JSON line per engine and mode, then markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-4}
BATCH=${BATCH:-4}
SEQ=${SEQ:-256}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
PRUNED=target/bench-prune/smollm2-prune-mlp25.gguf
OUT=target/bench-train
bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
if [[ ! -f "$PRUNED" ]]; then
  mkdir -p "$(dirname "$PRUNED")"
  ./target/release/shrink run pipelines/smollm2-prune-mlp25.ron --model "$MODEL" --out "$PRUNED" >/dev/null
fi
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
rows=()
for mode in distill finetune; do
  if [[ $mode == distill ]]; then
    head="(pass: \"distill\", options: (teacher_model: \"../../$MODEL\", alpha: 0.5, temperature: 2.0, train: "
  else
    head="(pass: \"finetune\", options: (train: "
  fi
  cat > "$OUT/$mode.ron" <<RON
(passes: [$head(data: "../../data/wikitext-2/calib.txt", steps: $STEPS, batch: $BATCH, seq_len: $SEQ, lr: 1e-4, warmup: 1)))])
RON
  ./target/release/shrink run "$OUT/$mode.ron" --model "$PRUNED" --json > "$OUT/$mode.json"
  shrink_s=$(jq '[.passes[0].stats.curve[1:][].seconds] | add / length' "$OUT/$mode.json")
  echo "{\"engine\":\"shrink\",\"mode\":\"$mode\",\"batch\":$BATCH,\"seq_len\":$SEQ,\"steps_timed\":$((STEPS - 1)),\"step_seconds_mean\":$shrink_s}"
  torch_json=$("$PYTHON" scripts/bench_torch_train.py --model "$MODEL" --pruned "$PRUNED" --mode "$mode" \
    --batch "$BATCH" --seq-len "$SEQ" --steps $((STEPS - 1)) --warmup-steps 1 --threads 2 2>/dev/null)
  echo "$torch_json"
  torch_s=$(echo "$torch_json" | jq '.step_seconds_mean')
  rows+=("$(printf '| %s | %s × %s | %.1f | %.1f | %.2f |' "$mode" "$BATCH" "$SEQ" "$shrink_s" "$torch_s" \
    "$(echo "$shrink_s / $torch_s" | bc -l)")")
done
echo "| mode | batch × seq | shrink s/step | PyTorch s/step | ratio |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
