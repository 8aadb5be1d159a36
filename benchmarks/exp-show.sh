#!/usr/bin/env bash
# `sumflow exp show` over 1,000 runs, timed against a Python script that reads the same
# manifests with `json` (see python/bench_exp_show.py). The runs are synthetic copies of one
# real run of pipelines/lab-results.yaml, in a throwaway cache. Needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
./target/release/sumflow --cache "$cache" run pipelines/lab-results.yaml --lock "$cache/p.lock" >/dev/null 2>&1
.venv/bin/python python/bench_exp_show.py ./target/release/sumflow "$cache" "${1:-1000}"
