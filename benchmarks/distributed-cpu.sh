#!/usr/bin/env bash
# Data parallelism on the CPU: full fine-tuning of the flan-t5-small shape (random init) on the
# same DialogSum rows and seed, as one process using every core (`devices: 1`) and as one rank
# per core (`devices: 2` on 2 cores: each rank takes 1 thread), STEPS steps of 4,096-token
# batches, dropout on. Prints each run's dialogues/s, the ratio, the collectives' share of a
# step, the peak memory and the optimizer state each process keeps, from the runs' manifests.
# Needs `make build`; a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath ../shared/data/dialogsum)
model=$(realpath -m "${MODEL:-cache/models/flan-t5-small}")
steps=${STEPS:-12}
sumflow=$PWD/target/release/sumflow
[ -f "$model/model.safetensors" ] ||
  $sumflow make-model --arch flan-t5-small --tokenizer-data "$data" --out "$model" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for devices in 1 2; do
  cat > "$work/p$devices.yaml" <<YAML
name: dp-bench
stages:
  data: {kind: load, path: $data}
  rows: {kind: subsample, input: data.train, n: 2000, seed: 1}
  tokens: {kind: tokenize, input: rows, model: $model}
  train: {kind: train-full, train: tokens, model: $model, device: cpu, batch_tokens: 4096, max_steps: $steps, checkpoint_every: 0, devices: $devices}
YAML
  # A cache per run: `devices` is not in the key, so the second would be a hit.
  $sumflow --cache "$work/cache$devices" run "$work/p$devices.yaml" >/dev/null 2>&1
done
python3 - "$work" "$(nproc)" <<'PY'
import glob, json, sys
work, cores = sys.argv[1], int(sys.argv[2])
rows = {}
for devices in (1, 2):
    manifest = json.load(open(sorted(glob.glob(f"{work}/cache{devices}/runs/*.json"))[-1]))
    stages = {s["id"]: s for s in manifest["stages"]}
    train = stages["train"]["stats"]
    rows[devices] = {
        "dialogues/s": train["dialogues_per_s"],
        "step s": train["step_seconds"] / train["steps"],
        "collectives": train.get("collective_seconds", 0.0) / train["step_seconds"],
        "peak MB": train["peak_rss_mb"],
        "optimizer MB": train["optimizer_state_mb"],
        "final loss": train["final_loss"],
    }
print(f"full fine-tuning, flan-t5-small shape, CPU, {cores} cores, 4,096-token batches")
print(f"{'run':32} {'dialogues/s':>11} {'s/step':>7} {'collectives':>11} {'peak MB':>8} {'optim. MB':>9} {'final loss':>10}")
names = {1: f"1 process x {cores} threads", 2: f"2 ranks x {max(1, cores // 2)} thread(s), Gloo"}
for d, r in rows.items():
    print(f"{names[d]:32} {r['dialogues/s']:11.2f} {r['step s']:7.3f} {r['collectives']:11.1%} {r['peak MB']:8.0f} {r['optimizer MB']:9.0f} {r['final loss']:10.4f}")
print(f"ratio (2 ranks / 1 process): {rows[2]['dialogues/s'] / rows[1]['dialogues/s']:.2f}x")
PY
