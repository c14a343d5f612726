"""The cost of second order: time and peak memory per meta-iteration vs inner steps.

MiniImageNet 5-way 1-shot at the paper's shapes (App. A.1): the 32-filter max-pool
conv-4 on 84x84 RGB images, meta-batch 4, 1 support and 15 query images per class,
inner_lr 0.01, one meta-iteration = meta-loss, its gradient (clipped to [-10, 10])
and an Adam step. For each number of inner steps (1..10), second-order MAML (the
gradient flows through every inner update: ``create_graph=True``) against first order
(the inner gradients are constants), optionally a third curve: second order with
each task's adaptation recomputed in the backward pass (gradient checkpointing).

Each configuration runs in a fresh subprocess, so one's memory cannot hide another's:

* time: the median over ``--iters`` timed meta-iterations after one warm-up;
* peak memory, CPU: the growth of the process's peak resident set (``ru_maxrss``)
  over the warm-up and timed iterations, against its value just before them (data
  and parameters already in memory); on CUDA, ``torch.cuda.max_memory_allocated``
  over the same span;
* graph memory: the bytes of every tensor autograd saved for the backward pass in one
  meta-iteration (``torch.autograd.graph.saved_tensors_hooks``), counting each
  storage once. It does not depend on the allocator, so it shows the structure most
  clearly: second order keeps every inner step's graph (linear in the steps), first
  order keeps only the last forward's (flat).

Images are random (the cost does not depend on the pixels). Run from the repository
root (several minutes on a CPU; ``--steps 1 --iters 1`` for a quick try):

    .venv/bin/python benchmarks/second_order_cost.py [--threads 2] [--iters 1]
        [--steps 1 2 3 4 5 6 7 8 9 10] [--checkpointing 1 5 10] [--device cpu]
        [--allocator keep] [--out benchmarks/results/second-order-cost-cpu.json]

The committed reports: ``second-order-cost-cpu.json`` and, from an H200 GPU,
``second-order-cost-cuda.json`` in ``benchmarks/results/`` (see
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch

from mamllib.fast.allocator import add_allocator_option, use_allocator
from mamllib.runs import git_commit

PAPER_SHAPES = {
    "n_way": 5,
    "k_shot": 1,
    "n_query": 15,
    "meta_batch_size": 4,
    "inner_lr": 0.01,
    "n_filters": 32,
    "image_size": 84,
}
VARIANTS = ("second_order", "first_order", "second_order_checkpointed")


def checkpointed_meta_loss(model, params, tasks, loss_fn, inner_lr, n_inner_steps):
    """Second-order meta-loss, each task's adaptation recomputed in the backward pass.

    ``torch.utils.checkpoint`` keeps only the task's inputs; during the backward pass
    it reruns the task's inner loop and query loss with the graph, so at most one
    task's second-order graph is alive at a time. Same gradient, more compute.
    """
    from torch.utils.checkpoint import checkpoint

    from mamllib.maml import adapt, task_loss

    names = list(params)

    def one_task(xs, ys, xq, yq, *values):
        p = dict(zip(names, values))
        adapted = adapt(model, p, xs, ys, loss_fn, inner_lr, n_inner_steps)
        return task_loss(model, adapted, xq, yq, loss_fn)

    losses = [
        checkpoint(
            one_task,
            tasks.x_support[i],
            tasks.y_support[i],
            tasks.x_query[i],
            tasks.y_query[i],
            *params.values(),
            use_reentrant=False,
        )
        for i in range(len(tasks))
    ]
    return torch.stack(losses).mean()


def measure(variant: str, n_inner_steps: int, iters: int, device: str) -> dict:
    """Time and memory of one configuration (run inside a fresh subprocess)."""
    from mamllib.data.miniimagenet import Episodes
    from mamllib.maml import cross_entropy_loss, meta_loss_batched
    from mamllib.models import Conv4, init_params

    s = PAPER_SHAPES
    model = Conv4(
        s["n_way"], 3, s["n_filters"], s["image_size"], max_pool=True
    )  # the MiniImageNet conv-4
    params = init_params(model, torch.Generator().manual_seed(0), device=device)
    g = torch.Generator().manual_seed(1)
    size, t = s["image_size"], s["meta_batch_size"]
    labels = torch.arange(s["n_way"])
    tasks = Episodes(
        x_support=torch.rand(t, s["n_way"] * s["k_shot"], 3, size, size, generator=g),
        y_support=labels.repeat_interleave(s["k_shot"]).repeat(t, 1),
        x_query=torch.rand(t, s["n_way"] * s["n_query"], 3, size, size, generator=g),
        y_query=labels.repeat_interleave(s["n_query"]).repeat(t, 1),
        classes=torch.zeros(t, s["n_way"], dtype=torch.long),
        examples=torch.zeros(t, s["n_way"], 2, dtype=torch.long),
    ).to(device)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)

    def meta_loss():
        if variant == "second_order_checkpointed":
            return checkpointed_meta_loss(
                model, params, tasks, cross_entropy_loss, s["inner_lr"], n_inner_steps
            )
        return meta_loss_batched(
            model,
            params,
            tasks,
            cross_entropy_loss,
            s["inner_lr"],
            n_inner_steps,
            first_order=variant == "first_order",
        )

    saved: list[weakref.ref] = []

    def pack(x):
        saved.append(weakref.ref(x))
        return x

    def graph_mb() -> float:
        """Bytes of the saved tensors still alive (first order frees each inner
        step's graph after its gradient; second order keeps them all)."""
        storages = {}
        for ref in saved:
            x = ref()
            if x is not None:
                storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return sum(storages.values()) / 2**20

    graph: list[float] = []

    def step(record_graph: bool = False) -> float:
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if record_graph:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                loss = meta_loss()
            graph.append(graph_mb())  # at the end of the forward pass: the peak
        else:
            loss = meta_loss()
        loss.backward()
        for p in params.values():
            p.grad.clamp_(-10, 10)
        optimizer.step()
        sync()
        return time.perf_counter() - t0

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def peak_mb() -> float:
        if device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = peak_mb()
    step(record_graph=True)  # warm-up, and the graph's size
    times = [step() for _ in range(iters)]
    return {
        "variant": variant,
        "n_inner_steps": n_inner_steps,
        "ms_per_iteration": 1000 * statistics.median(times),
        "runs_ms": [1000 * x for x in times],
        "peak_mb": peak_mb() - before,
        # Checkpointing hides its saved tensors from these hooks: not comparable.
        "graph_mb": None if variant == "second_order_checkpointed" else graph[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpointing",
        type=int,
        nargs="*",
        default=None,
        help="also second order with gradient checkpointing, at these inner steps",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--note", default="", help="conditions of the run, kept")
    add_allocator_option(parser)
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:  # inside the subprocess: one configuration, JSON on stdout
        use_allocator(args.allocator)
        result = measure(args.one[0], int(args.one[1]), args.iters, args.device)
        print(json.dumps(result))
        return
    configurations = [(n, v) for n in args.steps for v in VARIANTS[:2]]
    configurations += [(n, VARIANTS[2]) for n in args.checkpointing or []]
    results = []
    started = time.perf_counter()
    args.commit = git_commit()  # before the report exists: it would make the tree dirty
    for n_steps, variant in configurations:
        command = [
            sys.executable,
            __file__,
            "--one",
            variant,
            str(n_steps),
            "--iters",
            str(args.iters),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
            "--allocator",
            args.allocator,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        write(args, results, started)
        print(
            f"{variant:>26} steps {n_steps:2d}: "
            f"{result['ms_per_iteration']:8.0f} ms/it, "
            f"peak +{result['peak_mb']:7.0f} MB, "
            f"graph {result['graph_mb'] or float('nan'):7.0f} MB",
            flush=True,
        )
    write(args, results, started, final=True)


def ratios_of(results: list[dict]) -> list[dict]:
    """First vs second order at each step count both were measured at."""
    by = {(r["variant"], r["n_inner_steps"]): r for r in results}
    ratios = []
    for (variant, n_steps), second in sorted(by.items(), key=lambda x: x[0][1]):
        first = by.get(("first_order", n_steps))
        if variant != "second_order" or first is None:
            continue
        ratios.append(
            {
                "n_inner_steps": n_steps,
                # time saved by first order, as a fraction of second order's time
                "first_order_time_saving": 1
                - first["ms_per_iteration"] / second["ms_per_iteration"],
                "second_over_first_time": second["ms_per_iteration"]
                / first["ms_per_iteration"],
                "second_over_first_graph_memory": second["graph_mb"]
                / first["graph_mb"],
            }
        )
    return ratios


def write(args, results: list[dict], started: float, final: bool = False) -> None:
    """The report so far (rewritten after every configuration, so a run cut short
    keeps what it measured); at the end, the ratios are printed too."""
    ratios = ratios_of(results)
    if final:
        for r in ratios:
            print(
                f"steps {r['n_inner_steps']:2d}: first order saves "
                f"{100 * r['first_order_time_saving']:4.1f} % of the time "
                f"(paper: 'roughly 33%' at 5 steps); graph memory second/first "
                f"{r['second_over_first_graph_memory']:.2f}x"
            )
    if not args.out:
        return
    report = {
        "what": __doc__.splitlines()[0],
        "shapes": PAPER_SHAPES,
        "strategy": "batched (checkpointed: per-task loop with torch.utils.checkpoint)",
        "device": args.device,
        "threads": args.threads,
        "allocator": args.allocator,
        "commit": args.commit,
        "iters": args.iters,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "command": " ".join(["python", *sys.argv]),
        "complete": final,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "note": args.note,
        "results": results,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if final:
        print("->", args.out)


if __name__ == "__main__":
    main()
