"""PyTorch baseline for `shrink eval`: transformers in fp32 on the same model (the SmolLM2 Q4_1
GGUF dequantized to f32), the same file, the same chunks and scoring. Prints one JSON object.

Run by hand (needs torch, transformers, gguf, accelerate from PyPI):
    python scripts/bench_torch_eval.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data data/wikitext-2/test.txt --ctx 512 --chunks 20 --threads 2
"""
import argparse, json, math, os, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--ctx", type=int, default=512)
p.add_argument("--chunks", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.set_num_threads(a.threads)
d, f = os.path.split(os.path.abspath(a.model))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
ids = tok(open(a.data, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
first = a.ctx // 2
nll, count = 0.0, 0
start = time.perf_counter()
with torch.inference_mode():
    for c in range(a.chunks):
        chunk = torch.tensor([ids[c * a.ctx:(c + 1) * a.ctx]])
        logits = model(chunk).logits[0, first:a.ctx - 1].float()
        lp = torch.log_softmax(logits, dim=-1)
        tgt = chunk[0, first + 1:a.ctx]
        nll -= lp.gather(1, tgt[:, None]).sum().item()
        count += len(tgt)
secs = time.perf_counter() - start
print(json.dumps({
    "ppl": math.exp(nll / count), "tokens_scored": count, "tokens_in_file": len(ids),
    "seconds": secs, "tokens_per_second": a.chunks * a.ctx / secs,
    "threads": a.threads, "torch": torch.__version__,
}))
