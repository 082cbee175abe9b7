"""PyTorch reference for the training step time of `shrink distill` and `shrink finetune`.

Measures the wall time of one full training step in fp32 on CPU with transformers: (distill only)
a no-grad teacher forward, the student forward, loss, backward, clip_grad_norm_(1.0) and an AdamW
step, on `batch` windows of `seq_len` tokens taken at seeded random offsets of the data file.
distill loss = alpha*CE + (1-alpha)*T^2*KL(softmax(teacher/T) || softmax(student/T)), KL summed over
the vocabulary and averaged over batch*seq_len positions; finetune loss = CE only. Every parameter
trains. The first --warmup-steps steps are not timed. Prints one JSON line to stdout, progress to
stderr.

Teacher: the GGUF (--model) loaded by transformers and dequantized to f32, as bench_torch_eval.py
does. Student: a deep copy of the teacher whose MLPs are resized to the per-layer widths in the
pruned GGUF's `deci.feed_forward_length`, then ALL its weights are loaded from the pruned GGUF
(gguf-py dequantize, plus the Q/K head un-permute that transformers' GGUF loader applies). Without
--pruned the student is a full copy of the teacher.

Run (needs torch, transformers, gguf from PyPI):
    /work/pyenv/ref/bin/python scripts/bench_torch_train.py \
        --pruned target/bench-prune/smollm2-prune-mlp25.gguf
"""
import argparse, copy, json, os, sys, time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--pruned", default=None)
p.add_argument("--data", default="data/wikitext-2/calib.txt")
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq-len", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup-steps", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--alpha", type=float, default=0.5)
p.add_argument("--temperature", type=float, default=2.0)
p.add_argument("--mode", choices=["distill", "finetune"], default="distill")
a = p.parse_args()


def log(*x):
    print(*x, file=sys.stderr, flush=True)


def load_pruned(student, path):
    """Resize each layer's MLP to the pruned width, then load every tensor from the pruned GGUF."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(path)
    widths = [int(w) for w in r.fields["deci.feed_forward_length"].contents()]
    cfg = student.config
    assert len(widths) == len(student.model.layers), (len(widths), len(student.model.layers))
    for layer, n in zip(student.model.layers, widths):
        m = layer.mlp  # keep the first n channels (overwritten from the GGUF below)
        for name, w in (("gate_proj", m.gate_proj.weight[:n]), ("up_proj", m.up_proj.weight[:n]),
                        ("down_proj", m.down_proj.weight[:, :n])):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight = torch.nn.Parameter(w.detach().clone())
            setattr(m, name, lin)
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    state = student.state_dict()
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    loaded = set()
    for t in r.tensors:
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
            [int(x) for x in reversed(t.shape)])
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        else:
            key = f"model.layers.{parts[1]}.{names[parts[2]]}.weight"
        if parts[-2] in ("attn_q", "attn_k"):  # undo llama.cpp's rope permute (as transformers does)
            h = nh if parts[-2] == "attn_q" else nkv
            w = w.reshape(h, w.shape[0] // h // 2, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
        assert tuple(state[key].shape) == w.shape, (t.name, key, tuple(state[key].shape), w.shape)
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(w))
        loaded.add(key)
    missing = [k for k in state if k not in loaded and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    assert not missing, missing
    return widths


torch.set_num_threads(a.threads)
torch.manual_seed(0)
d, f = os.path.split(os.path.abspath(a.model))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
teacher = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
teacher.requires_grad_(False)
student = copy.deepcopy(teacher)
if a.pruned:
    widths = load_pruned(student, a.pruned)
    log(f"student from {a.pruned}: mlp widths {widths}")
student.train()
params = [q.requires_grad_(True) for q in student.parameters()]
n_params = sum(q.numel() for q in params)
log(f"teacher params {sum(q.numel() for q in teacher.parameters())}, student params {n_params}")

ids = torch.tensor(tok(open(a.data, encoding="utf-8").read(), add_special_tokens=False)["input_ids"])
log(f"{len(ids)} tokens in {a.data}")
assert len(ids) > a.seq_len + 1
gen = torch.Generator().manual_seed(0)
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
T, n = a.temperature, a.batch * a.seq_len
times, losses = [], []
for step in range(a.warmup_steps + a.steps):
    offs = torch.randint(0, len(ids) - a.seq_len - 1, (a.batch,), generator=gen)
    win = torch.stack([ids[o:o + a.seq_len + 1] for o in offs.tolist()])
    x, y = win[:, :-1], win[:, 1:]
    t0 = time.perf_counter()
    s = student(x).logits.reshape(n, -1)
    ce = F.cross_entropy(s, y.reshape(n))
    if a.mode == "distill":
        with torch.no_grad():
            t = teacher(x).logits.reshape(n, -1)
        kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                      reduction="sum") / n
        loss = a.alpha * ce + (1 - a.alpha) * T * T * kl
    else:
        loss = ce
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    losses.append(loss.item())
    warm = step < a.warmup_steps
    if not warm:
        times.append(dt)
    log(f"step {step}{' (warmup)' if warm else ''}: loss {losses[-1]:.4f} ce {ce.item():.4f} {dt:.2f}s")

mean = sum(times) / len(times)
print(json.dumps({
    "engine": "pytorch", "mode": a.mode, "batch": a.batch, "seq_len": a.seq_len,
    "tokens_per_step": n, "steps_timed": len(times), "step_seconds_mean": mean,
    "step_seconds_min": min(times), "tokens_per_second": n / mean,
    "loss_first": losses[0], "loss_last": losses[-1], "params": n_params,
    "trainable_params": sum(q.numel() for q in params if q.requires_grad),
    "threads": a.threads, "torch": torch.__version__,
}))
