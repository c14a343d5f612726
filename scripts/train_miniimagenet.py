"""Meta-train and evaluate one MiniImageNet setting headlessly (resumable), CPU or GPU.

Writes into the run folder the MiniImageNet chapter uses,
``results/08-miniimagenet/<experiment>/<preset>/seed-<n>/``: ``checkpoint-maml.pt``
(the latest state, to resume), ``selection-maml.pt`` (validation accuracy at every
checkpoint and the best parameters), ``config.json``, ``history.json``,
``metrics.json`` (test accuracy with 95% CI of the parameters selected on the
validation classes, and the iterations reached), ``params-maml.pt``. Run it again to
continue from the checkpoint; ``--time-limit`` stops after that many seconds of
training (with a checkpoint), so a long run can be made in pieces. A call that trains
nothing and finds a ``metrics.json`` that already scores those weights
(:func:`mamllib.experiments.fewshot.already_evaluated`) does not evaluate them again
(``--reevaluate`` does: 600 tasks at 10 steps take minutes on a CPU).

    python scripts/train_miniimagenet.py --experiment miniimagenet-5way-1shot \\
        --preset paper --device cuda --time-limit 3600
    python scripts/train_miniimagenet.py --first-order   # the paper's first-order row
    python scripts/train_miniimagenet.py --iterations 300  # first 300 of 60,000

The data: ``MAMLLIB_DATA`` (see :mod:`mamllib.data.miniimagenet`).
"""

import argparse
import sys
import time

import torch

from mamllib.data.miniimagenet import MiniImagenetTasks, load_miniimagenet
from mamllib.experiments.fewshot import (
    already_evaluated,
    evaluate_maml,
    run_name,
    save_results,
    setting_name,
    train_maml,
)
from mamllib.presets import PRESETS, make_config
from mamllib.runs import RunFolder, handle_interrupts

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--experiment",
    default="miniimagenet-5way-1shot",
    choices=[k for k in PRESETS if k.startswith("miniimagenet")],
)
parser.add_argument("--preset", default="paper")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--path", default=None, help="loop | vmap | batched")
parser.add_argument(
    "--first-order", action="store_true", help="first-order MAML (its own run folder)"
)
parser.add_argument(
    "--iterations",
    type=int,
    default=None,
    help="train to this meta-iteration and stop (default: the preset's); the run "
    "folder stays the preset's, so a later call without it continues the run",
)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument(
    "--time-limit",
    type=float,
    default=None,
    help="seconds of training in this call (then checkpoint and stop)",
)
parser.add_argument(
    "--reevaluate",
    action="store_true",
    help="evaluate even if metrics.json already holds these iterations",
)
args = parser.parse_args()
# Measured at the 5-way 1-shot paper shapes, one CPU thread: 11.7 -> 8.6 s per
# meta-iteration (the 270 MB activations of the query images are no longer returned
# to the kernel and faulted in again every iteration; see the function's doc).
if args.threads:
    torch.set_num_threads(args.threads)
config = make_config(
    args.experiment,
    args.preset,
    seed=args.seed,
    device=args.device,
    path=args.path,
    first_order=args.first_order or None,
    n_iterations=args.iterations,
)
if args.iterations is not None and args.iterations < 1:
    parser.error(f"--iterations must be >= 1, got {args.iterations}")
folder = run_name(args.experiment, config["first_order"])
name = setting_name(args.experiment, config["first_order"])
run = RunFolder(folder, config["preset"], config["seed"])
handle_interrupts(run)
run.write_json("config.json", config)


def tasks(split: str) -> MiniImagenetTasks:
    return MiniImagenetTasks(
        load_miniimagenet(split, images_per_class=config["images_per_class"])
    )


result = train_maml(
    config,
    tasks("train"),
    run,
    desc=name,
    time_limit_s=args.time_limit,
    val_tasks=tasks("val"),
)
print(
    f"trained to {result.iterations} of {config['n_iterations']} iterations, "
    f"{result.wall_time_s:.0f} s in all",
    flush=True,
)
selection = result.selection or {}
if selection:
    print(
        f"selected iteration {selection['best_iteration']} on the validation classes "
        f"({100 * selection['best_val_accuracy']:.2f} % on "
        f"{selection['n_val_tasks']} val tasks)",
        flush=True,
    )
if not args.reevaluate and (note := already_evaluated(run, config, result)):
    print(note, flush=True)
    sys.exit(0)
t0 = time.perf_counter()
evaluation = evaluate_maml(result.params, tasks("test"), config)
save_results(
    run,
    config,
    result,
    evaluation,
    time.perf_counter() - t0,
    PRESETS[args.experiment]["paper"]["n_iterations"],
    name,
    experiment=args.experiment,
    first_order=config["first_order"],
    selected_iteration=selection.get("best_iteration"),
    selection=selection,
)
