#!/usr/bin/env bash
# The GPU checks, in three parts of under 8 minutes each on one GPU (H200-sized):
#
#   bash benchmarks/gpu.sh cost    (issue 10, the default)
#     (a) experiment=patches_memorize with the callback on CUDA in bf16-mixed, until the callback stops it;
#     (b) benchmarks/cost/check_cost.py on the GPU: the 35.7 M DDPM-CIFAR10 UNet at 64 probes, full size;
#     (c) one measurement on CUDA against the CPU on a fixed small model (benchmarks/cost/device_agreement.py).
#   bash benchmarks/gpu.sh overhead  (issue 19: what the callback adds to training, with and without its cost governor)
#     (e) benchmarks/overhead/governed.py on the GPU at full size (64 probes, 64 loss-gap images, each case's batch):
#         digits, 16x16 patches, 3x32x32 UNet, the 35.7 M DDPM-CIFAR10 UNet, projected by the governor's policy;
#     (f) benchmarks/overhead/callback_overhead.py: real runs without / governed / ungoverned, on the GPU trainer.
#   bash benchmarks/gpu.sh scale   (issue 11: the realistic-scale test at 32x32, docs/scale/loss_gap.md test (e))
#     (d) experiment=patches_memorize and patches_generalize at data.patch_size=32, bf16-mixed, at the committed
#         settings (the loss-gap stop rule), each to its stop or its 4000 steps.
#
# Run from the repository root with the project's environment active. Writes everything into $OUT if set, else
# benchmarks/outputs/gpu/. Each step has its own time limit, so one that hangs cannot eat the others' time; a failed
# step is reported and the script goes on (exit status: failures). TRAINER (default gpu) and MAX_STEPS (default
# the experiments' own) override the trainer config and the steps: `TRAINER=cpu MAX_STEPS=2` is a smoke test.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/outputs/gpu}"
mkdir -p "$out"
export WANDB_MODE=offline
[ -f .venv/bin/activate ] && . .venv/bin/activate
failures=0

step() {  # step NAME LIMIT_S COMMAND...: time-limited; stdout to $out/NAME.md, stderr to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s ($out/$name.md, $out/$name.log)" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || failures=$((failures + 1))
}

part="${1:-cost}"
trainer="${TRAINER:-gpu}"
steps=()
[ -n "${MAX_STEPS:-}" ] && steps=("trainer.max_steps=$MAX_STEPS")

{ nvidia-smi; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } \
  > "$out/device.txt" 2>&1
: > "$out/summary.txt"

experiment() {  # experiment NAME LIMIT_S OVERRIDES...: one app run on the device, its stop lines to the summary
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" python train.py trainer="$trainer" trainer.precision=bf16-mixed logger=csv \
    hydra.run.dir="$out/$name" "${steps[@]}" "$@"
  cat "$out/$name.md" "$out/$name.log" | tr '\r' '\n' | grep -aiE "stop|memoriz|nn_rate" | tail -n 20 \
    >> "$out/summary.txt"
}

case "$part" in
  cost)
    # (a) ~1-2 min: 32 patches, checks every 250 steps at the callback's defaults, fp32 measurement under bf16-mixed.
    experiment patches_memorize 150 experiment=patches_memorize
    # (b) ~3 min: cost tables with every model at 64 probes (trains the cached benchmark models on the GPU if missing).
    step check_cost 270 python -m benchmarks.cost.check_cost --device cuda --probes 64 --check-probes 64 --cifar-probes 64 \
      --before-probes 64 --cifar-before-probes 64 --power-probes 16 --repeats 5
    # (c) < 1 min: CPU vs CUDA (fp32, then TF32) on the fixed small model.
    step device_agreement 60 python -m benchmarks.cost.device_agreement
    ;;
  overhead)
    # (e) ~1-2 min: the four cases' costs at full size, alternating 3 times.
    step overhead_governed 240 python -m benchmarks.overhead.governed --device cuda --full-size --repeats 3
    # (f) ~2-3 min: 2000 digits steps and 1000 patch steps, each without / governed / ungoverned, twice.
    step overhead_digits 150 python -m benchmarks.overhead.callback_overhead --case digits --accelerator gpu
    step overhead_patches16 150 python -m benchmarks.overhead.callback_overhead --case patches16 --accelerator gpu
    ;;
  scale)
    # (d) ~2 + ~4 min: the patch experiments at 32x32; every check logs the nn rate of its 64 probes, the score and
    # the loss gap (metrics.csv in each run folder), and the end-of-run lines give the copies among 64 samples.
    experiment patches32_memorize 180 experiment=patches_memorize data.patch_size=32
    experiment patches32_generalize 280 experiment=patches_generalize data.patch_size=32
    ;;
  *)
    echo "usage: bash benchmarks/gpu.sh [cost|overhead|scale]" >&2
    exit 2
    ;;
esac

echo "failed steps: $failures" | tee -a "$out/summary.txt"
exit "$failures"
