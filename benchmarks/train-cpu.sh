#!/usr/bin/env bash
# Training on the CPU, timed: `sumflow bench` on the flan-t5-base shape in fp32 and in bf16
# autocast (4 steps of 4,096-token batches per method; the first warms up, untimed), then the
# lab's Python settings on the same model (fp32 on the CPU, rows padded to 512; batches of 4,
# as the lab's 8 need more than 24 GiB here; 2 timed steps after a warm-up), and the table
# with ratios. Needs `make build`; about 10 minutes on 2 cores. MODEL: a flan-t5-base-shape
# folder (made here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/dialogsum
model=${MODEL:-cache/models/flan-t5-base}
out=${BENCH_OUT:-benchmarks/results}
python=${PYTHON:-.venv/bin/python}
sumflow=./target/release/sumflow
mkdir -p "$out"
[ -f "$model/model.safetensors" ] || $sumflow make-model --arch flan-t5-base --tokenizer-data $data --out "$model"
for dtype in fp32 bf16; do
  $sumflow bench --model "$model" --device cpu --dtype $dtype --train-steps 4 --batch-tokens 4096 \
    --generate 0 --generate-one-at-a-time 0 --json "$out/train-cpu-$dtype.json" >/dev/null
done
"$python" python/bench_lab.py "$model" $data 2 0 1 cpu 0 4 > "$out/train-cpu-lab.json"
"$python" - "$out" <<'PY'
import json, os, platform, sys
out = sys.argv[1]
ours = {d: json.load(open(f"{out}/train-cpu-{d}.json")) for d in ("fp32", "bf16")}
lab = json.load(open(f"{out}/train-cpu-lab.json"))
print(f"training, flan-t5-base shape, CPU ({platform.machine()}, {ours['fp32']['runtime'].get('torch_threads', '?')} torch threads)")
print(f"{'path':54} {'dialogues/s':>11} {'real tok/s':>10} {'peak MB':>8} {'vs lab':>7}")
for method, lab_name, our_name in (("full", "train, full", "train, full"), ("LoRA", "train, lora", "train, LoRA")):
    base = next(f for f in lab["figures"] if f["what"].startswith(lab_name))
    print(f"{'Python, lab settings (' + method + ', fp32, 512-padded, 4 rows)':54} {base['per_s']:11.2f} {base['tokens_per_s']:10.0f} {base['peak_rss_mb']:8.0f} {1:6.2f}x")
    for d in ("fp32", "bf16"):
        f = next(f for f in ours[d]["figures"] if f["what"].startswith(our_name))
        label = f"sumflow {method}, {d}" + (" autocast" if d == "bf16" else "")
        print(f"{label:54} {f['per_s']:11.2f} {f['tokens_per_s']:10.0f} {f['peak_rss_mb']:8.0f} {f['per_s'] / base['per_s']:6.2f}x")
PY
