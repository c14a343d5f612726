#!/usr/bin/env bash
# One prepared GPU session for the few-shot chapters (issues 3 and 5): everything a lent
# GPU is for, in one call that fits the device's per-call limit, writing only under $OUT.
#
#   bash scripts/gpu_session.sh BUDGET_S [DEVICE]
#
# BUDGET_S is the wall time the whole script may take (say 560 for a 600 s call); DEVICE
# defaults to cuda (cpu runs the same plumbing with tiny budgets, for a dry run here).
# In order, each step bounded so the later ones still run:
#   1. nvidia-smi and the Omniglot 20-way path probe with its TF32 / float64 check
#      (scripts/gpu_omniglot_probe.py) -> $OUT/probe-20way.txt
#   2. the cost of second order on the device (benchmarks/second_order_cost.py,
#      1..10 inner steps, first and second order, checkpointing at 5)
#      -> $OUT/second-order-cost-<device>.json, only when COST=1, or (COST=auto, the
#      default) when benchmarks/results/ holds no report for the device yet: each
#      configuration starts CUDA afresh, about 10 s, so it takes about 4 minutes
#   3. the Omniglot runs named in EXPERIMENTS (default: the two 20-way settings), all at
#      once, one process each, continued from their checkpoints in results/ where those
#      travelled (carry them) and from scratch otherwise. At these sizes one process
#      leaves a GPU mostly idle (it waits on Python and kernel launches), so two share
#      it at little cost to each. Each call checkpoints at its time limit and evaluates
#      600 test tasks -> $OUT/<experiment>-train.log
#   4. the run folders, as one archive: $OUT/results.tar (the device returns at most 8
#      files, none more than two folders down)
#
# The device machine has no ../shared/data: carry the Omniglot cache built here
# (MAMLLIB_CACHE=.devcache python -c "from mamllib.data.omniglot import load_omniglot;
# load_omniglot()") and the run folders to continue, for example with the run tool's
#   carry: [".devcache", "results/07-omniglot/omniglot-20way-1shot",
#           "results/07-omniglot/omniglot-20way-5shot"]
# Back here: unpack results.tar over results/ (tar -xf results.tar), then make the
# artifacts with scripts/fewshot_artifact.py --replace (book/running.md, "A lent GPU").
set -u
BUDGET=${1:?usage: gpu_session.sh BUDGET_S [DEVICE]}
DEVICE=${2:-cuda}
OUT=${OUT:-/tmp/gpu-session-out}
EXPERIMENTS=${EXPERIMENTS:-omniglot-20way-1shot omniglot-20way-5shot}
RESULTS=${MAMLLIB_RESULTS:-results}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
export MAMLLIB_CACHE=${MAMLLIB_CACHE:-.devcache} MAMLLIB_PROGRESS=lines PYTHONPATH=.
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# The evaluation after a training call (600 tasks at up to 10 steps, plus saving) takes
# under a minute on a GPU, also beside a second run; keep that back from every limit.
EVAL_RESERVE=${EVAL_RESERVE:-60}
gpu_use() { nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader \
  2>/dev/null || echo "no nvidia-smi"; }

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; git rev-parse HEAD; date -u; } > "$OUT/device.txt"

if [ "$(left)" -gt 120 ]; then
  timeout 90 $PY scripts/gpu_omniglot_probe.py --experiment omniglot-20way-1shot \
    --device "$DEVICE" --iters 5 > "$OUT/probe-20way.txt" 2>&1
fi

COST=${COST:-auto}
if [ "$COST" = auto ] && [ -f "benchmarks/results/second-order-cost-$DEVICE.json" ]; then
  COST=0
fi
if [ "$COST" != 0 ] && [ "$(left)" -gt 330 ]; then
  timeout 240 $PY benchmarks/second_order_cost.py --device "$DEVICE" \
    --steps 1 2 3 4 5 6 7 8 9 10 --iters 10 --checkpointing 5 \
    --note "scripts/gpu_session.sh on a lent device" \
    --out "$OUT/second-order-cost-$DEVICE.json" > "$OUT/second-order-cost.log" 2>&1
fi

# The 20-way runs take the path the probe found fastest on this device (its last line),
# else the preset's. All paths compute the same meta-gradient (tests/test_conv4.py).
PATH20=$(tail -n 1 "$OUT/probe-20way.txt" 2>/dev/null)
case "$PATH20" in loop|vmap|batched) PATH20="--path $PATH20" ;; *) PATH20="" ;; esac

T=$(( $(left) - EVAL_RESERVE - 30 ))
if [ "$T" -gt 30 ]; then
  for experiment in $EXPERIMENTS; do
    (
      timeout $(( T + EVAL_RESERVE + 20 )) $PY scripts/train_omniglot.py \
        --experiment "$experiment" --preset paper --device "$DEVICE" --time-limit "$T" \
        $PATH20 >> "$OUT/$experiment-train.log" 2>&1
      echo "exit $? after a --time-limit $T $PATH20 call" >> "$OUT/$experiment-train.log"
    ) &
  done
  sleep $(( T / 2 ))
  echo "halfway through training, GPU use and memory: $(gpu_use)" >> "$OUT/device.txt"
  wait
fi

tar -cf "$OUT/results.tar" -C "$RESULTS/.." "$(basename "$RESULTS")/07-omniglot" 2>/dev/null
echo "gpu_session.sh done in $(( $(date +%s) - START )) s of $BUDGET" | tee -a "$OUT/device.txt"
