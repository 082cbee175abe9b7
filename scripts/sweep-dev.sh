#!/usr/bin/env bash
# Chooses a committed setting on the dev splits: runs a committed pipeline once per candidate
# value, each run scoring only the dev texts (every test.txt/heldout.txt the file names becomes
# the dev.txt beside it, and a variant still naming one is refused), and prints one markdown row
# per value. The variants are the committed file with one literal substitution each, written to
# target/sweep/NAME/ next to their --json reports; nothing else is edited.
#   bash scripts/sweep-dev.sh gptq-rounds|gptq-tuned|distill-alpha|lora-steps [VALUE...]
# With VALUEs, only those candidates run (the table then has only their rows). A sweep whose
# variants share a training pass before the swept one resumes its last checkpoint after the first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
name=${1:?usage: sweep-dev.sh NAME [VALUE...]}
shift
only=("$@")

# pipeline, then the literal text the candidates replace, then the value list and the
# replacement with VALUE standing for each value.
case "$name" in
  gptq-rounds)
    pipeline=pipelines/smollm2-q4_0-gptq.ron
    from='gptq: (rounds: 3),'
    to='gptq: (rounds: VALUE),'
    values=(1 2 3) ;;
  gptq-tuned) # steps/lr pairs
    pipeline=pipelines/smollm2-q4_0-gptq-tuned.ron
    from='steps: 128,
                batch: 4,
                seq_len: 256,
                lr: 1e-3,'
    to='steps: STEPS,
                batch: 4,
                seq_len: 256,
                lr: LR,'
    values=(128/2.5e-4 128/5e-4 128/1e-3 64/1e-3) ;;
  distill-alpha)
    pipeline=pipelines/smollm2-prune-mlp25-distill.ron
    from='alpha: 0.5,'
    to='alpha: VALUE,'
    values=(0.25 0.5 0.75 1.0)
    # The teacher correction is the same in every variant: the later ones resume its last step.
    resume=smollm2-prune-mlp25-teacher/step-000048.safetensors ;;
  lora-steps)
    pipeline=pipelines/smollm2-lora-shakespeare.ron
    from='steps: 300,'
    to='steps: VALUE,'
    values=(100 200 300) ;;
  *) echo "unknown sweep $name" >&2; exit 1 ;;
esac
[[ ${#only[@]} -gt 0 ]] && values=("${only[@]}")
resume=${resume:-}

bash scripts/fetch-smollm2.sh >/dev/null
cargo build --release --quiet --bin shrink
out=target/sweep/$name
mkdir -p "$out"
echo "# $name: $pipeline, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "| value | dev ppl | dev ppl after each training pass (its seconds) |"
echo "| --- | --- | --- |"
for v in "${values[@]}"; do
  variant="$out/$(echo "$v" | tr '/' '_').ron"
  python3 - "$pipeline" "$variant" "$from" "$to" "$v" "$root" "$name" <<'PY'
import sys
src, dst, old, new, value, root, name = sys.argv[1:]
text = open(src).read()
if text.count(old) != 1:
    sys.exit(f"{src}: the text to replace occurs {text.count(old)} times, not once")
if "/" in value:
    steps, lr = value.split("/")
    new = new.replace("STEPS", steps).replace("LR", lr)
else:
    new = new.replace("VALUE", value)
text = text.replace(old, new)
# Scored on the dev splits only.
text = text.replace("wikitext-2/test.txt", "wikitext-2/dev.txt")
text = text.replace("tinyshakespeare/heldout.txt", "tinyshakespeare/dev.txt")
for held in ("test.txt", "heldout.txt"):
    if held in text:
        sys.exit(f"{dst} still names {held}")
# Paths relative to the committed file, now from target/sweep/NAME; checkpoints in one directory
# of the sweep (every variant's passes before the swept one are the same, and so are theirs).
text = text.replace('"../', f'"{root}/')
text = text.replace("/target/checkpoints/", f"/target/sweep/{name}/checkpoints/")
open(dst, "w").write(text)
PY
  report="${variant%.ron}.json"
  from_checkpoint=()
  if [[ -n "$resume" && -f "$out/checkpoints/$resume" ]]; then
    from_checkpoint=(--resume "$out/checkpoints/$resume")
  fi
  ./target/release/shrink run "$variant" --model "$MODEL" --out "${variant%.ron}.gguf" --json \
    "${from_checkpoint[@]}" > "$report"
  printf '| %s | %s | %s |\n' "$v" \
    "$(jq -r '.eval.ppl * 1000 | round / 1000' "$report")" \
    "$(jq -r '[.passes[] | select(.stats.heldout_ppl_after != null) | "\(.name) \(.stats.heldout_ppl_after * 1000 | round / 1000) (\(.seconds | round) s)"] | join(", ")' "$report")"
done
