#!/usr/bin/env bash
# One prepared GPU session for the few-shot chapters (issues 3 and 5): everything a lent
# GPU is for, in one call that fits the device's per-call limit, writing only under $OUT.
#
#   bash scripts/gpu_session.sh BUDGET_S [DEVICE]
#
# BUDGET_S is the wall time the whole script may take (say 540 for a 600 s call); DEVICE
# defaults to cuda (cpu runs the same plumbing with tiny budgets, for a dry run here).
# In order, each step bounded so the later ones still run:
#   1. nvidia-smi and the Omniglot 20-way path probe with its TF32 / float64 check
#      (scripts/gpu_omniglot_probe.py) -> $OUT/probe-20way.txt
#   2. the cost of second order on the device (benchmarks/second_order_cost.py,
#      1..10 inner steps, first and second order, checkpointing at 1 and 5)
#      -> $OUT/second-order-cost-<device>.json
#   3. the Omniglot runs, continued from their checkpoints in results/ (carry them):
#      5-way 1-shot first, to the paper's 60,000 iterations if time allows (seconds
#      when complete), then 20-way 1-shot with what is left; each call checkpoints
#      at its time limit and evaluates 600 test tasks
#      -> $OUT/results/07-omniglot/..., $OUT/*-train.log
#
# The device machine has no ../shared/data: carry the Omniglot cache built here
# (MAMLLIB_CACHE=.devcache python -c "from mamllib.omniglot import load_omniglot;
# load_omniglot()") and the run folders, for example with the run tool's
#   carry: [".devcache", "results/07-omniglot"]
# Back here: copy $OUT/results over results/, then make the artifacts with
# scripts/fewshot_artifact.py --replace (book/running.md, "A lent GPU").
set -u
BUDGET=${1:?usage: gpu_session.sh BUDGET_S [DEVICE]}
DEVICE=${2:-cuda}
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
export MAMLLIB_CACHE=${MAMLLIB_CACHE:-.devcache} MAMLLIB_PROGRESS=lines PYTHONPATH=.
PY=${PYTHON:-python3}
# The evaluation after a training call (600 tasks, plus saving) takes about 20 s on a
# GPU; keep that back from every time limit.
EVAL_RESERVE=${EVAL_RESERVE:-45}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; git rev-parse HEAD; date -u; } > "$OUT/device.txt"

if [ "$(left)" -gt 120 ]; then
  timeout 90 $PY scripts/gpu_omniglot_probe.py --experiment omniglot-20way-1shot \
    --device "$DEVICE" --iters 5 > "$OUT/probe-20way.txt" 2>&1
fi

if [ "$(left)" -gt 180 ]; then
  timeout 120 $PY benchmarks/second_order_cost.py --device "$DEVICE" \
    --steps 1 2 3 4 5 6 7 8 9 10 --iters 3 --checkpointing 1 5 \
    --note "scripts/gpu_session.sh on a lent device" \
    --out "$OUT/second-order-cost-$DEVICE.json" > "$OUT/second-order-cost.log" 2>&1
fi

# The 20-way run takes the path the probe found fastest on this device (its last line),
# else the preset's. All paths compute the same meta-gradient (tests/test_conv4.py).
PATH20=$(tail -n 1 "$OUT/probe-20way.txt" 2>/dev/null)
case "$PATH20" in loop|vmap|batched) PATH20="--path $PATH20" ;; *) PATH20="" ;; esac

train() {  # experiment, seconds of training, extra options
  timeout $(( $2 + EVAL_RESERVE + 60 )) $PY scripts/train_omniglot.py --experiment "$1" \
    --preset paper --device "$DEVICE" --time-limit "$2" $3 >> "$OUT/$1-train.log" 2>&1
  echo "exit $? after a --time-limit $2 $3 call" >> "$OUT/$1-train.log"
}

# 5-way 1-shot needs about 18 ms per iteration on an H200 (gpu-path-probe.txt in its
# artifact): the remaining iterations of a CPU-started run fit in a few minutes. Once
# it is complete the call trains nothing and, finding its metrics.json, does not
# evaluate again (train_omniglot.py), so the time goes to 20-way.
T=$(( $(left) - 2 * EVAL_RESERVE - 30 ))
if [ "$T" -gt 30 ]; then train omniglot-5way-1shot "$T" ""; fi
T=$(( $(left) - EVAL_RESERVE - 15 ))
if [ "$T" -gt 30 ]; then train omniglot-20way-1shot "$T" "$PATH20"; fi

mkdir -p "$OUT/results"
cp -r "${MAMLLIB_RESULTS:-results}/07-omniglot" "$OUT/results/" 2>/dev/null
echo "gpu_session.sh done in $(( $(date +%s) - START )) s of $BUDGET" | tee -a "$OUT/device.txt"
