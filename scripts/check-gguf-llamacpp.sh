#!/usr/bin/env bash
# shrink's GGUF export of each tiny fixture family, scored by llama.cpp's llama-perplexity beside
# `shrink eval` on the same file, text and settings (ctx 128, 8 chunks, second half scored).
# Prints one row per family and fails if the two differ by more than 0.5%.
#   LLAMACPP=<dir of llama.cpp's tools> bash scripts/check-gguf-llamacpp.sh
# (llama.cpp: the CPU tools built from the llama-cpp-python==0.3.36 sdist, vendor/llama.cpp.)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMACPP:?set LLAMACPP to the directory holding llama-perplexity}"
SHRINK=${SHRINK:-target/release/shrink}
[[ -n "${SHRINK_PREBUILT:-}" ]] || cargo build --release --quiet --bin shrink
out=target/check-gguf-llamacpp
mkdir -p "$out"
head -c 20000 data/wikitext-2/test.txt > "$out/text.txt"
printf '(passes: [(pass: "dead-code")])\n' > "$out/noop.ron"
echo "| fixture | architecture | ppl shrink | ppl llama.cpp | difference |"
echo "| --- | --- | --- | --- | --- |"
status=0
# llama.cpp computes Phi-3 without its sliding window ("Phi SWA is currently disabled"), so
# tiny-phi3 is checked without it (its window of 16 is shorter than the context). Its copy is not
# named "phi3": llama.cpp gives a model of that name Phi-3's special-token attributes, which the
# tiny tokenizer lacks.
# llama.cpp scales Gemma's scores by 1/sqrt(head_dim) (it has no key for query_pre_attn_scalar),
# so the Gemma fixtures are checked as copies with query_pre_attn_scalar = head_dim.
copy_with() { # FIXTURE NAME PATCH: config.json with the JSON object PATCH merged in
  rm -rf "$out/$2"
  cp -r "fixtures/$1" "$out/$2"
  python3 - "$out/$2/config.json" "$3" <<'PY'
import json, sys
path, patch = sys.argv[1], json.loads(sys.argv[2])
c = json.load(open(path))
for k, v in patch.items():
    if isinstance(v, dict):
        c.setdefault(k, {}).update(v)
    else:
        c[k] = v
json.dump(c, open(path, "w"), indent=2)
PY
}
copy_with tiny-phi3 tiny-phi-nowindow '{"sliding_window": null}'
copy_with tiny-phi3 tiny-phi-partial '{"sliding_window": null, "partial_rotary_factor": 0.5,
  "rope_parameters": {"partial_rotary_factor": 0.5}}'
copy_with tiny-gemma2 tiny-g2-qpas24 '{"query_pre_attn_scalar": 24}'
copy_with tiny-gemma3 tiny-g3-qpas24 '{"query_pre_attn_scalar": 24}'
# YaRN: tiny-qwen3's weights under fixtures/tiny-qwen3/config_yarn.json (make_yarn_golden.py).
rm -rf "$out/tiny-qwen3-yarn"
cp -r fixtures/tiny-qwen3 "$out/tiny-qwen3-yarn"
cp fixtures/tiny-qwen3/config_yarn.json "$out/tiny-qwen3-yarn/config.json"
for m in tiny-llama tiny-llama3 tiny-qwen2 tiny-qwen3 tiny-qwen3-yarn tiny-phi-nowindow \
  tiny-phi-partial tiny-g2-qpas24 tiny-g3-qpas24; do
  gguf="$out/$m.gguf"
  src="fixtures/$m"
  [[ -d "$src" ]] || src="$out/$m"
  "$SHRINK" run "$out/noop.ron" --model "$src" --out "$gguf" >/dev/null 2>&1
  ours=$("$SHRINK" eval --model "$gguf" --data "$out/text.txt" --ctx 128 --chunks 8 \
    --score second-half --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  theirs=$("$LLAMACPP/llama-perplexity" -m "$gguf" -f "$out/text.txt" -c 128 --chunks 8 -t "$(nproc)" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  arch=$("$SHRINK" inspect "$gguf" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["architecture"])')
  row=$(python3 - "$ours" "$theirs" <<'PY'
import sys
a, b = (float(x) for x in sys.argv[1:])
d = abs(a - b) / b * 100
print(f"{a:.4f} | {b:.4f} | {d:.3f}% | {'ok' if d <= 0.5 else 'FAIL'}")
PY
)
  echo "| $m | $arch | ${row% | *} |"
  [[ "$row" == *FAIL ]] && status=1
done
exit $status
