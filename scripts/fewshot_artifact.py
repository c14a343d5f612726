"""Copy a few-shot run folder (Omniglot or MiniImageNet) into a committed artifact.

After ``scripts/train_omniglot.py`` or ``scripts/train_miniimagenet.py`` has trained
and evaluated a run (complete, stopped by ``--time-limit`` or by ``--iterations``),
this copies what the book needs from
``results/{07-omniglot,08-miniimagenet}/<run name>/<preset>/seed-<n>/`` into
``artifacts/<name>/``: ``config.json``, ``metrics.json``, ``history.json``,
``params-maml.pt``, the checkpoint (so a later session can continue the run), the
validation record ``selection-maml.pt`` if any, and any ``--extra`` files (logs),
then writes ``reproduction.json`` (the row of the book's reproduction page, read from
``metrics.json``, beside Table 1's number) and ``manifest.json`` (command, commit,
device, wall time, note, sha256 of every file).

    python scripts/fewshot_artifact.py --experiment omniglot-5way-1shot \\
        --name omniglot-5way-1shot-paper --command "..." --note "..."
    python scripts/fewshot_artifact.py --experiment miniimagenet-5way-1shot \\
        --first-order --name miniimagenet-5way-1shot-first-order-paper-partial ...
"""

import argparse
import shutil
import time
from pathlib import Path

from mamllib.experiments.fewshot import PAPER_TABLE1, run_name, setting_name
from mamllib.runs import (
    RunFolder,
    git_commit,
    read_json,
    repo_root,
    write_json,
    write_manifest,
)

DATASETS = {"omniglot": "Omniglot", "miniimagenet": "MiniImageNet"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--experiment",
    required=True,
    choices=sorted(k for k in PAPER_TABLE1 if not k.endswith("-first-order")),
)
parser.add_argument(
    "--first-order", action="store_true", help="the first-order run of the experiment"
)
parser.add_argument("--preset", default="paper")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--name", required=True, help="folder name under artifacts/")
parser.add_argument("--command", required=True, help="the command(s) that made it")
parser.add_argument("--device", default=None, help="overrides metrics.json's device")
parser.add_argument("--note", default="")
parser.add_argument("--extra", nargs="*", default=[], help="more files to include")
parser.add_argument(
    "--artifacts", default=None, help="where artifacts go (default: artifacts/)"
)
parser.add_argument(
    "--replace",
    action="store_true",
    help="replace an existing artifact of that name (copy the files you want to keep "
    "out first and pass them with --extra)",
)
args = parser.parse_args()
# The commit before anything is touched: replacing a committed artifact would make
# the tree look dirty.
commit = git_commit()

dataset = args.experiment.split("-")[0]
folder = run_name(args.experiment, args.first_order)
setting = setting_name(args.experiment, args.first_order)  # the row of Table 1
run = RunFolder(folder, args.preset, args.seed)
metrics_path = run.file("metrics.json")
if not metrics_path.exists():
    raise SystemExit(
        f"{metrics_path} not found: run scripts/train_{dataset}.py for this setting "
        "first (it evaluates and writes metrics.json when it stops)"
    )
metrics = read_json(metrics_path)
target = Path(args.artifacts or repo_root() / "artifacts") / args.name
if target.exists():
    if not args.replace:
        raise SystemExit(
            f"{target} exists: choose another --name, or --replace it (after copying "
            "out what it should keep)"
        )
    shutil.rmtree(target)
target.mkdir(parents=True)
names = ["config.json", "metrics.json", "history.json", "params-maml.pt"]
for name in names + ["checkpoint-maml.pt", "selection-maml.pt"]:
    if run.file(name).exists():
        shutil.copy2(run.file(name), target / name)
for extra in args.extra:
    shutil.copy2(extra, target)

paper, paper_ci95 = PAPER_TABLE1[setting]
config, at = read_json(run.file("config.json")), metrics["test_accuracy"]
n_way, k_shot = config["n_way"], config["k_shot"]
write_json(
    target / "reproduction.json",
    [
        {
            "experiment": f"{DATASETS[dataset]} {n_way}-way {k_shot}-shot",
            "quantity": (
                ("first-order " if args.first_order else "")
                + f"MAML test accuracy (%), {config['n_test_inner_steps']} steps"
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
    commit=commit,
    device=args.device or metrics["device"],
    training_wall_time_s=metrics["training_wall_time_s"],
    evaluation_wall_time_s=metrics["evaluation_wall_time_s"],
    iterations=metrics["iterations"],
    created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    note=args.note,
)
print(f"{setting}: {metrics['status']} -> {target}")
