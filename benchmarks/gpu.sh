#!/usr/bin/env bash
# The GPU checks of issue 10, as one script that finishes in under 8 minutes on one GPU (H200-sized):
#   (a) experiment=patches_memorize with the callback on CUDA in bf16-mixed, until the callback stops it;
#   (b) benchmarks/check_cost.py on the GPU: the 35.7 M DDPM-CIFAR10 UNet at 64 probes, full size;
#   (c) one measurement on CUDA against the CPU on a fixed small model (benchmarks/device_agreement.py).
# Writes everything into $OUT if set, else benchmarks/outputs/gpu/. Each step has its own time limit, so one that
# hangs cannot eat the others' time; a failed step is reported and the script goes on (exit status: failures).
#
#   bash benchmarks/gpu.sh            # from the repository root, with the project's environment active
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

{ nvidia-smi; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } \
  > "$out/device.txt" 2>&1
: > "$out/summary.txt"

# (a) ~1-2 min: 32 patches, checks every 250 steps at the callback's defaults, fp32 measurement under bf16-mixed.
step patches_memorize 150 python train.py experiment=patches_memorize trainer=gpu trainer.precision=bf16-mixed \
  logger=csv hydra.run.dir="$out/patches_memorize"
cat "$out/patches_memorize.md" "$out/patches_memorize.log" | grep -iE "stop|memoriz|nn_rate" | tail -n 20 \
  >> "$out/summary.txt"

# (b) ~3 min: cost tables with every model at 64 probes (trains the cached benchmark models on the GPU if missing).
step check_cost 270 python benchmarks/check_cost.py --device cuda --probes 64 --check-probes 64 --cifar-probes 64 \
  --before-probes 64 --cifar-before-probes 64 --power-probes 16 --repeats 5

# (c) < 1 min: CPU vs CUDA (fp32, then TF32) on the fixed small model.
step device_agreement 60 python benchmarks/device_agreement.py

echo "failed steps: $failures" | tee -a "$out/summary.txt"
exit "$failures"
