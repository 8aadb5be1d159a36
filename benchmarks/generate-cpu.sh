#!/usr/bin/env bash
# Times generation three ways on the same rows and model, in one sitting, and prints the table:
# sumflow's batched stage, sumflow's one-at-a-time mode (the lab's loop), and Python
# transformers' `generate` one at a time (the lab's own code path). Needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
export SUMFLOW_CACHE=${SUMFLOW_CACHE:-cache}
sumflow=./target/release/sumflow
$sumflow run benchmarks/generate-cpu.yaml --jobs 1 --force lab-loop --force batched "$@" >/dev/null
manifest=$(ls -t "$SUMFLOW_CACHE"/runs/*.json | head -1)
model=$SUMFLOW_CACHE/artifacts/$(.venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print([s for s in m['stages'] if s['id']=='model'][0]['outputs']['model']['digest'])" "$manifest")
.venv/bin/python python/bench_generate.py "$manifest" "$model" ../shared/data/dialogsum/test.csv 75 64
