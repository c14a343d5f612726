"""Speed of one MAML meta-iteration with the conv-4 on Omniglot-shaped episodes.

Run from the repository root:

    .venv/bin/python benchmarks/omniglot_speed.py [--threads 2] [--repeats 3]
                                                  [--iters 2] [--out results.json]

Settings, the paper's (App. A.1), second order, Adam (lr 1e-3) step included:

* 5-way 1-shot: meta-batch 32, 1 support and 1 query image per class, inner_lr 0.4,
  1 inner step;
* 20-way 1-shot: meta-batch 16, 1 + 1 images per class, inner_lr 0.1, 5 inner steps.

Images are random sparse binary ``[1, 28, 28]`` tensors (see :func:`random_tasks`).
Variants, each timed alone:

* mamllib ``meta_gradient(..., strategy=...)`` for ``loop`` (per task, autograd),
  ``vmap`` (``torch.func``), ``batched`` (tasks folded into the channels of one
  grouped convolution, :meth:`mamllib.models.Conv4.forward_tasks`), ``threads``
  (the batched path, tasks shared among CPU threads) and ``batched-native`` (the
  batched path on PyTorch's own kernels, see :func:`mamllib_step`);
* ``higher``: ``innerloop_ctx`` over an ordinary ``nn.Module`` conv-4 (``nn.Conv2d``,
  ``nn.ZeroPad2d`` for TF's 'SAME', ``nn.BatchNorm2d`` without running statistics
  plus a learned offset) holding the same weights, one task at a time as in
  higher's MAML example. Its meta-gradient is checked against mamllib's loop first
  (float64, a few tasks).

``--allocator keep`` (the default) runs the whole process with
:func:`mamllib.fast.allocator.keep_freed_memory`, as training does, for every
variant, ``higher`` included; ``--allocator default`` is glibc's behaviour.

Then the fastest mamllib path is profiled (``torch.profiler``, top ops by self CPU
time); when that is ``threads``, the profiler would see only the calling thread, so
the first thread's share of the tasks is profiled on the batched path, one thread.
CPU timings on a shared machine are noisy: compare ratios from one run. The results
files, where the time goes and what was tried and not kept: ``benchmarks/README.md``.
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
from torch.profiler import ProfilerActivity, profile

from mamllib.fast.allocator import add_allocator_option, use_allocator
from mamllib.maml import cross_entropy_loss, meta_gradient
from mamllib.models import Conv4, detach_params, init_params
from mamllib.runs import git_commit
from mamllib.tasks import TaskBatch, make_generator

try:
    import higher
except ImportError:
    higher = None

OUTER_LR = 1e-3
SETTINGS = {  # name: (n_way, meta-batch, inner_lr, inner steps), paper App. A.1
    "5-way 1-shot": (5, 32, 0.4, 1),
    "20-way 1-shot": (20, 16, 0.1, 5),
}
PATHS = ("loop", "vmap", "batched", "threads", "batched-native")
N_TASK_BATCHES = 2  # every variant cycles through the same few meta-batches
N_CHECK_TASKS = 4  # tasks in the float64 gradient check against higher


def random_tasks(n_tasks: int, n_way: int, generator: torch.Generator) -> TaskBatch:
    """A 1-shot meta-batch of random 28x28 images with labels 0..n_way-1.

    Sparse pixels, like Omniglot's strokes on a zero background, with random
    values. Speed does not depend on them, but the gradient checks do: on dense
    uniform noise the float32 second-order meta-gradient through batch norm is
    ill-conditioned and float32 implementations disagree by up to 20%; binary
    pixels make exact ties at ReLU kinks, where rounding picks the side.
    """
    shape = (n_tasks, n_way, 1, 28, 28)  # [T, N * K, C, H, W], K = 1
    labels = torch.arange(n_way).expand(n_tasks, -1).contiguous()
    unused = torch.zeros(n_tasks)
    x_support, x_query = (
        (torch.rand(shape, generator=generator) < 0.15)
        * torch.rand(shape, generator=generator)
        for _ in range(2)
    )
    return TaskBatch(x_support, labels, x_query, labels.clone(), unused, unused)


def mamllib_step(strategy, n_way, inner_lr, n_inner_steps, params):
    """A meta-iteration with mamllib: ``step(tasks)`` = meta-gradient + Adam step.

    ``strategy`` ``"batched-native"`` is the batched path without the mirrored padding,
    so on PyTorch's own kernels (``F.pad``, its grouped convolution and
    ``F.batch_norm``) instead of :mod:`mamllib.fast.convolution` and
    :mod:`mamllib.fast.normalization`: what those gain, measured in the same run.
    """
    model = Conv4(n_way)
    if strategy == "batched-native":
        model.mirrored_padding, strategy = None, "batched"
    params = detach_params(params)
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR)

    def step(tasks: TaskBatch) -> None:
        _, grads = meta_gradient(
            model,
            params,
            tasks,
            cross_entropy_loss,
            inner_lr,
            n_inner_steps,
            strategy=strategy,
        )
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()

    return step


class TorchConv4(nn.Module):
    """The conv-4 as a higher user would write it, from ``torch.nn`` layers."""

    def __init__(self, n_way: int, n_filters: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        self.betas = nn.ParameterList()
        for i, pad in enumerate(Conv4(n_way).paddings):
            layers.append(nn.ZeroPad2d((pad[0], pad[1], pad[0], pad[1])))
            layers.append(nn.Conv2d(1 if i == 0 else n_filters, n_filters, 3, 2))
            # Batch statistics always; TF's default has no scale, so no affine
            # weight: the offset beta is a parameter of its own.
            layers.append(
                nn.BatchNorm2d(
                    n_filters, eps=1e-3, affine=False, track_running_stats=False
                )
            )
            self.betas.append(nn.Parameter(torch.zeros(n_filters)))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(n_filters, n_way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(4):
            # Indexed one by one: higher's patched ModuleList cannot be sliced.
            pad, conv, norm = (self.layers[3 * i + j] for j in range(3))
            h = torch.relu(norm(conv(pad(h))) + self.betas[i].view(1, -1, 1, 1))
        return self.head(h.mean((2, 3)))

    def load_mamllib(self, params) -> None:
        """Copy mamllib's ``Conv4`` parameters in."""
        with torch.no_grad():
            for i in range(4):
                conv = self.layers[3 * i + 1]
                conv.weight.copy_(params[f"conv{i + 1}.weight"])
                conv.bias.copy_(params[f"conv{i + 1}.bias"])
                self.betas[i].copy_(params[f"norm{i + 1}.bias"])
            self.head.weight.copy_(params["head.weight"])
            self.head.bias.copy_(params["head.bias"])

    def grads_as_mamllib(self) -> dict:
        grads = {}
        for i in range(4):
            conv = self.layers[3 * i + 1]
            grads[f"conv{i + 1}.weight"] = conv.weight.grad
            grads[f"conv{i + 1}.bias"] = conv.bias.grad
            grads[f"norm{i + 1}.bias"] = self.betas[i].grad
        grads["head.weight"], grads["head.bias"] = (
            self.head.weight.grad,
            self.head.bias.grad,
        )
        return grads


def higher_meta_gradient(model, tasks, inner_lr, n_inner_steps) -> None:
    """Accumulate the MAML meta-gradient into ``model``'s ``.grad``, the higher way."""
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    n_tasks = len(tasks)
    for i in range(n_tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
            fmodel,
            diffopt,
        ):
            for _ in range(n_inner_steps):
                support_loss = cross_entropy_loss(
                    fmodel(tasks.x_support[i]), tasks.y_support[i]
                )
                diffopt.step(support_loss)
            query_loss = cross_entropy_loss(fmodel(tasks.x_query[i]), tasks.y_query[i])
            (query_loss / n_tasks).backward()


def higher_step(n_way, inner_lr, n_inner_steps, params):
    """A meta-iteration with higher: meta-gradient + Adam step."""
    model = TorchConv4(n_way)
    model.load_mamllib(params)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)

    def step(tasks: TaskBatch) -> None:
        opt.zero_grad()
        higher_meta_gradient(model, tasks, inner_lr, n_inner_steps)
        opt.step()

    return step


def relative_gap(a, b) -> float:
    """Max over parameters of |a - b| / |b| (norms); conv biases, which batch norm
    cancels, relative to the largest gradient instead."""
    scale = max(v.abs().max() for v in b.values())
    gaps = []
    for k in b:
        cancelled = k.startswith("conv") and k.endswith("bias")
        gaps.append((a[k] - b[k]).norm() / (scale if cancelled else b[k].norm()))
    return max(gaps).item()


def higher_gap(params, tasks, n_way, inner_lr, n_inner_steps) -> float:
    """Relative gap between higher's and mamllib loop's meta-gradients, in float64.

    float64 because the check asks whether both compute the same function: in
    float32 the second-order meta-gradient after several inner steps on random
    images is ill-conditioned (correct float32 implementations differ by up to
    1e-2 there), which would hide a real difference or flag a false one.
    """
    params = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    tasks = TaskBatch(
        *(
            v[:N_CHECK_TASKS].double() if v.is_floating_point() else v[:N_CHECK_TASKS]
            for v in vars(tasks).values()
        )
    )
    model = TorchConv4(n_way).double()
    model.load_mamllib(params)
    higher_meta_gradient(model, tasks, inner_lr, n_inner_steps)
    _, reference = meta_gradient(
        Conv4(n_way),
        params,
        tasks,
        cross_entropy_loss,
        inner_lr,
        n_inner_steps,
        strategy="loop",
    )
    return relative_gap(model.grads_as_mamllib(), reference)


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
    if len(ms) == 1:
        q1 = median = q3 = ms[0]
    else:
        q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "runs_ms": ms}


def profile_top_ops(step, tasks, row_limit=10) -> str:
    """``torch.profiler`` table of one meta-iteration, top ops by self CPU time."""
    step(tasks)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(tasks)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2, help="iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS)
    )
    parser.add_argument(
        "--variants", nargs="+", default=[*PATHS, "higher"], choices=[*PATHS, "higher"]
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--note", default="", help="conditions of the run, kept")
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args.allocator)  # process-wide: every variant, higher included
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, threads {args.threads}, "
        f"allocator {args.allocator}, {args.repeats} runs x {args.iters} iterations "
        f"after {args.warmup} warm-up"
    )

    all_results, checks, ratios, profiles = {}, {}, {}, {}
    for setting in args.settings:
        n_way, n_tasks, inner_lr, n_steps = SETTINGS[setting]
        print(
            f"\n== {setting}: meta-batch {n_tasks}, inner_lr {inner_lr}, "
            f"{n_steps} inner steps"
        )
        params = init_params(Conv4(n_way), make_generator(args.seed, "init"))
        task_gen = make_generator(args.seed, "tasks")
        task_batches = [
            random_tasks(n_tasks, n_way, task_gen) for _ in range(N_TASK_BATCHES)
        ]
        variants = {
            f"mamllib-{p}": mamllib_step(p, n_way, inner_lr, n_steps, params)
            for p in PATHS
            if p in args.variants
        }
        if "higher" in args.variants:
            if higher is None:
                print("higher is not importable: skipping its row")
            else:
                gap = higher_gap(params, task_batches[0], n_way, inner_lr, n_steps)
                checks[f"{setting}: higher vs mamllib loop"] = gap
                print(
                    "relative meta-gradient gap, higher vs mamllib loop "
                    f"(float64, {N_CHECK_TASKS} tasks): {gap:.1e}"
                )
                if gap > 1e-8:
                    raise RuntimeError(
                        "higher's meta-gradient differs from mamllib's: the timing "
                        "would compare different computations"
                    )
                variants["higher"] = higher_step(n_way, inner_lr, n_steps, params)

        results = all_results[setting] = {}
        print(f"{'variant':<18}{'median ms/it':>14}   IQR ms")
        for name, step in variants.items():
            r = results[name] = time_variant(
                step, task_batches, args.warmup, args.iters, args.repeats
            )
            print(
                f"{name:<18}{r['median_ms']:>14.1f}   "
                f"{r['q1_ms']:.1f} - {r['q3_ms']:.1f}",
                flush=True,
            )
        ours = {k: v["median_ms"] for k, v in results.items() if k != "higher"}
        if ours:
            fastest = min(ours, key=ours.get)
            for name, r in results.items():
                if name != fastest:
                    ratio = r["median_ms"] / ours[fastest]
                    ratios[f"{setting}: {name} / {fastest}"] = ratio
                    print(f"{name} / {fastest}: {ratio:.2f}x")
            if not args.no_profile:
                strategy = fastest.removeprefix("mamllib-")
                tasks, profiled = task_batches[0], fastest
                if strategy == "threads":
                    # The profiler sees only the calling thread: profile the first
                    # thread's share instead (as meta_loss_threads splits the
                    # tasks), the batched path on one thread.
                    share = torch.arange(n_tasks).tensor_split(args.threads)[0]
                    tasks, strategy = tasks.subset(share), "batched"
                    profiled = f"mamllib-batched, one thread, {len(share)} tasks"
                    torch.set_num_threads(1)
                table = profile_top_ops(
                    mamllib_step(strategy, n_way, inner_lr, n_steps, params), tasks
                )
                torch.set_num_threads(args.threads)  # as set for the timings
                profiles[setting] = {"variant": profiled, "table": table}
                print(f"\nprofile of {profiled}, one meta-iteration:\n{table}")

    if args.out:
        config = {k: v for k, v in vars(args).items() if k != "out"}
        config.update(
            settings_detail=SETTINGS,
            outer_lr=OUTER_LR,
            torch=torch.__version__,
            machine=platform.machine(),
            higher=higher and importlib.metadata.version("higher"),
            commit=git_commit(),
        )
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": config,
                    "results_ms_per_iteration": all_results,
                    "ratios": ratios,
                    "relative_grad_gap": checks,
                    "profiles": profiles,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
