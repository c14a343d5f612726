"""Where the time of one MAML-TRPO meta-iteration goes, at a paper preset.

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

Run from the repository root (about a minute per meta-iteration at the locomotion
paper presets on one CPU thread; ``--preset ci`` for a quick try):

    .venv/bin/python benchmarks/metarl_cost.py --experiment half_cheetah-direction \\
        [--iters 2] [--threads 1] [--out benchmarks/results/metarl-cost-cpu.json]

The first iteration is a warm-up; the printed table is the last one. CPU timings on
a shared machine are noisy: compare the parts within one run, not across runs. The
committed reports (``--allocator keep`` and ``default``) are
``benchmarks/results/metarl-cost-cpu*.json`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mamllib.experiments.metarl_trpo as train
import mamllib.rl.metarl as metarl
from mamllib.experiments.metarl import initial_params, models
from mamllib.fast.allocator import add_allocator_option, use_allocator
from mamllib.presets import make_config
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


original_problem = metarl.meta_trpo_problem


def problem(*a, **k):
    t0 = time.perf_counter()
    loss, gradient, hvp = original_problem(*a, **k)
    times["surrogate gradient"] = time.perf_counter() - t0
    counts["surrogate gradient"] = 1
    return loss, gradient, timed("KL Hessian-vector products", hvp)


train.meta_trpo_problem = problem
train.sample_trajectories = timed("sampling", train.sample_trajectories)
train.advantages = timed("advantages", train.advantages)
train.adapted_policies = timed("inner step", train.adapted_policies)
for path, objective in list(train.META_OBJECTIVES.items()):
    train.META_OBJECTIVES[path] = timed("line search", objective)

config = make_config(args.experiment, args.preset)
model = models(config)["maml"]
params = initial_params("maml", config)
generator = make_generator(config["seed"], "tasks")
for _ in range(args.iters):
    times.clear()
    counts.clear()
    t0 = time.perf_counter()
    params, stats = train.meta_iteration("maml", model, params, config, generator)
    total = time.perf_counter() - t0

n_steps = config["meta_batch_size"] * config["n_traj"] * config["horizon"]
print(
    f"{args.experiment}, {args.preset} preset: {config['meta_batch_size']} tasks x "
    f"{config['n_traj']} trajectories x {config['horizon']} steps = {n_steps} steps "
    f"per set, {args.threads} thread(s), allocator {args.allocator}"
)
print(f"{'part':<28}{'calls':>6}{'seconds':>10}{'share':>8}")
for name, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
    print(f"{name:<28}{counts[name]:>6}{seconds:>10.1f}{seconds / total:>8.0%}")
print(f"{'meta-iteration':<28}{'':>6}{total:>10.1f}")
if args.out:
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
                "meta_iteration_s": round(total, 2),
                "parts_s": {k: round(v, 2) for k, v in times.items()},
                "calls": counts,
            },
            indent=2,
        )
        + "\n"
    )
