#!/usr/bin/env bash
# The GPU measurements and runs in one go, on a machine with one CUDA GPU, from the
# repository root (after `make test` or `make book` has set up .venv):
#
#   bash benchmarks/gpu_session.sh 5m    # the partial paper runs get 5 minutes in all
#
# 1. gpu_check.py: the sinusoid vmap path on CUDA, equal to the loop and to the CPU;
# 2. gpu_conv4.py: the conv-4's float32 meta-gradients (TF32 on and off) against
#    float64, ms per meta-iteration eager and from a CUDA graph, and the FLOP floor;
#    both reports go to benchmarks/results/ under the GPU's name;
# 3. python -m mamllib paper: the partial paper runs (MiniImageNet, both orders, and
#    Omniglot 20-way) continued from their artifacts' checkpoints for the time budget,
#    which refreshes those artifacts with the iterations reached.
#
# DRY_RUN=1 runs steps 1-2 on the CPU at small sizes, and step 3 as a ci-preset run in a
# temporary results folder: every code path, no artifact touched, numbers meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
budget=${1:-5m}

if [[ ${DRY_RUN:-0} == 1 ]]; then
  out=$(mktemp -d)
  echo "dry run on the CPU; reports in $out"
  $PY benchmarks/gpu_conv4.py --device cpu --quick --settings omniglot-5way-1shot \
    --out "$out/gpu-conv4.json"
  MAMLLIB_RESULTS="$out/results" $PY -m mamllib train omniglot-20way-1shot \
    --preset ci --device cpu
  exit 0
fi

name=$($PY -c "import torch; print(torch.cuda.get_device_name(0))")
slug=$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/nvidia //; s/[^a-z0-9]+/-/g; s/-+$//')
echo "GPU: $name"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY benchmarks/gpu_check.py --iterations 1000 --out "benchmarks/results/gpu-$slug.json"
$PY benchmarks/gpu_conv4.py --out "benchmarks/results/gpu-conv4-$slug.json"
$PY -m mamllib paper miniimagenet-5way-1shot miniimagenet-5way-1shot-first-order \
  omniglot-20way-1shot --device cuda --time-budget "$budget"
