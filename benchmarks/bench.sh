#!/usr/bin/env bash
# `sumflow bench` and the lab's Python path on the same machine, model and data, in one
# sitting, with the ratio of each sumflow figure to the lab's. Needs `make build` and a model
# folder: bash benchmarks/bench.sh MODEL_DIR [sumflow bench flags...]
# e.g. sumflow make-model --arch flan-t5-base --tokenizer-data ../shared/data/dialogsum --out m
#      bash benchmarks/bench.sh m --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; shift
device=auto; steps=20; one=20; new=40; batched=500; data=../shared/data/dialogsum
python=${PYTHON:-.venv/bin/python}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --device) device=${args[i+1]} ;;
    --train-steps) steps=${args[i+1]} ;;
    --generate-one-at-a-time) one=${args[i+1]} ;;
    --generate) batched=${args[i+1]} ;;
    --max-new-tokens) new=${args[i+1]} ;;
    --data) data=${args[i+1]} ;;
  esac
done
out=${BENCH_OUT:-benchmarks/results}
mkdir -p "$out"
./target/release/sumflow bench --model "$model" --json "$out/sumflow.json" "$@"
"$python" python/bench_lab.py "$model" "$data" "$steps" "$one" "$new" "$device" "$batched" > "$out/lab.json"
"$python" - "$out/sumflow.json" "$out/lab.json" <<'PY'
import json, sys
ours, lab = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
find = lambda prefix: next(f for f in ours["figures"] if f["what"].startswith(prefix))
pairs = [("train, full", "train, full fine-tuning"), ("train, lora", "train, LoRA"), ("generate, one at a time", "generate, batched"),
         ("generate, batched", "generate, batched")]
print(f"\nagainst the lab's Python path (torch {lab['torch']}, {lab['device']}), same model and data:")
mb = lambda f: "/".join(f"{f[k]:.0f}" if f.get(k) is not None else "-" for k in ("peak_rss_mb", "peak_gpu_mb"))
print(f"{'lab path':40} {'lab per s':>10} {'sumflow per s':>14} {'ratio':>8} {'peak MB cpu/gpu: lab':>21} {'sumflow':>12}")
for theirs, mine in pairs:
    t = next((f for f in lab["figures"] if f["what"].startswith(theirs)), None)
    if t is None:
        continue
    m = find(mine)
    print(f"{t['what']:40} {t['per_s']:10.2f} {m['per_s']:14.2f} {m['per_s'] / t['per_s']:7.1f}x {mb(t):>21} {mb(m):>12}   ({m['what']})")
PY
