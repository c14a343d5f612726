"""Pick the fastest correct meta-gradient path for an Omniglot setting on this device.

Prints ms per meta-iteration (meta-gradient + Adam step) for each path and, last, the
name of the fastest, for a shell script to use:

    PATH_NAME=$(python scripts/gpu_omniglot_probe.py --device cuda | tail -1)

On CUDA it then recomputes the first gradients with TF32 off (PyTorch lets cuDNN use
TF32 for float32 convolutions by default, a 10-bit mantissa) and in float64, to tell
whether the paths' float32 disagreement on a GPU (up to 0.7 max abs seen on an H200)
is TF32 rounding or a real difference.
"""

import argparse
import time

import torch

from mamllib.data.omniglot import OmniglotTasks, load_omniglot
from mamllib.experiments.fewshot import model_for
from mamllib.maml import cross_entropy_loss, meta_gradient
from mamllib.models import init_params
from mamllib.presets import make_config
from mamllib.tasks import make_generator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiment", default="omniglot-5way-1shot")
parser.add_argument("--device", default="cuda")
parser.add_argument("--iters", type=int, default=10)
args = parser.parse_args()
config = make_config(args.experiment, "paper", device=args.device)
tasks = OmniglotTasks(load_omniglot(), "train")
model = model_for(config)
params = init_params(model, make_generator(0, "init"), device=args.device)
batch = tasks.sample(
    config["meta_batch_size"],
    config["n_way"],
    config["k_shot"],
    config["n_query"],
    generator=make_generator(0),
).to(args.device)
sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
times, grads = {}, {}
for path in ("loop", "vmap", "batched"):
    p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.Adam(p.values(), lr=1e-3)
    runs = []
    for i in range(2 + args.iters):
        sync()
        t0 = time.perf_counter()
        _, g = meta_gradient(
            model,
            p,
            batch,
            cross_entropy_loss,
            config["inner_lr"],
            config["n_inner_steps"],
            path=path,
        )
        if i == 0:  # at the shared initial weights: compare with the loop below
            grads[path] = g
        for k in p:
            p[k].grad = g[k]
        opt.step()
        sync()
        runs.append(time.perf_counter() - t0)
    times[path] = 1000 * sorted(runs[2:])[len(runs[2:]) // 2]
    diff = max((grads[path][k] - grads["loop"][k]).abs().max().item() for k in p)
    print(f"{path}: {times[path]:.1f} ms/iteration, max |grad - loop grad| {diff:.2e}")


def first_gradients(dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    p = {k: v.detach().to(dtype).requires_grad_() for k, v in params.items()}
    b = batch.to(args.device, dtype=dtype)
    return {
        path: meta_gradient(
            model,
            p,
            b,
            cross_entropy_loss,
            config["inner_lr"],
            config["n_inner_steps"],
            path=path,
        )[1]
        for path in ("loop", "vmap", "batched")
    }


if args.device.startswith("cuda"):
    print(
        f"TF32 as run above: cudnn {torch.backends.cudnn.allow_tf32}, "
        f"matmul {torch.backends.cuda.matmul.allow_tf32}"
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in (torch.float32, torch.float64):
        g = first_gradients(dtype)
        for path in ("vmap", "batched"):
            diff = max((g[path][k] - g["loop"][k]).abs().max().item() for k in g[path])
            scale = max(g["loop"][k].abs().max().item() for k in g[path])
            print(
                f"TF32 off, {dtype}: {path} max |grad - loop grad| {diff:.2e} "
                f"(largest |loop grad| {scale:.2e})"
            )
print(min(times, key=times.get))
