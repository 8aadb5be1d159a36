#!/usr/bin/env bash
# Push and pull of the same artifacts with sumflow and with DVC, to the same S3-protocol server
# (moto, from the test venv, on 127.0.0.1), in one run: a random-init flan-t5-base model folder
# (990 MB of safetensors, `make-model`) plus the lab's small outputs (the lab-results pipeline:
# table, scores, report). Verification on for both: sumflow re-hashes every artifact before a
# push and every object as it is pulled (always); DVC's remote gets `verify = true`, so `dvc
# pull` re-hashes what it downloads (its default trusts the remote). DVC's own hashing at `dvc
# add` is not timed (sumflow's happened when the stage ran). Each pull starts from an empty
# local cache. Needs `make build`; installs dvc + dvc-s3 into benchmarks/.dvc-venv if missing.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
sumflow=$PWD/target/release/sumflow
dvc_venv=benchmarks/.dvc-venv
if [ ! -x "$dvc_venv/bin/dvc" ]; then
    python3 -m venv "$dvc_venv"
    "$dvc_venv/bin/pip" install --quiet --disable-pip-version-check dvc==3.67.1 dvc-s3==3.3.0
fi
dvc=$PWD/$dvc_venv/bin/dvc
dir=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$dir"' EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
for _ in $(seq 100); do .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.1; done
.venv/bin/python -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT').create_bucket(Bucket='bench')"

# The artifacts: one pipeline holding both.
data=$(realpath ../shared/data)
cat >"$dir/bench.yaml" <<EOF
name: remote-bench
stages:
  model: {kind: make-model, arch: flan-t5-base, tokenizer_data: $data/dialogsum}
  results: {kind: load, path: $data/lab-results/dialogue-summary-training-results.csv}
  scores:
    kind: score
    input: results.all
    references: human_baseline_summaries
    predictions: [original_model_summaries, instruct_model_summaries, peft_model_summaries]
    baseline: original_model_summaries
  report: {kind: report, input: results.all, examples: []}
EOF
(cd "$dir" && $sumflow --cache cache run bench.yaml >"$dir/setup.log" 2>&1) || { cat "$dir/setup.log" >&2; exit 1; }
# Bytes of the files under a folder (what both tools move).
file_bytes() { find "$1" -type f ! -name '*.dvc' ! -name .gitignore -printf '%s\n' | awk '{s += $1} END {print s}'; }
bytes=$(file_bytes "$dir/cache/artifacts")
files=$(find "$dir/cache/artifacts" -type f | wc -l)

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

# sumflow: push, then pull into an empty cache.
t=$(now); (cd "$dir" && $sumflow --cache cache push bench.yaml --remote s3://bench/sumflow >/dev/null); sf_push=$(elapsed "$t")
t=$(now); (cd "$dir" && $sumflow --cache pulled pull bench.yaml --remote s3://bench/sumflow >/dev/null); sf_pull=$(elapsed "$t")
[ "$(file_bytes "$dir/pulled/artifacts")" = "$bytes" ] || { echo "sumflow pulled a different size" >&2; exit 1; }

# DVC: the same folders, tracked and pushed; then pulled into an empty DVC cache.
mkdir "$dir/dvc" && cd "$dir/dvc"
$dvc init --no-scm -q
$dvc remote add -d bench s3://bench/dvc >/dev/null
$dvc remote modify bench endpointurl "$AWS_ENDPOINT"
$dvc remote modify bench verify true
cp -r "$dir/cache/artifacts" artifacts
$dvc add -q artifacts/*
t=$(now); $dvc push -q; dvc_push=$(elapsed "$t")
rm -rf .dvc/cache artifacts/*/
t=$(now); $dvc pull -q; dvc_pull=$(elapsed "$t")
[ "$(file_bytes artifacts)" = "$bytes" ] || { echo "dvc pulled a different size" >&2; exit 1; }

printf 'push and pull of %d files, %.0f MB (a flan-t5-base model folder and the lab'"'"'s small outputs), moto S3 on 127.0.0.1, verification on\n' "$files" "$(echo "$bytes / 1000000" | bc -l)"
printf '%-8s %10s %10s %12s\n' "" "sumflow s" "DVC s" "DVC/sumflow"
printf '%-8s %10.2f %10.2f %11.2fx\n' push "$sf_push" "$dvc_push" "$(echo "$dvc_push / $sf_push" | bc -l)"
printf '%-8s %10.2f %10.2f %11.2fx\n' pull "$sf_pull" "$dvc_pull" "$(echo "$dvc_pull / $sf_pull" | bc -l)"
printf '(%s; dvc %s)\n' "$($sumflow --version)" "$($dvc --version)"
