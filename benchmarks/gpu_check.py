"""GPU check for the sinusoid fast path: correctness on CUDA and ms per meta-iteration.

Run on a machine with a CUDA GPU (from the repository root):

    PYTHONPATH=. python benchmarks/gpu_check.py --out gpu.json [--iterations 3000]

1. The vmap meta-gradient on the GPU equals the per-task loop on the GPU and the vmap
   path on the CPU (first and second order).
2. Median ms per meta-iteration (meta-gradient + Adam step) at the paper's sinusoid
   setting, loop and vmap, first and second order, on the GPU.
3. A short MAML training on the GPU through
   :func:`mamllib.experiments.sinusoid.train_method` (the code path of
   ``device="cuda"`` in notebook 05), with its loss falling.

The committed report, from an H200 GPU: ``benchmarks/results/gpu-h200.json``.
"""

import argparse
import json
import statistics
import time

import torch

from mamllib.experiments.sinusoid import train_method
from mamllib.maml import meta_gradient, mse_loss
from mamllib.models import MLP, init_params
from mamllib.presets import make_config
from mamllib.tasks import SinusoidTasks, make_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here")
    dev = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(report)

    model = MLP()
    params_cpu = init_params(model, make_generator(0, "init"))
    params = {k: v.detach().to(dev).requires_grad_() for k, v in params_cpu.items()}
    tasks_cpu = SinusoidTasks().sample(25, 10, generator=make_generator(0))
    tasks = tasks_cpu.to(dev)

    diffs = {}
    for first_order in (False, True):
        _, g_loop = meta_gradient(
            model, params, tasks, mse_loss, 0.01, 1, first_order, "loop"
        )
        _, g_vmap = meta_gradient(
            model, params, tasks, mse_loss, 0.01, 1, first_order, "vmap"
        )
        _, g_cpu = meta_gradient(
            model, params_cpu, tasks_cpu, mse_loss, 0.01, 1, first_order, "vmap"
        )
        order = "first" if first_order else "second"
        diffs[order] = {
            "vmap_vs_loop_gpu": max(
                (g_vmap[k] - g_loop[k]).abs().max().item() for k in g_loop
            ),
            "gpu_vs_cpu": max(
                (g_vmap[k].cpu() - g_cpu[k]).abs().max().item() for k in g_cpu
            ),
            "grad_scale": max(g_cpu[k].abs().max().item() for k in g_cpu),
        }
    report["max_abs_gradient_differences"] = diffs
    print(json.dumps(diffs, indent=1))

    timings = {}
    for strategy in ("loop", "vmap"):
        for first_order in (False, True):
            p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            opt = torch.optim.Adam(p.values(), lr=1e-3)

            def step(p=p, opt=opt, first_order=first_order, strategy=strategy):
                _, g = meta_gradient(
                    model, p, tasks, mse_loss, 0.01, 1, first_order, strategy
                )
                for k in p:
                    p[k].grad = g[k]
                opt.step()

            for _ in range(20):
                step()
            runs = []
            for _ in range(5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(50):
                    step()
                torch.cuda.synchronize()
                runs.append((time.perf_counter() - t0) / 50 * 1000)
            name = f"{strategy} {'1st' if first_order else '2nd'}"
            timings[name] = statistics.median(runs)
            print(f"{name}: {timings[name]:.2f} ms per meta-iteration (median of 5x50)")
    report["ms_per_meta_iteration"] = timings

    config = make_config(
        "sinusoid", "paper", device="cuda", n_iterations=args.iterations, log_every=100
    )
    t0 = time.perf_counter()
    result = train_method("maml", config)
    wall = time.perf_counter() - t0
    losses = result.history["loss"]
    report["training"] = {
        "iterations": result.iterations,
        "wall_time_s": wall,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    print(
        f"MAML on cuda: {result.iterations} iterations in {wall:.1f} s, meta-loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    assert losses[-1] < 0.5 * losses[0]
    for order, d in diffs.items():
        assert d["vmap_vs_loop_gpu"] < 1e-4 * max(1.0, d["grad_scale"]), (order, d)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
