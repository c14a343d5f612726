"""Meta-train MAML-TRPO and the baselines headlessly (resumable), evaluate: 2D
navigation or locomotion.

``--experiment navigation`` (notebook 09) writes into
``results/09-meta-rl-navigation/<preset>/seed-<n>/``; a locomotion experiment
(``half_cheetah-direction``, ``half_cheetah-velocity``, ``ant-direction``,
``ant-velocity``; notebook 10) into
``results/10-meta-rl-locomotion/<experiment>/<preset>/seed-<n>/``. Files:
``checkpoint-<method>.pt``, ``config.json``, ``history.json``, ``metrics.json``
(returns after 0..3 steps with 95% CI, iterations reached, wall time),
``params-<method>.pt``. Run it again to continue from the checkpoints; Ctrl-C saves.

    nice -n 10 python scripts/train_metarl.py --preset paper --time-limit 2700
    python scripts/train_metarl.py --preset paper --evaluate-only \\
        --artifact navigation-paper
    python scripts/train_metarl.py --experiment half_cheetah-direction \\
        --preset paper --methods maml --time-limit 3600
"""

import argparse
import time

import torch

from mamllib.experiments.metarl import (
    METHODS,
    evaluate_methods,
    initial_params,
    load_trained,
    save_results,
    train_policy,
)
from mamllib.presets import make_config
from mamllib.runs import RunFolder, handle_interrupts

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument(
    "--experiment",
    default="navigation",
    choices=[
        "navigation",
        "half_cheetah-direction",
        "half_cheetah-velocity",
        "ant-direction",
        "ant-velocity",
    ],
)
parser.add_argument("--preset", default="paper")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--path", default=None, help="vmap (fast) | loop (readable)")
parser.add_argument(
    "--sim-threads",
    type=int,
    default=None,
    help="MuJoCo threads for the batched locomotion step (default 1)",
)
parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
parser.add_argument(
    "--evaluate-only",
    action="store_true",
    help="evaluate the checkpoints as they are, without training further",
)
parser.add_argument(
    "--artifact",
    default=None,
    metavar="NAME",
    help="then copy the run's small files to artifacts/NAME with a manifest",
)
parser.add_argument("--note", default=None, help="a note for the artifact manifest")
parser.add_argument(
    "--time-limit",
    type=float,
    nargs="+",
    default=None,
    help="seconds of training per method in this call (one value, or one per "
    "method); each then checkpoints and stops, and a later call continues",
)
args = parser.parse_args()
torch.set_num_threads(args.threads)
overrides = {"seed": args.seed, "path": args.path}
if args.experiment != "navigation":
    overrides["sim_threads"] = args.sim_threads
elif args.sim_threads is not None:
    parser.error("--sim-threads is for the locomotion experiments")
config = make_config(args.experiment, args.preset, **overrides)
folder = (
    "09-meta-rl-navigation"
    if args.experiment == "navigation"
    else f"10-meta-rl-locomotion/{args.experiment}"
)
run = RunFolder(folder, config["preset"], config["seed"])
handle_interrupts(run)
run.write_json("config.json", config)
limits = args.time_limit or [None]
if len(limits) == 1:
    limits = limits * len(args.methods)
results = {}
for method, limit in zip(args.methods, limits):
    if args.evaluate_only:
        results[method] = load_trained(method, run.checkpoint(method))
    else:
        results[method] = train_policy(
            method, config, run.checkpoint(method), time_limit_s=limit
        )
    r = results[method]
    print(
        f"{method}: {r.iterations} iterations, {r.wall_time_s:.0f} s in all, "
        f"resumed from {r.resumed_from}",
        flush=True,
    )
t0 = time.perf_counter()
trained = {m: r.params for m, r in results.items()}
trained["random"] = initial_params("random", config)
evaluation = evaluate_methods(trained, config)
metrics = save_results(
    run, config, results, evaluation, round(time.perf_counter() - t0, 1)
)
print(metrics["status"])
for method, values in metrics["returns"].items():
    steps = " / ".join(f"{s['mean']:.2f} +- {s['ci95']:.2f}" for s in values["steps"])
    print(f"{method:>10}: {steps}", flush=True)
if args.artifact:
    import os
    import shlex
    import shutil
    import sys

    from mamllib.runs import device_description, git_commit, repo_root, write_manifest

    commit = git_commit()  # before the artifact folder changes tracked files
    target = repo_root() / "artifacts" / args.artifact
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for pattern in ("config.json", "metrics.json", "history.json", "reproduction.json"):
        shutil.copy2(run.file(pattern), target / pattern)
    # The methods of this call only (a run folder may hold others from older calls).
    # Checkpoints too: small here (TRPO keeps no optimizer state), and with the random
    # stream's state they let a later run continue a partial artifact exactly.
    for method in args.methods:
        for name in (f"params-{method}.pt", f"checkpoint-{method}.pt"):
            shutil.copy2(run.file(name), target / name)
    write_manifest(
        target,
        command="python "
        + " ".join(
            shlex.quote(a)
            for a in [os.path.relpath(sys.argv[0], repo_root()), *sys.argv[1:]]
        ),
        commit=commit,
        device=device_description("cpu"),
        training_wall_time_s=metrics["training_wall_time_s"],
        evaluation_wall_time_s=metrics["evaluation_wall_time_s"],
        iterations=metrics["iterations"],
        status=metrics["status"],
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        note=args.note,
        run_folder=str(run.path.relative_to(repo_root()))
        if run.path.is_relative_to(repo_root())
        else str(run.path),
    )
    print(f"artifact written to {target}")
