#!/usr/bin/env bash
# Start-up of the runner: `--version`, `validate`, `plan` and an all-hit `run` of
# pipelines/lab-results.yaml, timed by hyperfine (mean and median of RUNS) with each command's
# peak resident memory (/usr/bin/time, the median of RUNS), for `target/release/sumflow` (the
# runner: no libtorch) against BEFORE, a sumflow binary that loads libtorch (the release
# binary from before model stages moved into workers). Also `ldd` of the runner, which must
# list no libtorch. Needs `make build`; hyperfine from Debian's package.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
now=./target/release/sumflow
before=${BEFORE:?set BEFORE to a sumflow binary that links libtorch}
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }

echo "== ldd $now (libtorch, c10, CUDA)"
ldd "$now" | grep -Ei 'torch|c10|cuda' || echo "(none)"
echo "== ldd $before (libtorch, c10, CUDA): $(ldd "$before" | grep -Eic 'torch|c10|cuda') libraries"

# The cache both binaries read: one run of the lab-results pipeline, every stage a hit after.
# (The lock goes into the scratch cache, not beside the shipped pipeline.)
"$now" --cache "$cache" run pipelines/lab-results.yaml --lock "$cache/p.lock" >/dev/null 2>&1
"$before" --cache "$cache" run pipelines/lab-results.yaml --lock "$cache/p.lock" >/dev/null 2>&1

commands=(
  "--version"
  "validate pipelines/lab-results.yaml"
  "plan pipelines/lab-results.yaml"
  "run pipelines/lab-results.yaml --lock $cache/p.lock"
)
peak_mb() { # median peak RSS of `$@` over $runs runs, in MB
  for _ in $(seq "$runs"); do /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; done |
    sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1024}'
}
printf '\n%-40s %12s %12s %8s %10s %10s %8s\n' command "runner ms" "before ms" ratio "runner MB" "before MB" ratio
for c in "${commands[@]}"; do
  json=$(mktemp)
  # shellcheck disable=SC2086
  hyperfine -N --warmup 2 --runs "$runs" --export-json "$json" \
    "$now --cache $cache $c" "$before --cache $cache $c" >/dev/null 2>&1
  read -r a b < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(*(x["median"]*1000 for x in r))' "$json")
  rm -f "$json"
  # shellcheck disable=SC2086
  ma=$(peak_mb $now --cache "$cache" $c)
  # shellcheck disable=SC2086
  mb=$(peak_mb $before --cache "$cache" $c)
  printf '%-40s %12.1f %12.1f %7.1fx %10s %10s %7.1fx\n' "${c%% --lock*}" "$a" "$b" "$(echo "$b / $a" | bc -l)" "$ma" "$mb" "$(echo "$mb / $ma" | bc -l)"
done
