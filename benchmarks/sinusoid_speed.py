"""Speed of one MAML meta-iteration on the sinusoid: mamllib's paths vs ``higher``.

Run from the repository root:

    .venv/bin/python benchmarks/sinusoid_speed.py [--threads 1] [--n-inner-steps 1]
                                                  [--note TEXT] [--out results.json]

Setting: the paper's sinusoid regression (§5.1) -- MLP 1-40-40-1 ReLU, meta-batch of
25 tasks, K=10 support and 10 query points, inner SGD step size 0.01, MSE loss,
Adam (lr 1e-3) as the outer optimiser.

One meta-iteration = the meta-gradient over the meta-batch plus one Adam step
(``foreach`` for both libraries), for mamllib the step training takes
(:class:`mamllib.outer_steps.AdamStep`). Timed, second and first order each:

* mamllib ``strategy="loop"`` (per-task loop, ``torch.autograd``);
* mamllib ``strategy="vmap"`` (``torch.func.grad`` + ``vmap``);
* mamllib ``strategy="compiled"`` (the vmap path and its
  gradient under ``torch.compile``, :mod:`mamllib.fast.compiled`); its compile is
  paid in the warm-up;
* ``higher`` (optional): ``innerloop_ctx(model, SGD, copy_initial_weights=False)`` on
  an ``nn.Sequential``, a per-task loop with each query loss backpropagated as in
  higher's MAML example; first order detaches the inner gradients through
  ``diffopt.step(..., grad_callback=...)`` (``track_higher_grads=False`` would cut
  the fast weights off from the initial weights, which is not first-order MAML).

Before timing, the compiled path's and higher's meta-gradients are checked against
mamllib's loop path on the same weights and tasks. Each variant is warmed up, then
the variants are timed in turns: ``--repeats`` rounds, in each of which every variant
runs ``--iters`` iterations on the same cycle of task batches (the order rotating
from round to round), so that load from other processes falls on all of them alike;
the table shows the median ms per iteration and the interquartile range over the
rounds. CPU timings on a shared machine are noisy: compare ratios, and rerun before
trusting small gaps.

Compile time, cold and warm: two fresh processes each time the first second-order
call of the compiled path (the compile) and their whole run, both with
``TORCHINDUCTOR_CACHE_DIR`` and ``TMPDIR`` (where inductor keeps its precompiled
headers) in a new temporary folder: the first finds it empty (a first run on a new
machine), the second finds what the first left (every later run, whose cache is
:func:`mamllib.fast.compiled.compile_cache_dir`). ``--no-compile-start`` skips them.

``make benchmark`` runs it; the committed report is
``benchmarks/results/cpu-sinusoid.json`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from mamllib.fast.compiled import compile_cache_dir
from mamllib.maml import meta_gradient, mse_loss
from mamllib.models import MLP, detach_params, init_params
from mamllib.outer_steps import AdamStep, meta_objective
from mamllib.tasks import SinusoidTasks, TaskBatch, make_generator

try:
    import higher
except ImportError:
    higher = None

SIZES = (1, 40, 40, 1)
META_BATCH_SIZE, K_SHOT, N_QUERY = 25, 10, 10
INNER_LR, OUTER_LR = 0.01, 1e-3
N_TASK_BATCHES = 4  # every variant cycles through the same few meta-batches
STRATEGIES = ("loop", "vmap", "compiled")


def mamllib_step(strategy, first_order, n_inner_steps, params):
    """A meta-iteration as training takes it (:class:`mamllib.outer_steps.AdamStep`
    on the meta-objective): ``step(tasks)`` = meta-gradient + Adam step."""
    model = MLP(SIZES)
    params = detach_params(params)
    adam_step = AdamStep(
        meta_objective(model, mse_loss, INNER_LR, n_inner_steps, first_order, strategy),
        params,
        OUTER_LR,
    )

    def step(tasks: TaskBatch) -> None:
        adam_step(params, tasks, 1.0)

    return step


def higher_model(params) -> nn.Sequential:
    """An ``nn.Sequential`` 1-40-40-1 holding a copy of mamllib's ``params``."""
    model = nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )
    model.load_state_dict(
        {k.removeprefix("net."): v.detach().clone() for k, v in params.items()}
    )
    return model


def higher_meta_gradient(model, tasks, first_order, n_inner_steps) -> None:
    """Accumulate the MAML meta-gradient into ``model``'s ``.grad``, the higher way."""
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    callback = (lambda gs: [g.detach() for g in gs]) if first_order else None
    n_tasks = len(tasks)
    for i in range(n_tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
            fmodel,
            diffopt,
        ):
            for _ in range(n_inner_steps):
                support_loss = mse_loss(fmodel(tasks.x_support[i]), tasks.y_support[i])
                diffopt.step(support_loss, grad_callback=callback)
            query_loss = mse_loss(fmodel(tasks.x_query[i]), tasks.y_query[i])
            (query_loss / n_tasks).backward()


def higher_step(first_order, n_inner_steps, params):
    """A meta-iteration with higher: meta-gradient + Adam step."""
    model = higher_model(params)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR, foreach=True)  # as ours

    def step(tasks: TaskBatch) -> None:
        opt.zero_grad()
        higher_meta_gradient(model, tasks, first_order, n_inner_steps)
        opt.step()

    return step


def mamllib_meta_gradient(params, tasks, first_order, n_inner_steps, strategy="loop"):
    """mamllib's meta-gradient; the loop path is the reference for the checks."""
    return meta_gradient(
        MLP(SIZES),
        detach_params(params),
        tasks,
        mse_loss,
        INNER_LR,
        n_inner_steps,
        first_order,
        strategy=strategy,
    )[1]


def max_abs_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def gradient_gap(params, tasks, first_order, n_inner_steps) -> float:
    """Max |higher's meta-gradient - mamllib loop's| on the same weights and tasks."""
    model = higher_model(params)
    higher_meta_gradient(model, tasks, first_order, n_inner_steps)
    grads = {"net." + k: p.grad for k, p in model.named_parameters()}
    return max_abs_diff(
        grads, mamllib_meta_gradient(params, tasks, first_order, n_inner_steps)
    )


def time_variants(variants, task_batches, warmup, iters, repeats) -> dict:
    """Median and interquartile range of ms per iteration over ``repeats`` rounds.

    Each round times every variant for ``iters`` iterations, the order rotated by
    one from round to round.
    """
    for step in variants.values():
        for i in range(warmup):
            step(task_batches[i % len(task_batches)])
    names = list(variants)
    ms = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            step = variants[name]
            start = time.perf_counter()
            for i in range(iters):
                step(task_batches[i % len(task_batches)])
            ms[name].append((time.perf_counter() - start) / iters * 1e3)
        print(f"round {round_ + 1}/{repeats} done", flush=True)
    results = {}
    for name in names:
        q1, median, q3 = statistics.quantiles(ms[name], n=4, method="inclusive")
        results[name] = {
            "median_ms": median,
            "q1_ms": q1,
            "q3_ms": q3,
            "runs_ms": ms[name],
        }
    return results


def first_call(threads: int, n_inner_steps: int, seed: int) -> dict:
    """Seconds of the compiled path's first second-order call (its compile) and of
    the next one, at the paper's sizes, in this process."""
    torch.set_num_threads(threads)
    params = init_params(MLP(SIZES), make_generator(seed, "init"))
    tasks = SinusoidTasks().sample(
        META_BATCH_SIZE, K_SHOT, N_QUERY, make_generator(seed, "tasks")
    )
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        mamllib_meta_gradient(params, tasks, False, n_inner_steps, "compiled")
        seconds.append(time.perf_counter() - start)
    return {"first_call_s": seconds[0], "second_call_s": seconds[1]}


def compile_starts(threads: int, n_inner_steps: int, seed: int) -> dict:
    """A cold then a warm start of the compiled path, each in a fresh process."""
    starts = {}
    with tempfile.TemporaryDirectory(prefix="sinusoid-speed-") as folder:
        env = {
            **os.environ,
            "TMPDIR": folder,  # inductor's precompiled headers go under it
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "inductor"),
        }
        command = [
            sys.executable,
            __file__,
            "--first-call",
            f"--threads={threads}",
            f"--n-inner-steps={n_inner_steps}",
            f"--seed={seed}",
        ]
        for name in ("cold", "warm"):
            start = time.perf_counter()
            out = subprocess.run(
                command, env=env, check=True, capture_output=True, text=True
            ).stdout
            starts[name] = {
                **json.loads(out.splitlines()[-1]),
                "process_s": time.perf_counter() - start,
            }
            print(
                f"{name} start: first compiled call "
                f"{starts[name]['first_call_s']:.1f} s, whole process "
                f"{starts[name]['process_s']:.1f} s",
                flush=True,
            )
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-inner-steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=8, help="iterations per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-compile-start",
        action="store_true",
        help="skip the cold and warm start of the compiled path",
    )
    parser.add_argument(
        "--note", default="", help="recorded in the report (e.g. the machine's load)"
    )
    parser.add_argument("--first-call", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    n = args.n_inner_steps
    if args.first_call:  # a child of compile_starts: one JSON line
        print(json.dumps(first_call(args.threads, n, args.seed)))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()

    params = init_params(MLP(SIZES), make_generator(args.seed, "init"))
    task_gen = make_generator(args.seed, "tasks")
    task_batches = [
        SinusoidTasks().sample(META_BATCH_SIZE, K_SHOT, N_QUERY, task_gen)
        for _ in range(N_TASK_BATCHES)
    ]
    print(
        f"torch {torch.__version__}, threads {args.threads}, inner steps {n}, "
        f"{args.repeats} rounds x {args.iters} iterations after {args.warmup} "
        f"warm-up, load average {load_before[0]:.1f} on {os.cpu_count()} CPUs"
    )
    compile_seconds = (
        {} if args.no_compile_start else compile_starts(args.threads, n, args.seed)
    )

    variants = {}
    for order, first_order in (("2nd", False), ("1st", True)):
        for strategy in STRATEGIES:
            variants[f"mamllib-{strategy} {order}"] = mamllib_step(
                strategy, first_order, n, params
            )
    # max |meta-gradient difference|, on the first task batch. The first-order checks
    # mean something only if the orders differ far more.
    loop_grads = [
        mamllib_meta_gradient(params, task_batches[0], fo, n) for fo in (False, True)
    ]
    checks = {"mamllib loop 2nd vs 1st": max_abs_diff(*loop_grads)}
    for (order, first_order), loop_grad in zip(
        (("2nd", False), ("1st", True)), loop_grads
    ):
        compiled_grad = mamllib_meta_gradient(
            params, task_batches[0], first_order, n, "compiled"
        )
        checks[f"mamllib compiled vs mamllib loop {order}"] = max_abs_diff(
            compiled_grad, loop_grad
        )
    if higher is None:
        print("higher is not importable: skipping its rows")
    else:
        for order, first_order in (("2nd", False), ("1st", True)):
            checks[f"higher vs mamllib loop {order}"] = gradient_gap(
                params, task_batches[0], first_order, n
            )
            variants[f"higher {order}"] = higher_step(first_order, n, params)
    for name, gap in checks.items():
        print(f"max |meta-grad difference|, {name}: {gap:.2e}")

    results = time_variants(
        variants, task_batches, args.warmup, args.iters, args.repeats
    )
    print(f"\n{'variant':<22}{'median ms/it':>14}   IQR ms")
    for name, r in results.items():
        print(
            f"{name:<22}{r['median_ms']:>14.2f}   {r['q1_ms']:.2f} - {r['q3_ms']:.2f}"
        )

    ratios = {}
    for order in ("2nd", "1st"):
        for fast in ("vmap", "compiled"):
            fast_ms = results[f"mamllib-{fast} {order}"]["median_ms"]
            slower = ["mamllib-loop", "higher"] + (["mamllib-vmap"] * (fast != "vmap"))
            for name in slower:
                if f"{name} {order}" in results:
                    ratios[f"{name} / mamllib-{fast} {order}"] = (
                        results[f"{name} {order}"]["median_ms"] / fast_ms
                    )
    print()
    for name, ratio in sorted(ratios.items()):
        print(f"{name:<40}{ratio:>7.2f}x")
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")

    if args.out:
        config = {k: v for k, v in vars(args).items() if k not in ("out", "first_call")}
        higher_version = higher and importlib.metadata.version("higher")
        config.update(
            sizes=SIZES,
            meta_batch_size=META_BATCH_SIZE,
            k_shot=K_SHOT,
            n_query=N_QUERY,
            inner_lr=INNER_LR,
            outer_lr=OUTER_LR,
            torch=torch.__version__,
            machine=platform.machine(),
            cpus=os.cpu_count(),
            load_average_before=load_before,
            load_average_after=load_after,
            compile_cache=str(compile_cache_dir()),
            higher=higher_version,
        )
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": config,
                    "results_ms_per_iteration": results,
                    "ratios": ratios,
                    "max_abs_grad_diff": checks,
                    "compile_seconds": compile_seconds,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
