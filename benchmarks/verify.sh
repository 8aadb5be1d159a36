#!/usr/bin/env bash
# What checking an artifact's digest before each use costs, on the lab's largest artifact: a
# random-init flan-t5-base model folder (990 MB of safetensors, `make-model`) in a throwaway
# cache. Times `sumflow cache verify` (blake3 over every file of every artifact), less the
# process's start-up (`sumflow --version`), against md5 (DVC's hash) and sha256 over the same
# weights file, best of 3, with the file in the page cache. Needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
sumflow=./target/release/sumflow
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf 'name: verify-bench\nstages:\n  model: {kind: make-model, arch: flan-t5-base, tokenizer_data: ../shared/data/dialogsum}\n' > "$dir/p.yaml"
$sumflow --cache "$dir/cache" run "$dir/p.yaml" >/dev/null 2>&1
weights=$(find "$dir/cache/artifacts" -name model.safetensors)
.venv/bin/python - "$sumflow" "$dir/cache" "$weights" <<'PY'
import hashlib, os, subprocess, sys, time

sumflow, cache, weights = sys.argv[1:]
def best(f, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return min(times)
def run(*args):
    return lambda: subprocess.run([sumflow, "--cache", cache, *args], check=True, capture_output=True)
def hashed(name):
    def f():
        h = hashlib.new(name)
        with open(weights, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return f
def tool(cmd):
    return lambda: subprocess.run([cmd, weights], check=True, capture_output=True)
size = os.path.getsize(weights)
best(hashed("md5"), 1)  # into the page cache
start = best(run("--version"))
verify = best(run("cache", "verify")) - start
rows = [
    ("sumflow cache verify, blake3 (less start-up)", verify),
    ("md5sum (coreutils; DVC's hash)", best(tool("md5sum"))),
    ("Python hashlib md5 (OpenSSL)", best(hashed("md5"))),
    ("sha256sum (coreutils)", best(tool("sha256sum"))),
    ("Python hashlib sha256 (OpenSSL)", best(hashed("sha256"))),
]
print(f"digest of a flan-t5-base model artifact ({size / 1e6:.0f} MB), page cache warm, best of 3")
print(f"{'path':<48}{'seconds':>9}{'GB/s':>8}{'vs md5sum':>11}")
for name, t in rows:
    print(f"{name:<48}{t:>9.3f}{size / t / 1e9:>8.2f}{rows[1][1] / t:>10.2f}x")
print(f"(sumflow's start-up, --version: {start:.3f} s)")
PY
