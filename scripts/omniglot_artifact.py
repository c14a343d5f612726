"""Copy an Omniglot run folder into a small committed artifact with its manifest.

After ``scripts/train_omniglot.py`` has trained and evaluated a run (complete or
stopped by ``--time-limit``), this copies what the book needs from
``results/07-omniglot/<experiment>/<preset>/seed-<n>/`` into ``artifacts/<name>/``:
``config.json``, ``metrics.json``, ``history.json``, ``params-maml.pt``, the
checkpoint (so a later session can continue the run) and any ``--extra`` files
(logs), then writes ``reproduction.json`` (the row of the book's reproduction page,
read from ``metrics.json``) and ``manifest.json`` (command, commit, device, wall
time, note, sha256 of every file).

    python scripts/omniglot_artifact.py --experiment omniglot-5way-1shot \\
        --name omniglot-5way-1shot-partial --command "..." --note "..."
"""

import argparse
import shutil
import time

from mamllib.runs import (
    RunFolder,
    git_commit,
    read_json,
    repo_root,
    write_json,
    write_manifest,
)

# Finn et al. 2017, Table 1: MAML on Omniglot, accuracy (%) with 95% CI.
PAPER_TABLE1 = {
    "omniglot-5way-1shot": (98.7, 0.4),
    "omniglot-5way-5shot": (99.9, 0.1),
    "omniglot-20way-1shot": (95.8, 0.3),
    "omniglot-20way-5shot": (98.9, 0.2),
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiment", required=True, choices=sorted(PAPER_TABLE1))
parser.add_argument("--preset", default="paper")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--name", required=True, help="folder name under artifacts/")
parser.add_argument("--command", required=True, help="the command(s) that made it")
parser.add_argument("--device", default=None, help="overrides metrics.json's device")
parser.add_argument("--note", default="")
parser.add_argument("--extra", nargs="*", default=[], help="more files to include")
args = parser.parse_args()

run = RunFolder(f"07-omniglot/{args.experiment}", args.preset, args.seed)
metrics_path = run.file("metrics.json")
if not metrics_path.exists():
    raise SystemExit(
        f"{metrics_path} not found: run scripts/train_omniglot.py for this setting "
        "first (it evaluates and writes metrics.json when it stops)"
    )
metrics = read_json(metrics_path)
target = repo_root() / "artifacts" / args.name
if target.exists():
    raise SystemExit(f"{target} exists: choose another --name or remove it first")
target.mkdir(parents=True)
names = ["config.json", "metrics.json", "history.json", "params-maml.pt"]
for name in names + ["checkpoint-maml.pt"]:
    if run.file(name).exists():
        shutil.copy2(run.file(name), target / name)
for extra in args.extra:
    shutil.copy2(extra, target)

paper, paper_ci95 = PAPER_TABLE1[args.experiment]
config, at = read_json(run.file("config.json")), metrics["test_accuracy"]
n_way, k_shot = config["n_way"], config["k_shot"]
write_json(
    target / "reproduction.json",
    [
        {
            "experiment": f"Omniglot {n_way}-way {k_shot}-shot",
            "quantity": (
                f"MAML test accuracy (%), {config['n_test_inner_steps']} steps"
            ),
            "paper": paper,
            "paper_ci95": paper_ci95,
            "source": "Table 1",
            "ours": 100 * at["mean"],
            "ours_ci95": 100 * at["ci95"],
            "lower_is_better": False,
            "status": metrics["status"],
        }
    ],
)
write_manifest(
    target,
    command=args.command,
    commit=git_commit(),
    device=args.device or metrics["device"],
    training_wall_time_s=metrics["training_wall_time_s"],
    evaluation_wall_time_s=metrics["evaluation_wall_time_s"],
    iterations=metrics["iterations"],
    created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    note=args.note,
)
print(f"{args.experiment}: {metrics['status']} -> {target}")
