"""The speed targets in one table: each measured ratio, and how far from the hardware.

Run from the repository root:

    .venv/bin/python benchmarks/targets.py [--run] \\
        [--out benchmarks/results/targets.json]

Without ``--run`` it reads the committed reports of the three CPU benchmarks; with
``--run`` it first runs them again (about 15 minutes on a 2-core CPU), one after the
other, into a temporary folder, and reads those:

* ``sinusoid_speed.py`` (one thread): the sinusoid's second-order meta-iteration,
  ``higher`` against our fastest path;
* ``omniglot_speed.py`` (two threads): the conv-4 at 5-way 1-shot and 20-way 1-shot,
  ``higher`` against our fastest path;
* ``metarl_cost.py`` (one thread): a MAML-TRPO meta-iteration at the half-cheetah
  paper preset, in seconds.

The floor of each setting is its arithmetic over this CPU's measured matrix-multiply
rate: the floating-point operations of one meta-iteration, counted by
``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, the
derivatives of every order included; elementwise work and the simulator are not
counted), divided by the GFLOP/s of a large float32 matrix product with the same
number of threads. No implementation gets below it; the ratio of ours to it says how
much of the time is arithmetic and how much is everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omniglot_speed import SETTINGS, random_tasks  # this folder, beside this script
from torch.utils.flop_counter import FlopCounterMode

from mamllib.maml import cross_entropy_loss, meta_gradient, mse_loss
from mamllib.models import MLP, Conv4, detach_params, init_params
from mamllib.runs import device_description, git_commit
from mamllib.tasks import SinusoidTasks, make_generator

HERE = Path(__file__).parent
RESULTS = HERE / "results"
# name: (the report it reads, the target, "ratio" (at least) or "s" (at most))
TARGETS = {
    "sinusoid, 2nd order: higher / ours": ("cpu-sinusoid", 50.0, "ratio"),
    "conv-4 5-way 1-shot: higher / ours (2 threads)": ("omniglot-cpu", 3.0, "ratio"),
    "conv-4 20-way 1-shot: higher / ours (2 threads)": ("omniglot-cpu", 2.5, "ratio"),
    "MAML-TRPO half-cheetah, s per meta-iteration": (
        "metarl-cost-cpu-paths",
        10.0,
        "s",
    ),
}
COMMANDS = {
    "cpu-sinusoid": ["sinusoid_speed.py", "--threads", "1", "--no-compile-start"],
    "omniglot-cpu": ["omniglot_speed.py", "--threads", "2", "--no-profile"],
    "metarl-cost-cpu-paths": [
        "metarl_cost.py",
        "--experiment",
        "half_cheetah-direction",
        "--threads",
        "1",
        "--iters",
        "2",
    ],
}


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """The best GFLOP/s of a ``size`` x ``size`` float32 matrix product."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def count_flops(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def sinusoid_flops() -> int:
    """One second-order meta-gradient at the paper's sinusoid setting (§5.1)."""
    model = MLP((1, 40, 40, 1))
    params = detach_params(init_params(model, make_generator(0, "init")))
    tasks = SinusoidTasks().sample(25, 10, 10, make_generator(0, "tasks"))
    return count_flops(
        lambda: meta_gradient(model, params, tasks, mse_loss, 0.01, 1, False, "loop")
    )


def conv4_flops(n_way: int, n_tasks: int, inner_lr: float, n_steps: int) -> int:
    """One second-order meta-gradient of the conv-4 on ``omniglot_speed.py``'s
    episodes (1-shot, one query per class)."""
    model = Conv4(n_way)
    params = detach_params(init_params(model, make_generator(0, "init")))
    tasks = random_tasks(n_tasks, n_way, make_generator(0, "tasks"))
    return count_flops(
        lambda: meta_gradient(
            model, params, tasks, cross_entropy_loss, inner_lr, n_steps, False, "loop"
        )
    )


def trpo_flops(calls: int) -> int:
    """The surrogate's gradient and ``calls`` curvature products of one MAML-TRPO
    iteration at the half-cheetah paper preset (40 tasks x 20 trajectories x 200
    steps, the policy 20-100-100-6), on random trajectories: the arithmetic does not
    depend on them. Sampling, the line search and the inner step are left out."""
    from mamllib.rl.metarl import PGData, adapted_policies, meta_trpo_problem
    from mamllib.rl.policy import init_policy_params, per_task_mean, policy_model

    n_tasks, n_traj, horizon, obs, act = 40, 20, 200, 20, 6
    generator = torch.Generator().manual_seed(0)
    shape = (n_tasks, n_traj, horizon)

    def data() -> PGData:
        return PGData(
            torch.randn(*shape, obs, generator=generator),
            torch.randn(*shape, act, generator=generator),
            torch.randn(*shape, generator=generator),
            torch.ones(shape),
        )

    model = policy_model(obs, act, (100, 100))
    params = init_policy_params(model, generator, init_std=1.0)
    pre, post = data(), data()
    old = adapted_policies(model, params, pre, 0.1)
    post.old_mean = per_task_mean(model, old, post.obs).detach()
    post.old_log_std = old["log_std"]

    def iteration():
        _, gradient, hvp = meta_trpo_problem(model, params, pre, post, 0.1)
        for _ in range(calls):
            hvp(gradient)

    return count_flops(iteration)


def run_benchmarks(folder: Path) -> None:
    for name, command in COMMANDS.items():
        out = folder / f"{name}.json"
        print(f"running {command[0]} ...", flush=True)
        subprocess.run(
            [sys.executable, str(HERE / command[0]), *command[1:], "--out", str(out)],
            check=True,
        )


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the benchmarks first")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="targets-") as temporary:
        folder = Path(temporary) if args.run else RESULTS
        if args.run:
            run_benchmarks(folder)
        reports = {name: read(folder, name) for name in COMMANDS}

    sinusoid = reports["cpu-sinusoid"]["results_ms_per_iteration"]
    omniglot = reports["omniglot-cpu"]["results_ms_per_iteration"]
    trpo = reports["metarl-cost-cpu-paths"]

    def fastest(results: dict, order: str = "") -> tuple[str, float]:
        ours = {
            k: v["median_ms"]
            for k, v in results.items()
            if k.startswith("mamllib-") and k.endswith(order)
        }
        name = min(ours, key=ours.get)
        return name.removeprefix("mamllib-").removesuffix(order).strip(), ours[name]

    load = os.getloadavg()[0]  # other work on the machine lowers the measured peak
    peak = {threads: matmul_gflops(threads) for threads in (1, 2)}
    torch.set_num_threads(1)
    hvp_calls = trpo["calls"]["KL Hessian-vector products"]
    rows = {}
    path, ms = fastest(sinusoid, " 2nd")
    rows["sinusoid, 2nd order: higher / ours"] = {
        "ours": f"{path}, {ms:.2f} ms",
        "value": sinusoid["higher 2nd"]["median_ms"] / ms,
        "ms": ms,
        "gflop": sinusoid_flops() / 1e9,
        "threads": 1,
    }
    for setting, (n_way, n_tasks, lr, steps) in SETTINGS.items():
        path, ms = fastest(omniglot[setting])
        rows[f"conv-4 {setting}: higher / ours (2 threads)"] = {
            "ours": f"{path}, {ms:.0f} ms",
            "value": omniglot[setting]["higher"]["median_ms"] / ms,
            "ms": ms,
            "gflop": conv4_flops(n_way, n_tasks, lr, steps) / 1e9,
            "threads": 2,
        }
    rows["MAML-TRPO half-cheetah, s per meta-iteration"] = {
        "ours": f"{trpo['path']}, {trpo['meta_iteration_s']:.1f} s",
        "value": trpo["meta_iteration_s"],
        "ms": 1e3 * trpo["meta_iteration_s"],
        "gflop": trpo_flops(hvp_calls) / 1e9,
        "threads": 1,
    }

    print(
        f"matrix-multiply peak of this CPU: {peak[1]:.0f} GFLOP/s on 1 thread, "
        f"{peak[2]:.0f} on 2 (load average {load:.1f} on {os.cpu_count()} CPUs)"
    )
    header = f"{'target':<48}{'wanted':>9}{'measured':>10}  {'met':<4}"
    print(header + f"{'GFLOP/it':>10}{'floor ms':>10}{'ours/floor':>11}  ours")
    table = {}
    for name, row in rows.items():
        report, wanted, kind = TARGETS[name]
        met = row["value"] >= wanted if kind == "ratio" else row["value"] <= wanted
        floor_ms = 1e3 * row["gflop"] / peak[row["threads"]]
        unit = "x" if kind == "ratio" else " s"
        print(
            f"{name:<48}{wanted:>8.1f}{unit}{row['value']:>9.1f}{unit}  "
            f"{'yes' if met else 'no':<4}{row['gflop']:>10.2f}{floor_ms:>10.2f}"
            f"{row['ms'] / floor_ms:>10.0f}x  {row['ours']}"
        )
        table[name] = {
            "report": report,
            "target": wanted,
            "kind": kind,
            "measured": round(row["value"], 3),
            "met": met,
            "ours": row["ours"],
            "gflop_per_iteration": round(row["gflop"], 3),
            "threads": row["threads"],
            "floor_ms": round(floor_ms, 3),
            "ours_over_floor": round(row["ms"] / floor_ms, 1),
        }
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "device": device_description("cpu"),
                    "commit": git_commit(),
                    "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "reports": "run anew" if args.run else "committed",
                    "matmul_gflops": {str(k): round(v, 1) for k, v in peak.items()},
                    "load_average_1min": round(load, 2),
                    "targets": table,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
