"""Compares the tensors of two GGUF files byte for byte (by name): e.g. shrink's q8_0 export of
SmolLM2 against llama-quantize's Q8_0 of the same float model. Needs the `gguf` package.

    python scripts/compare_gguf_tensors.py target/bench-quant/smollm2-q8_0-rtn.gguf \
        target/bench-quant/llamacpp-Q8_0.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader


def tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def main(a_path, b_path):
    a, b = tensors(a_path), tensors(b_path)
    same, differ = 0, []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            differ.append(f"{name}: only in {'first' if name in a else 'second'}")
            continue
        ta, tb = a[name], b[name]
        if ta.tensor_type != tb.tensor_type or list(ta.shape) != list(tb.shape):
            differ.append(f"{name}: {ta.tensor_type.name}{list(ta.shape)} vs {tb.tensor_type.name}{list(tb.shape)}")
        elif not np.array_equal(np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8)):
            n = int((np.asarray(ta.data).view(np.uint8) != np.asarray(tb.data).view(np.uint8)).sum())
            differ.append(f"{name}: {ta.tensor_type.name}, {n} bytes differ")
        else:
            same += 1
    print(f"{same} tensors identical, {len(differ)} differ")
    for d in differ:
        print("  " + d)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
