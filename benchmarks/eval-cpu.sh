#!/usr/bin/env bash
# The 500-dialogue evaluation on the CPU, timed: sumflow's batched `generate` in fp32 and bf16
# over the whole test split, then Python transformers' `generate` one dialogue at a time (the
# lab's loop) on every 75th test row (20 dialogues: the whole split would take most of an
# hour), and the table with ratios. Needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
export SUMFLOW_CACHE=${SUMFLOW_CACHE:-cache}
sumflow=./target/release/sumflow
$sumflow run benchmarks/eval-cpu.yaml --jobs 1 --force eval-fp32 --force eval-bf16 "$@" >/dev/null
manifest=$(ls -t "$SUMFLOW_CACHE"/runs/*.json | head -1)
model=$SUMFLOW_CACHE/artifacts/$(.venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print([s for s in m['stages'] if s['id']=='model'][0]['outputs']['model']['digest'])" "$manifest")
.venv/bin/python python/bench_generate.py "$manifest" "$model" ../shared/data/dialogsum/test.csv 75 40
