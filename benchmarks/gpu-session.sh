#!/usr/bin/env bash
# What a GPU session measures, prepared to run as it is on the device machine (issues 3–6).
#
#   bash benchmarks/gpu-session.sh DATA OUT bench   # sumflow bench beside the lab's Python path
#   bash benchmarks/gpu-session.sh DATA OUT lab     # the lab pipeline, full DialogSum, 1 epoch each
#   bash benchmarks/gpu-session.sh DATA OUT levers  # where a training step goes; batch-size levers
#   bash benchmarks/gpu-session.sh DATA OUT tests   # the stages' CUDA tests (graphs, attention kernels)
#   bash benchmarks/gpu-session.sh DATA OUT graphs  # eager figures, cuDNN attention, padding, a trace
#   bash benchmarks/gpu-session.sh DATA OUT bench-graphs  # `bench` with CUDA graphs, beside Python
#   bash benchmarks/gpu-session.sh DATA OUT lab-eager  # the lab pipeline without CUDA graphs
#   bash benchmarks/gpu-session.sh DATA OUT weights # training with bf16 weights; then the lab with them
#   bash benchmarks/gpu-session.sh DATA OUT trace   # traces of eager steps, autocast and bf16 weights
#   bash benchmarks/gpu-session.sh DATA OUT pack    # packed training (graphs, bf16 weights, eager); the lab packed
#   bash benchmarks/gpu-session.sh DATA OUT check   # all of them, tiny and short, on the CPU (a dry run)
#
# DATA holds `dialogsum/` and `lab-results/` (a copy of ../shared/data: the device machine gets
# only the checkout, so copy them into the ignored .carry/ and carry it with the binary, see
# benchmarks/README.md). OUT receives the figures (at most 8 files come back from a device run).
# `tests` runs the stages' test binary copied to .carry/stages-tests (its CUDA tests need a GPU;
# see benchmarks/README.md).
# The model is a random-init flan-t5-base shape made on the spot (`make-model`, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath "$1"); out=$2; what=$3
mkdir -p "$out"
export PYTHON=${PYTHON:-python3}
# libtorch from the machine's own torch (tch 0.24 ↔ torch 2.11 on both sides).
LD_LIBRARY_PATH=$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
export SUMFLOW_CACHE=${SUMFLOW_CACHE:-/tmp/sumflow-cache}
# The worker binary runs every command too (its model stages in copies of itself): carrying it
# alone keeps the carry under the limit.
sumflow=${SUMFLOW:-./target/release/sumflow-worker}
"$sumflow" --version
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'

case $what in
  # The dry run also goes through bf16 (autocast in training), what CUDA runs by default.
  check) arch=tiny; device=cpu; bsteps=3; bench=(--generate 40 --generate-one-at-a-time 4 --max-new-tokens 16 --batch-tokens 4096 --dtype bf16)
         lab=(--set subsample=100 --set max_steps=4 --set max_new_tokens=8 --set train_dtype=bf16 --set gen_dtype=bf16)
         steps=3; big=(--batch-tokens 8192 --max-batch-rows 256); gen=(--generate 40 --generate-batch-tokens 2048 --max-new-tokens 16)
         gsteps=4; gsteps2=6; ngen=40 ;;
  *)     arch=flan-t5-base; device=cuda; bsteps=30; bench=(--generate 500 --generate-one-at-a-time 20 --max-new-tokens 40)
         lab=(); steps=10; big=(--batch-tokens 65536 --max-batch-rows 256); gen=(--generate 500 --generate-batch-tokens 65536)
         gsteps=30; gsteps2=80; ngen=500 ;;
esac
model=$SUMFLOW_CACHE/models/$arch
[ -f "$model/model.safetensors" ] || "$sumflow" make-model --arch $arch --tokenizer-data "$data/dialogsum" --out "$model"

if [ "$what" = bench ] || [ "$what" = check ]; then
  BENCH_OUT=$out bash benchmarks/bench.sh "$model" --device $device --data "$data/dialogsum" \
    --results "$data/lab-results/dialogue-summary-training-results.csv" --train-steps $bsteps "${bench[@]}" | tee "$out/bench.txt"
fi
if [ "$what" = levers ] || [ "$what" = check ]; then
  # Training as shipped; with expandable allocator segments (the first training of a process
  # ran slow on the H200: the allocator growing for each new batch shape?); with batches padded
  # to multiples of 64 tokens (8 source widths instead of hundreds); phase by phase (each phase
  # waited for: host issue time vs device time); in 4× larger batches (fewer launches per
  # token); last, generation in 65,536-token batches (CUDA's default: one batch for all).
  one=(--model "$model" --device $device --data "$data/dialogsum" --results "$data/lab-results/dialogue-summary-training-results.csv")
  none=(--generate 0 --generate-one-at-a-time 0)
  { "$sumflow" bench "${one[@]}" --train-steps $steps "${none[@]}"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$sumflow" bench "${one[@]}" --train-steps $steps "${none[@]}"
    "$sumflow" bench "${one[@]}" --train-steps $steps --pad-to-multiple-of 64 "${none[@]}"
    SUMFLOW_PROFILE=1 "$sumflow" bench "${one[@]}" --train-steps $steps "${none[@]}"
    "$sumflow" bench "${one[@]}" --train-steps $steps "${big[@]}" "${none[@]}"
    "$sumflow" bench "${one[@]}" --train-steps 2 "${gen[@]}" --generate-one-at-a-time 0; } 2>&1 | tee "$out/levers.txt"
fi
if [ "$what" = tests ] || [ "$what" = check ]; then
  # The stages' tests that need CUDA: eager and graphed training steps give the same losses;
  # the graphed greedy decoder gives the eager one's tokens; libtorch runs every T5 attention
  # in a fused kernel (not the fp32 math fallback).
  if [ -x .carry/stages-tests ]; then
    { .carry/stages-tests cuda --nocapture --test-threads 1 || echo "FAILED (exit $?)"; } 2>&1 | tee "$out/tests.txt"
  else
    echo "no .carry/stages-tests: the CUDA tests are not run" | tee "$out/tests.txt"
  fi
fi
if [ "$what" = graphs ] || [ "$what" = check ]; then
  # Eager training and generation (500 × 40) as shipped (cuDNN's attention kernels off); the
  # same with them on (they build a plan per new shape); with attention written out
  # (`SUMFLOW_ATTENTION=explicit`, transformers' eager form); training padded as graphs pad
  # (64-token sources, 16-token labels) but eager; CUDA graphs in 4× batches; last, a trace of
  # eager steps 3–5 of each method and of eager generation's first batch (`SUMFLOW_TRACE`),
  # condensed by python/trace_summary.py: where the device's time goes now that self-attention
  # runs a fused kernel. Graphed training and generation in the shipped batches, beside the
  # lab's Python path, are `bench-graphs`.
  one=(--model "$model" --device $device --data "$data/dialogsum" --results "$data/lab-results/dialogue-summary-training-results.csv" --generate-one-at-a-time 0)
  pad=(--pad-to-multiple-of 64 --pad-labels-to-multiple-of 16)
  # Each part may fail (a capture libtorch refuses) without taking the others with it.
  try() { "$@" || echo "FAILED (exit $?): $*"; }
  { try "$sumflow" bench "${one[@]}" --train-steps $gsteps --generate $ngen
    SUMFLOW_CUDNN_ATTENTION=1 try "$sumflow" bench "${one[@]}" --generate 0 --train-steps $gsteps
    SUMFLOW_ATTENTION=explicit try "$sumflow" bench "${one[@]}" --train-steps $gsteps --generate $ngen
    try "$sumflow" bench "${one[@]}" --generate 0 --train-steps $gsteps "${pad[@]}"
    try "$sumflow" bench "${one[@]}" --generate 0 --train-steps $gsteps "${big[@]}" --cuda-graphs
    rm -rf /tmp/sumflow-trace
    SUMFLOW_TRACE=/tmp/sumflow-trace try "$sumflow" bench "${one[@]}" --generate $ngen --train-steps 6
    # Training traces hold 3 steps; the generation trace one batch of 40 tokens' steps.
    for t in /tmp/sumflow-trace/*.json; do
      case $t in */generate-*) n=40 ;; *) n=3 ;; esac
      [ -f "$t" ] && try "$PYTHON" python/trace_summary.py "$t" $n
    done; } 2>&1 | tee "$out/graphs.txt"
fi
if [ "$what" = bench-graphs ] || [ "$what" = check ]; then
  # `bench` with CUDA graphs (long enough for shapes to come back: the bench adds a
  # replays-only figure) beside the lab's Python path.
  BENCH_OUT=$out bash benchmarks/bench.sh "$model" --device $device --data "$data/dialogsum" \
    --results "$data/lab-results/dialogue-summary-training-results.csv" --train-steps $gsteps2 "${bench[@]}" \
    --cuda-graphs | tee "$out/bench.txt"
fi
if [ "$what" = lab ] || [ "$what" = check ]; then
  "$sumflow" run pipelines/dialogsum-flan-t5.yaml --set model="$model" --set data="$data/dialogsum" \
    --set device=$device "${lab[@]}" 2> >(tee "$out/lab-stderr.txt" >&2) | tee "$out/lab-stdout.txt"
  manifest=$(ls -t "$SUMFLOW_CACHE"/runs/*.json | head -1)
  cp "$manifest" "$out/lab-manifest.json"
  report=$(grep '^report: ' "$out/lab-stdout.txt" | tail -1 | cut -d' ' -f2)
  cp "$(dirname "$report")/report.md" "$out/lab-report.md"
fi
if [ "$what" = weights ] || [ "$what" = check ]; then
  # Training with bf16 weights over fp32 masters (`bf16_weights`, `--bf16-weights`) instead of
  # autocast over fp32 weights: no casts at each operation, a bf16 residual stream. As
  # `bench-graphs` trains (CUDA graphs, its steps), then eagerly; then the lab pipeline with
  # them (after `lab`: the data stages come from its cache).
  one=(--model "$model" --device $device --data "$data/dialogsum" --results "$data/lab-results/dialogue-summary-training-results.csv" --generate 0 --generate-one-at-a-time 0)
  try() { "$@" || echo "FAILED (exit $?): $*"; }
  { try "$sumflow" bench "${one[@]}" --train-steps $gsteps2 --cuda-graphs --dtype bf16 --bf16-weights
    try "$sumflow" bench "${one[@]}" --train-steps $gsteps --dtype bf16 --bf16-weights; } 2>&1 | tee "$out/weights.txt"
  "$sumflow" run pipelines/dialogsum-flan-t5.yaml --set model="$model" --set data="$data/dialogsum" \
    --set device=$device "${lab[@]}" --set bf16_weights=true \
    2> >(tee "$out/lab-weights-stderr.txt" >&2) | tee "$out/lab-weights-stdout.txt"
fi
if [ "$what" = trace ] || [ "$what" = check ]; then
  # Where an eager training step's device time goes now (self-attention fused): libtorch's
  # profiler over steps 3–5 of each method (`SUMFLOW_TRACE`), with bf16 autocast as shipped and
  # with bf16 weights, condensed by python/trace_summary.py.
  one=(--model "$model" --device $device --data "$data/dialogsum" --results "$data/lab-results/dialogue-summary-training-results.csv" --generate 0 --generate-one-at-a-time 0 --train-steps 6 --dtype bf16)
  try() { "$@" || echo "FAILED (exit $?): $*"; }
  { for weights in "" --bf16-weights; do
      rm -rf /tmp/sumflow-trace-w
      SUMFLOW_TRACE=/tmp/sumflow-trace-w try "$sumflow" bench "${one[@]}" $weights
      for t in /tmp/sumflow-trace-w/*.json; do [ -f "$t" ] && try "$PYTHON" python/trace_summary.py "$t" 3; done
    done; } 2>&1 | tee "$out/trace.txt"
fi
if [ "$what" = pack ] || [ "$what" = check ]; then
  # Packed training (`pack`, `--pack`): several dialogues per row, so rows are full rather
  # than padded (1.07 tokens computed per real one on DialogSum, against 1.36-1.41 padded for
  # graphs) and an epoch has two batch shapes (the second for 19 long summaries): two captures.
  # With CUDA graphs, then with bf16 weights too, then eagerly; then the lab pipeline packed,
  # with bf16 weights (after `lab`: the data stages come from its cache).
  one=(--model "$model" --device $device --data "$data/dialogsum" --results "$data/lab-results/dialogue-summary-training-results.csv" --generate 0 --generate-one-at-a-time 0)
  try() { "$@" || echo "FAILED (exit $?): $*"; }
  { try "$sumflow" bench "${one[@]}" --train-steps $gsteps --cuda-graphs --pack
    try "$sumflow" bench "${one[@]}" --train-steps $gsteps --cuda-graphs --pack --dtype bf16 --bf16-weights
    try "$sumflow" bench "${one[@]}" --train-steps $gsteps --pack; } 2>&1 | tee "$out/pack.txt"
  "$sumflow" run pipelines/dialogsum-flan-t5.yaml --set model="$model" --set data="$data/dialogsum" \
    --set device=$device "${lab[@]}" --set pack=true --set bf16_weights=true \
    2> >(tee "$out/lab-pack-stderr.txt" >&2) | tee "$out/lab-pack-stdout.txt"
fi
if [ "$what" = lab-eager ] || [ "$what" = check ]; then
  # After `lab` (its cache): the data stages are reused; the model stages run again, eagerly.
  "$sumflow" run pipelines/dialogsum-flan-t5.yaml --set model="$model" --set data="$data/dialogsum" \
    --set device=$device "${lab[@]}" --set cuda_graphs=false \
    2> >(tee "$out/lab-eager-stderr.txt" >&2) | tee "$out/lab-eager-stdout.txt"
  report=$(grep '^report: ' "$out/lab-eager-stdout.txt" | tail -1 | cut -d' ' -f2)
  cp "$(dirname "$report")/report.md" "$out/lab-eager-report.md"
fi
