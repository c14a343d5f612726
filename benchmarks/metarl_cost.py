"""Where the time of one MAML-TRPO meta-iteration goes, at a paper preset, on the
reference path and on the fast path that training uses.

One meta-iteration of ``mamllib.experiments.metarl.meta_iteration`` (as training
runs it), with
each part timed by wrapping the functions it calls:

* ``sampling``: both sets of trajectories (before and after the inner step), the
  simulator and the policy's forward passes;
* ``advantages``: discounted returns and the per-task linear baseline;
* ``inner step``: the adapted policies used for sampling;
* ``surrogate gradient``: the meta-surrogate and its gradient through the inner step
  (``meta_trpo_problem``), without the Hessian-vector products;
* ``KL Hessian-vector products``: every product conjugate gradient and the step size
  ask for;
* ``line search``: the surrogate and KL values of the candidate steps.

Two paths take the same steps (to float tolerance,
``tests/test_trpo_speed_paths.py``):

* ``reference``: ``meta_trpo_problem_reference`` (double backward through the inner
  gradient's and the KL's graphs) and rllab's one extra product for the step length
  (``trpo_step(product_from_cg=False)``);
* ``fast``: ``meta_trpo_problem`` (the products written out,
  ``mamllib.fast.mlp_products``) and the step length from conjugate gradient's
  residual, as training runs.

Each path keeps its own parameters and task stream, both started from the same
state; their iterations alternate (reference, fast, reference, ...) so that a
change in the machine's load falls on both. The first iterations are a warm-up; the
table is the last one of each, side by side, with the ratio reference / fast. The
largest relative difference of the two paths' parameters after the first iteration
(same trajectories, float32) is printed as a check.

Run from the repository root (at the locomotion paper presets on one CPU thread,
about a minute per reference iteration; ``--preset ci`` for a quick try):

    .venv/bin/python benchmarks/metarl_cost.py --experiment half_cheetah-direction \\
        [--iters 2] [--threads 1] [--out benchmarks/results/metarl-cost-cpu.json]

The report keeps the fast path's numbers at the top level (what training runs) and
adds the reference's under ``reference``. CPU timings on a shared machine are noisy:
compare the paths within one run, not across runs; the 1-minute load average before
and after is recorded. The committed reports (``--allocator keep`` and ``default``)
are ``benchmarks/results/metarl-cost-cpu*.json`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import torch

import mamllib.experiments.metarl_trpo as train
import mamllib.rl.metarl as metarl
from mamllib.experiments.metarl import initial_params, models
from mamllib.fast.allocator import add_allocator_option, use_allocator
from mamllib.presets import make_config
from mamllib.rl.trpo import flatten, trpo_step
from mamllib.runs import device_description, git_commit
from mamllib.tasks import make_generator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiment", default="half_cheetah-direction")
parser.add_argument("--preset", default="paper")
parser.add_argument("--iters", type=int, default=2)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--out", default=None)
add_allocator_option(parser)
args = parser.parse_args()
torch.set_num_threads(args.threads)
use_allocator(args.allocator)

PATHS = {
    "reference": (metarl.meta_trpo_problem_reference, False),
    "fast": (metarl.meta_trpo_problem, True),
}
PARTS = (
    "sampling",
    "advantages",
    "inner step",
    "surrogate gradient",
    "KL Hessian-vector products",
    "line search",
)
HVP = "KL Hessian-vector products"
times: dict[str, float] = {}
counts: dict[str, int] = {}


def timed(name, function):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = function(*a, **k)
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        counts[name] = counts.get(name, 0) + 1
        return out

    return wrapper


def timed_problem(problem):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        loss, gradient, hvp = problem(*a, **k)
        times["surrogate gradient"] = time.perf_counter() - t0
        counts["surrogate gradient"] = 1
        return loss, gradient, timed(HVP, hvp)

    return wrapper


original = {
    name: getattr(train, name)
    for name in ("sample_trajectories", "advantages", "adapted_policies")
}
train.sample_trajectories = timed("sampling", original["sample_trajectories"])
train.advantages = timed("advantages", original["advantages"])
train.adapted_policies = timed("inner step", original["adapted_policies"])
for strategy, objective in list(train.META_OBJECTIVES.items()):
    train.META_OBJECTIVES[strategy] = timed("line search", objective)

config = make_config(args.experiment, args.preset)
model = models(config)["maml"]
state = {
    path: {
        "params": initial_params("maml", config),
        "generator": make_generator(config["seed"], "tasks"),
    }
    for path in PATHS
}
load_before = os.getloadavg()[0]
first_params, last = {}, {}
for iteration in range(args.iters):
    for path, (problem, product_from_cg) in PATHS.items():
        train.meta_trpo_problem = timed_problem(problem)
        train.trpo_step = functools.partial(trpo_step, product_from_cg=product_from_cg)
        times.clear()
        counts.clear()
        s = state[path]
        t0 = time.perf_counter()
        s["params"], _ = train.meta_iteration(
            "maml", model, s["params"], config, s["generator"]
        )
        total = time.perf_counter() - t0
        if iteration == 0:
            first_params[path] = flatten(s["params"].values()).detach()
        last[path] = {
            "meta_iteration_s": total,
            "parts_s": {p: times.get(p, 0.0) for p in PARTS},
            "calls": {p: counts.get(p, 0) for p in PARTS},
        }
load_after = os.getloadavg()[0]
ref, fast = last["reference"], last["fast"]
difference = (first_params["fast"] - first_params["reference"]).abs().max() / (
    first_params["reference"].abs().max()
)

n_steps = config["meta_batch_size"] * config["n_traj"] * config["horizon"]
print(
    f"{args.experiment}, {args.preset} preset: {config['meta_batch_size']} tasks x "
    f"{config['n_traj']} trajectories x {config['horizon']} steps = {n_steps} steps "
    f"per set, {args.threads} thread(s), allocator {args.allocator}, "
    f"load average {load_before:.1f} -> {load_after:.1f}"
)
print(
    f"{'part':<28}{'calls':>6}{'reference s':>13}{'calls':>7}{'fast s':>9}{'ratio':>8}"
)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


for part in sorted(PARTS, key=lambda p: -ref["parts_s"][p]):
    r, f = ref["parts_s"][part], fast["parts_s"][part]
    print(
        f"{part:<28}{ref['calls'][part]:>6}{r:>13.2f}{fast['calls'][part]:>7}"
        f"{f:>9.2f}{ratio(r, f):>7.1f}x"
    )
hvp_per_call = {
    path: last[path]["parts_s"][HVP] / max(1, last[path]["calls"][HVP])
    for path in PATHS
}
print(
    f"{'one KL Hessian-vector product':<28}{'':>6}{hvp_per_call['reference']:>13.3f}"
    f"{'':>7}{hvp_per_call['fast']:>9.3f}"
    f"{ratio(hvp_per_call['reference'], hvp_per_call['fast']):>7.1f}x"
)
print(
    f"{'meta-iteration':<28}{'':>6}{ref['meta_iteration_s']:>13.2f}{'':>7}"
    f"{fast['meta_iteration_s']:>9.2f}"
    f"{ratio(ref['meta_iteration_s'], fast['meta_iteration_s']):>7.1f}x"
)
print(
    "parameters after the first iteration, fast against reference: largest "
    f"difference {difference:.1e} of the largest parameter"
)
if args.out:

    def rounded(d):
        return {k: round(v, 3) for k, v in d.items()}

    Path(args.out).write_text(
        json.dumps(
            {
                "experiment": args.experiment,
                "preset": args.preset,
                "threads": args.threads,
                "allocator": args.allocator,
                "device": device_description("cpu"),
                "commit": git_commit(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "steps_per_set": n_steps,
                "path": "fast",
                "meta_iteration_s": round(fast["meta_iteration_s"], 2),
                "parts_s": rounded(fast["parts_s"]),
                "calls": fast["calls"],
                "hvp_per_call_s": round(hvp_per_call["fast"], 3),
                "reference": {
                    "path": "meta_trpo_problem_reference, product_from_cg=False",
                    "meta_iteration_s": round(ref["meta_iteration_s"], 2),
                    "parts_s": rounded(ref["parts_s"]),
                    "calls": ref["calls"],
                    "hvp_per_call_s": round(hvp_per_call["reference"], 3),
                },
                "speedup": {
                    "meta_iteration": round(
                        ratio(ref["meta_iteration_s"], fast["meta_iteration_s"]), 2
                    ),
                    "hvp_per_call": round(
                        ratio(hvp_per_call["reference"], hvp_per_call["fast"]), 2
                    ),
                    **{
                        part: round(
                            ratio(ref["parts_s"][part], fast["parts_s"][part]), 2
                        )
                        for part in PARTS
                    },
                },
                "first_iteration_params_max_rel_difference": float(f"{difference:.2e}"),
                "load_average_1min": [round(load_before, 2), round(load_after, 2)],
                "iters": args.iters,
            },
            indent=2,
        )
        + "\n"
    )
