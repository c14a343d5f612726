"""Speed of one MAML meta-iteration on the sinusoid: mamllib's two paths vs ``higher``.

Run from the repository root:

    .venv/bin/python benchmarks/sinusoid_speed.py [--threads 1] [--n-inner-steps 1]
                                                  [--out results.json]

Setting: the paper's sinusoid regression (§5.1) -- MLP 1-40-40-1 ReLU, meta-batch of
25 tasks, K=10 support and 10 query points, inner SGD step size 0.01, MSE loss,
Adam (lr 1e-3) as the outer optimiser.

One meta-iteration = the meta-gradient over the meta-batch plus one Adam step. Timed,
second and first order each:

* mamllib ``meta_gradient(..., strategy="loop")`` (per-task loop, ``torch.autograd``);
* mamllib ``meta_gradient(..., strategy="vmap")`` (``torch.func.grad`` + ``vmap``);
* ``higher`` (optional): ``innerloop_ctx(model, SGD, copy_initial_weights=False)`` on
  an ``nn.Sequential``, a per-task loop with each query loss backpropagated as in
  higher's MAML example; first order detaches the inner gradients through
  ``diffopt.step(..., grad_callback=...)`` (``track_higher_grads=False`` would cut
  the fast weights off from the initial weights, which is not first-order MAML).

Before timing, higher's meta-gradient is checked against mamllib's loop path on the
same weights and tasks. Each variant is warmed up, then timed alone in ``--repeats``
runs of ``--iters`` iterations on the same cycle of task batches; the table shows
the median ms per iteration and the interquartile range over the runs. CPU timings
on a shared machine are noisy: compare ratios, and rerun before trusting small gaps.
``make benchmark`` runs it; the committed report is
``benchmarks/results/cpu-sinusoid.json`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import time

import torch
from torch import nn

from mamllib.maml import meta_gradient, mse_loss
from mamllib.models import MLP, detach_params, init_params
from mamllib.tasks import SinusoidTasks, TaskBatch, make_generator

try:
    import higher
except ImportError:
    higher = None

SIZES = (1, 40, 40, 1)
META_BATCH_SIZE, K_SHOT, N_QUERY = 25, 10, 10
INNER_LR, OUTER_LR = 0.01, 1e-3
N_TASK_BATCHES = 4  # every variant cycles through the same few meta-batches


def mamllib_step(strategy, first_order, n_inner_steps, params):
    """A meta-iteration with mamllib: ``step(tasks)`` = meta-gradient + Adam step."""
    model = MLP(SIZES)
    params = detach_params(params)
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR)

    def step(tasks: TaskBatch) -> None:
        _, grads = meta_gradient(
            model,
            params,
            tasks,
            mse_loss,
            INNER_LR,
            n_inner_steps,
            first_order,
            strategy=strategy,
        )
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()

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
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)

    def step(tasks: TaskBatch) -> None:
        opt.zero_grad()
        higher_meta_gradient(model, tasks, first_order, n_inner_steps)
        opt.step()

    return step


def loop_meta_gradient(params, tasks, first_order, n_inner_steps):
    """mamllib's loop-path meta-gradient, the reference for the agreement check."""
    return meta_gradient(
        MLP(SIZES),
        detach_params(params),
        tasks,
        mse_loss,
        INNER_LR,
        n_inner_steps,
        first_order,
        strategy="loop",
    )[1]


def max_abs_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def gradient_gap(params, tasks, first_order, n_inner_steps) -> float:
    """Max |higher's meta-gradient - mamllib loop's| on the same weights and tasks."""
    model = higher_model(params)
    higher_meta_gradient(model, tasks, first_order, n_inner_steps)
    grads = {"net." + k: p.grad for k, p in model.named_parameters()}
    return max_abs_diff(
        grads, loop_meta_gradient(params, tasks, first_order, n_inner_steps)
    )


def time_variant(step, task_batches, warmup, iters, repeats) -> dict:
    """Median and interquartile range of ms per iteration over ``repeats`` runs."""
    for i in range(warmup):
        step(task_batches[i % len(task_batches)])
    ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(iters):
            step(task_batches[i % len(task_batches)])
        ms.append((time.perf_counter() - start) / iters * 1e3)
    q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "runs_ms": ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-inner-steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=8, help="iterations per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    params = init_params(MLP(SIZES), make_generator(args.seed, "init"))
    task_gen = make_generator(args.seed, "tasks")
    task_batches = [
        SinusoidTasks().sample(META_BATCH_SIZE, K_SHOT, N_QUERY, task_gen)
        for _ in range(N_TASK_BATCHES)
    ]
    n = args.n_inner_steps
    print(
        f"torch {torch.__version__}, threads {args.threads}, inner steps {n}, "
        f"{args.repeats} runs x {args.iters} iterations after {args.warmup} warm-up"
    )

    variants = {}
    for order, first_order in (("2nd", False), ("1st", True)):
        for strategy in ("loop", "vmap"):
            variants[f"mamllib-{strategy} {order}"] = mamllib_step(
                strategy, first_order, n, params
            )
    checks = {}  # max |meta-gradient difference|, on the first task batch
    if higher is None:
        print("higher is not importable: skipping its rows")
    else:
        # The first-order check means something only if the orders differ far more.
        loop_grads = [
            loop_meta_gradient(params, task_batches[0], fo, n) for fo in (False, True)
        ]
        checks["mamllib loop 2nd vs 1st"] = max_abs_diff(*loop_grads)
        for order, first_order in (("2nd", False), ("1st", True)):
            checks[f"higher vs mamllib loop {order}"] = gradient_gap(
                params, task_batches[0], first_order, n
            )
            variants[f"higher {order}"] = higher_step(first_order, n, params)
        for name, gap in checks.items():
            print(f"max |meta-grad difference|, {name}: {gap:.2e}")

    results = {}
    print(f"\n{'variant':<20}{'median ms/it':>14}   IQR ms")
    for name, step in variants.items():
        r = results[name] = time_variant(
            step, task_batches, args.warmup, args.iters, args.repeats
        )
        print(
            f"{name:<20}{r['median_ms']:>14.2f}   {r['q1_ms']:.2f} - {r['q3_ms']:.2f}",
            flush=True,
        )

    ratios = {}
    for order in ("2nd", "1st"):
        vmap_ms = results[f"mamllib-vmap {order}"]["median_ms"]
        ratios[f"mamllib-loop / mamllib-vmap {order}"] = (
            results[f"mamllib-loop {order}"]["median_ms"] / vmap_ms
        )
        if f"higher {order}" in results:
            ratios[f"higher / mamllib-vmap {order}"] = (
                results[f"higher {order}"]["median_ms"] / vmap_ms
            )
    print()
    for name, ratio in sorted(ratios.items()):
        print(f"{name:<34}{ratio:>6.2f}x")

    if args.out:
        config = {k: v for k, v in vars(args).items() if k != "out"}
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
            higher=higher_version,
        )
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": config,
                    "results_ms_per_iteration": results,
                    "ratios": ratios,
                    "max_abs_grad_diff": checks,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
