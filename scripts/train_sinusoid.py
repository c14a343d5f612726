"""Train the sinusoid methods into a notebook's run folder (resumable), headless.

The checkpoints it writes are the ones notebook 05 resumes from, so the long training
can run (and be interrupted and resumed) outside Jupyter:

    python scripts/train_sinusoid.py --preset paper --seed 0
"""

import argparse

import torch

from mamllib.experiments.sinusoid import train_method
from mamllib.presets import make_config
from mamllib.runs import RunFolder, handle_interrupts

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="paper")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--methods", nargs="+", default=["maml", "pretrained", "oracle"])
args = parser.parse_args()
torch.set_num_threads(args.threads)
config = make_config("sinusoid", args.preset, seed=args.seed, device=args.device)
run = RunFolder("05-maml-sinusoid", config["preset"], config["seed"])
handle_interrupts(run)
for method in args.methods:
    result = train_method(method, config, run)
    print(
        f"{method}: {result.iterations} iterations, {result.wall_time_s:.0f} s, "
        f"resumed from {result.resumed_from}",
        flush=True,
    )
