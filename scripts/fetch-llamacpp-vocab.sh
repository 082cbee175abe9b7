#!/usr/bin/env bash
# Fetches llama.cpp's vocabulary-only GGUFs (models/ggml-vocab-*.gguf and their .inp test texts)
# from the source tree vendored in the PyPI sdist of llama-cpp-python==0.3.36 into models/vocab/
# (git-ignored). The tokenizer tests compare shrink with llama.cpp's tokenizations of them
# (fixtures/vocab/). Idempotent: does nothing when every file is there with its checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import hashlib, io, json, os, sys, tarfile, urllib.request

SDIST_SHA = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
want = json.load(open("fixtures/vocab/SHA256SUMS.json"))
dest = "models/vocab"

def ok(name):
    p = os.path.join(dest, name)
    return os.path.exists(p) and hashlib.sha256(open(p, "rb").read()).hexdigest() == want[name]

if all(ok(n) for n in want):
    print(f"{dest} is present"); sys.exit(0)
# PyPI's simple index (PEP 691 JSON), the API pip itself uses.
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req))["files"]
url = next(f["url"] for f in files if f["filename"] == "llama_cpp_python-0.3.36.tar.gz")
data = urllib.request.urlopen(url).read()
if hashlib.sha256(data).hexdigest() != SDIST_SHA:
    sys.exit(f"checksum mismatch for {url}")
os.makedirs(dest, exist_ok=True)
prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for name in want:
        body = tar.extractfile(prefix + name).read()
        if hashlib.sha256(body).hexdigest() != want[name]:
            sys.exit(f"checksum mismatch for {name}")
        with open(os.path.join(dest, name + ".part"), "wb") as f:
            f.write(body)
        os.replace(os.path.join(dest, name + ".part"), os.path.join(dest, name))
print(f"fetched {len(want)} files into {dest}")
PY
