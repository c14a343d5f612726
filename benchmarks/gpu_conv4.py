"""The conv-4 meta-iteration on a CUDA GPU: how far each path's float32 meta-gradient
is from float64 with TF32 on and off, and milliseconds per meta-iteration, eager and
replayed from a CUDA graph, against the floor the GPU's measured peak sets.

Run from the repository root on a machine with a CUDA GPU:

    .venv/bin/python benchmarks/gpu_conv4.py --out benchmarks/results/gpu-conv4.json

or, to run every code path on the CPU at small sizes first (a dry run; its numbers
mean nothing):

    .venv/bin/python benchmarks/gpu_conv4.py --device cpu --quick

Settings are the paper presets' (``mamllib.presets``): Omniglot 5-way 1-shot and
20-way 1-shot, MiniImageNet 5-way 1-shot, second order, Adam step included, on random
sparse images of the right shapes (as ``omniglot_speed.random_tasks``: speed does not
depend on the pixels).

1. **Agreement.** PyTorch lets cuDNN use TF32 (a 10-bit mantissa) for float32
   convolutions by default (``torch.backends.cudnn.allow_tf32``), while float32
   matrix products stay IEEE (``torch.backends.cuda.matmul.allow_tf32``). For each
   path (``loop``, ``vmap``, ``batched``) the meta-gradient in float32 with cuDNN's
   TF32 on, and off, is compared with the per-task loop in float64 on the same
   device: ``max |g - g64| / max |g64|``. The second-order meta-gradient through
   batch norm amplifies rounding, so TF32's error can be large where IEEE float32's
   is not.
2. **Speed.** Median ms per meta-iteration for each path in float32 (TF32 as
   PyTorch's default and off), and the batched path captured once in a CUDA graph
   and replayed (no Python or kernel-launch overhead per iteration; Adam with
   ``capturable=True``).
3. **Floor.** FLOPs of one meta-iteration (``torch.utils.flop_counter``) over the
   GPU's measured dense matmul rate, float32 and TF32: the time no implementation of
   the same arithmetic can beat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mamllib.episodes import Episodes
from mamllib.experiments.fewshot_evaluation import model_for
from mamllib.maml import cross_entropy_loss, meta_gradient
from mamllib.models import init_params
from mamllib.presets import make_config
from mamllib.runs import git_commit
from mamllib.tasks import make_generator

SETTINGS = ("omniglot-5way-1shot", "omniglot-20way-1shot", "miniimagenet-5way-1shot")
PATHS = ("loop", "vmap", "batched")


def tasks_for(config, n_tasks, device, dtype, seed=0) -> Episodes:
    """A meta-batch of random sparse images shaped as ``config``'s 1-shot episodes:
    Omniglot-like strokes (15% of the pixels set, random values) on zeros."""
    generator = make_generator(seed)
    n_way, n_query = config["n_way"], config["n_query"]
    size, channels = config.get("image_size") or 28, config.get("in_channels") or 1

    def images(per_class):
        shape = (n_tasks, n_way * per_class, channels, size, size)
        pixels = torch.rand(shape, generator=generator)
        return ((pixels < 0.15) * torch.rand(shape, generator=generator)).to(
            device, dtype
        )

    def labels(per_class):
        return torch.arange(n_way).repeat_interleave(per_class).repeat(n_tasks, 1)

    return Episodes(
        x_support=images(1),
        y_support=labels(1).to(device),
        x_query=images(n_query),
        y_query=labels(n_query).to(device),
        classes=torch.zeros(n_tasks, n_way, dtype=torch.long),
        examples=torch.zeros(n_tasks, n_way, 1 + n_query, dtype=torch.long),
    )


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on


def gradient(model, params, tasks, config, strategy):
    _, grads = meta_gradient(
        model,
        params,
        tasks,
        cross_entropy_loss,
        config["inner_lr"],
        config["n_inner_steps"],
        strategy=strategy,
    )
    return grads


def relative_error(grads, reference) -> float:
    top = max(g.abs().max().item() for g in reference.values())
    return (
        max((grads[k].double() - reference[k]).abs().max().item() for k in grads) / top
    )


def agreement(config, n_tasks, device) -> dict:
    """Each path's float32 meta-gradient (TF32 on and off) against the float64 loop."""
    model = model_for(config)
    params64 = {
        k: v.to(device, torch.float64).requires_grad_()
        for k, v in init_params(model, make_generator(0, "init")).items()
    }
    tasks64 = tasks_for(config, n_tasks, device, torch.float64)
    reference = gradient(model, params64, tasks64, config, "loop")
    found = {
        f"{p} float64": relative_error(
            gradient(model, params64, tasks64, config, p), reference
        )
        for p in PATHS
    }
    params32 = {k: v.detach().float().requires_grad_() for k, v in params64.items()}
    tasks32 = tasks_for(config, n_tasks, device, torch.float32)
    for tf32 in (True, False):
        set_tf32(tf32)
        for p in PATHS:
            grads = gradient(model, params32, tasks32, config, p)
            found[f"{p} float32 TF32 {'on' if tf32 else 'off'}"] = relative_error(
                grads, reference
            )
    set_tf32(True)
    return found


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eager_step(model, params, config, strategy):
    opt = torch.optim.Adam(params.values(), lr=config["outer_lr"])

    def step(tasks):
        grads = gradient(model, params, tasks, config, strategy)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()

    return step


def graph_step(model, params, config, tasks, device):
    """The batched meta-iteration captured in a CUDA graph: ``step(tasks)`` copies the
    tasks into the captured input buffers and replays the graph."""
    static = tasks_for(config, len(tasks.x_support), device, torch.float32)
    opt = torch.optim.Adam(params.values(), lr=config["outer_lr"], capturable=True)

    def body():
        grads = gradient(model, params, static, config, "batched")
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: cuDNN's choice of algorithms, Adam's state
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    def step(tasks):
        for name in ("x_support", "y_support", "x_query", "y_query"):
            getattr(static, name).copy_(getattr(tasks, name))
        graph.replay()

    return step


def time_step(step, tasks, device, warmup, iters) -> float:
    for _ in range(warmup):
        step(tasks)
    times = []
    for _ in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        step(tasks)
        synchronize(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def speed(config, n_tasks, device, warmup, iters) -> dict:
    model = model_for(config)
    tasks = tasks_for(config, n_tasks, device, torch.float32)
    found = {}
    for tf32 in (True, False):
        set_tf32(tf32)
        for p in PATHS:
            if p == "loop" and iters > 3 and not tf32:
                continue  # the loop is the slow reference; once is enough
            params = fresh_params(model, device)
            label = f"{p}, TF32 {'on' if tf32 else 'off'}"
            found[label] = time_step(
                eager_step(model, params, config, p), tasks, device, warmup, iters
            )
            print(f"  {label}: {found[label]:.2f} ms", flush=True)
        if device.type == "cuda":
            label = f"batched in a CUDA graph, TF32 {'on' if tf32 else 'off'}"
            try:
                params = fresh_params(model, device)
                step = graph_step(model, params, config, tasks, device)
                found[label] = time_step(step, tasks, device, warmup, iters)
                print(f"  {label}: {found[label]:.2f} ms", flush=True)
            except Exception as error:  # recorded, not fatal: the other rows stand
                found[label] = f"failed: {type(error).__name__}: {error}"[:300]
                print(f"  {label}: {found[label]}", flush=True)
    set_tf32(True)
    return found


def fresh_params(model, device):
    return {
        k: v.to(device).requires_grad_()
        for k, v in init_params(model, make_generator(0, "init")).items()
    }


def flops(config, n_tasks, device) -> float:
    model = model_for(config)
    tasks = tasks_for(config, n_tasks, device, torch.float32)
    counter = FlopCounterMode(display=False)
    with counter:
        gradient(model, fresh_params(model, device), tasks, config, "batched")
    return float(counter.get_total_flops())


def matmul_rate(device, size, tf32: bool) -> float:
    """Measured dense float32 matmul FLOP/s (TF32 tensor cores when ``tf32``)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        a @ b
    synchronize(device)
    seconds = (time.perf_counter() - t0) / n
    torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (dry run)")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; --device cpu --quick runs the code paths")
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose among {SETTINGS}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = {
        "device": name,
        "torch": torch.__version__,
        "commit": git_commit(),
        "quick": args.quick,
        "cudnn_allow_tf32_default": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32_default": torch.backends.cuda.matmul.allow_tf32,
        "settings": {},
    }
    size = 1024 if args.quick else 8192
    rates = {
        "float32": matmul_rate(device, size, tf32=False),
        "tf32": matmul_rate(device, size, tf32=True),
    }
    report["matmul_flop_per_s"] = rates
    print(
        f"{name}: matmul {rates['float32'] / 1e12:.1f} TFLOP/s float32, "
        f"{rates['tf32'] / 1e12:.1f} TF32",
        flush=True,
    )
    for setting in args.settings:
        config = make_config(setting, "paper")
        n_tasks = 2 if args.quick else config["meta_batch_size"]
        if args.quick:
            config = {**config, "n_inner_steps": 1, "n_query": 1}
        print(f"{setting} (meta-batch {n_tasks}):", flush=True)
        found = {"meta_batch_size": n_tasks}
        found["agreement"] = agreement(config, min(n_tasks, 4), device)
        for label, value in found["agreement"].items():
            print(f"  {label}: max |g - g64| / max |g64| = {value:.1e}", flush=True)
        found["ms_per_iteration"] = speed(
            config,
            n_tasks,
            device,
            warmup=1 if args.quick else 5,
            iters=2 if args.quick else args.iters,
        )
        found["flops_per_iteration"] = flops(config, n_tasks, device)
        found["floor_ms"] = {
            k: 1e3 * found["flops_per_iteration"] / r for k, r in rates.items()
        }
        print(
            f"  {found['flops_per_iteration'] / 1e9:.1f} GFLOP per iteration: floor "
            f"{found['floor_ms']['float32']:.2f} ms float32, "
            f"{found['floor_ms']['tf32']:.2f} ms TF32",
            flush=True,
        )
        report["settings"][setting] = found
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
