"""Re-evaluate committed artifacts through the current library and compare the numbers.

For each artifact under ``artifacts/`` (all, or those named), this loads its
``config.json`` and the weights its ``metrics.json`` was computed from, scores them on
the same fixed evaluation tasks with the experiment's own functions, and writes the
results through the experiment's ``save_results`` into a temporary run folder. It
then compares every evaluated number of the new ``metrics.json`` and every field of
the new ``reproduction.json`` with the committed files:

* sinusoid (``mamllib.experiments.sinusoid.evaluate_methods``): ``evaluation``, MSE
  per K, method and step, the pretrained net's tuned step size and its scores;
* Omniglot and MiniImageNet (``mamllib.experiments.fewshot.evaluate_maml``):
  ``test_accuracy`` and ``steps`` on the test split; with checkpoint selection
  (MiniImageNet), also the selected weights' validation accuracy
  (``selection.best_val_accuracy``), scored as training's selection scores it;
* meta-RL (``mamllib.experiments.metarl.evaluate_methods``): ``returns`` per method
  and step, the random initialisation included.

The weights: ``params-<method>.pt``, which ``save_results`` writes from the very
parameters it evaluated (for few-shot runs with selection, the validation-selected
ones; ``selection-maml.pt``'s best parameters are checked to be the same tensors).
Their sha256 is checked against the artifact's manifest. Training facts
(iterations, wall times) are copied from the committed metrics, not recomputed; the
status line is recomputed from them. Text (status lines, row labels) is compared
too but reported apart from the numbers.

Everything runs on the CPU, whatever device the run used (``--threads`` intra-op
threads, 1 by default), unless ``--device`` names another: a GPU's numbers match
the CPU's only to rounding (cuDNN's TF32 convolutions, other reduction orders), so
an artifact evaluated on a GPU is compared exactly on one. A number counts as equal
when ``|now - committed| <= rtol * max(|now|, |committed|) + atol``. Run from the
repository root:

    .venv/bin/python benchmarks/reevaluate_artifacts.py [ARTIFACT ...] \\
        [--out benchmarks/results/reevaluation.json] [--all-rows]
    .venv/bin/python benchmarks/reevaluate_artifacts.py \\
        miniimagenet-5way-5shot-paper-partial --estimate 10

The report lists the quantities that differ at all and the paper tables' numbers
(``--all-rows``: every quantity, also on the screen). It keeps the records of
artifacts not evaluated in this call, so artifacts can be run one at a time into
one report. ``--estimate N`` scores only the first N evaluation tasks (and N
validation tasks) and prints the time the full evaluation would take, scaled by the
number of tasks; nothing is compared. The data sets come from ``$MAMLLIB_DATA`` and
the caches as in training (``mamllib.data``); the exit status is 1 when some
artifact's numbers differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mamllib.evaluate import VAL_SEED
from mamllib.experiments import domain, run_name
from mamllib.runs import RunFolder, git_commit, read_json, repo_root, sha256
from mamllib.train import FitResult

ARTIFACTS = repo_root() / "artifacts"
DEFAULT_OUT = repo_root() / "benchmarks" / "results" / "reevaluation.json"
# The parts of metrics.json that evaluation computes, per domain.
EVALUATED = {
    "sinusoid": ("status", "evaluation"),
    "fewshot": ("status", "test_accuracy", "steps", "selection.best_val_accuracy"),
    "metarl": ("status", "returns"),
}


def load_params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def to(params: dict[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device) for k, v in params.items()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weight_checks(folder: Path, methods: list[str]) -> list[dict[str, Any]]:
    """That the weights scored are the ones committed with the metrics: their
    sha256 is the manifest's, and they are the selected parameters
    (``selection-*.pt``) or, without selection, the checkpoint's."""
    manifest = read_json(folder / "manifest.json").get("files", {})
    checks = []
    for method in methods:
        path = folder / f"params-{method}.pt"
        digest = manifest.get(path.name)
        checks.append(
            {
                "check": f"{path.name} sha256 as in manifest.json",
                "ok": digest is not None and digest == sha256(path),
            }
        )
        params = load_params(path)
        checkpoint = folder / f"checkpoint-{method}.pt"
        selection = folder / f"selection-{method}.pt"
        if selection.exists():
            best = torch.load(selection, map_location="cpu", weights_only=True)
            checks.append(
                {
                    "check": f"{path.name} equals {selection.name}'s best_params",
                    "ok": same_tensors(params, best["best_params"]),
                }
            )
        elif checkpoint.exists():  # without selection, training's last parameters
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            checks.append(
                {
                    "check": f"{path.name} equals {checkpoint.name}'s params "
                    f"(iteration {state['iteration']:,})",
                    "ok": same_tensors(params, dict(state["params"])),
                }
            )
    return checks


def fewshot_sampler(config: dict[str, Any], split: str):
    """The sampler ``fewshot.episode_samplers`` builds for ``split``, alone: the
    training split is not needed to evaluate."""
    dataset = config["experiment"].split("-")[0]
    if dataset == "omniglot":
        from mamllib.data.omniglot import load_omniglot, tasks_for_split

        options = {"scheme": config["scheme"], "rotations": config["rotations"]}
        return tasks_for_split(load_omniglot(), split, **options)
    from mamllib.data.miniimagenet import load_miniimagenet, tasks_for_split

    return tasks_for_split(
        load_miniimagenet(split, images_per_class=config["images_per_class"])
    )


def evaluate_sinusoid(folder, config, committed, run):
    from mamllib.experiments import sinusoid

    device = torch.device(config["device"])
    trained = {
        m: to(load_params(folder / f"params-{m}.pt"), device) for m in sinusoid.METHODS
    }
    t0 = time.perf_counter()
    evaluation = sinusoid.evaluate_methods(trained, config)
    seconds = time.perf_counter() - t0
    results = {}
    for m in sinusoid.METHODS:
        facts = committed["training"][m]
        loss = facts.get("final_loss")
        results[m] = FitResult(
            trained[m],
            {"loss": [] if loss is None else [loss]},
            facts["iterations"],
            facts["wall_time_s"],
        )
    sinusoid.save_results(run, config, results, evaluation["metrics"])
    return {"test": seconds}


def evaluate_fewshot(folder, config, committed, run, selection=True):
    from mamllib.experiments import fewshot

    params = to(load_params(folder / "params-maml.pt"), torch.device(config["device"]))
    test = fewshot_sampler(config, "test")
    t0 = time.perf_counter()
    evaluation = fewshot.evaluate_maml(params, test, config)
    seconds = {"test": time.perf_counter() - t0}
    facts = {}
    if "selection" in committed:
        chosen = dict(committed["selection"])
        if selection:  # as fewshot._Selector scores a checkpoint
            val = fewshot_sampler(config, "val")
            val_config = {
                **config,
                "n_eval_tasks": config["n_val_tasks"],
                "n_eval_steps": config["n_test_inner_steps"],
            }
            t0 = time.perf_counter()
            scored = fewshot.evaluate_maml(params, val, val_config, seed=VAL_SEED)
            seconds["validation"] = time.perf_counter() - t0
            chosen["best_val_accuracy"] = scored["at_test_steps"]["mean"]
        facts = {"selected_iteration": committed["selected_iteration"]}
        facts["selection"] = chosen
    result = FitResult(
        params, {}, committed["iterations"], committed["training_wall_time_s"]
    )
    fewshot.save_results(run, config, result, evaluation, seconds["test"], **facts)
    return seconds


def evaluate_metarl(folder, config, committed, run):
    from mamllib.experiments import metarl

    methods = [m for m in metarl.METHODS if m in committed["iterations"]]
    trained = {m: load_params(folder / f"params-{m}.pt") for m in methods}
    trained["random"] = metarl.initial_params("random", config)
    t0 = time.perf_counter()
    evaluation = metarl.evaluate_methods(trained, config)
    seconds = time.perf_counter() - t0
    per_method = committed["training_wall_time_s_per_method"]
    results = {
        m: FitResult(trained[m], {}, committed["iterations"][m], per_method[m])
        for m in methods
    }
    metarl.save_results(run, config, results, evaluation, round(seconds, 1))
    return {"test": seconds}


EVALUATE = {
    "sinusoid": evaluate_sinusoid,
    "fewshot": evaluate_fewshot,
    "metarl": evaluate_metarl,
}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b[0]": 1, "a.b[1]": 2}``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def pick(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The leaves of ``metrics`` under the dotted ``keys``."""
    flat = flatten(metrics)
    return {
        path: value
        for path, value in flat.items()
        if any(path == k or path.startswith((k + ".", k + "[")) for k in keys)
    }


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare(committed: dict, now: dict, rtol: float, atol: float) -> list[dict]:
    """One row per quantity in either: committed, now, |diff|, relative diff, equal."""
    rows = []
    for path in list(committed) + [p for p in now if p not in committed]:
        a, b = committed.get(path, "<missing>"), now.get(path, "<missing>")
        row = {"quantity": path, "committed": a, "now": b, "numeric": False}
        if is_number(a) and is_number(b):
            diff = 0.0 if a == b else abs(b - a)  # inf == inf: a diverged score
            scale = max(abs(a), abs(b))
            row.update(
                numeric=True,
                abs_diff=diff,
                rel_diff=diff / scale if diff else 0.0,
                equal=a == b or diff <= rtol * scale + atol,
            )
        else:
            row.update(abs_diff=None, rel_diff=None, equal=a == b)
            row["numeric"] = is_number(a) or is_number(b)  # a number went missing
        rows.append(row)
    return rows


def reevaluate(name: str, args) -> dict[str, Any]:
    folder = ARTIFACTS / name
    config = read_json(folder / "config.json")
    committed = read_json(folder / "metrics.json")
    kind = domain(config["experiment"])
    original_device = config.get("device", "cpu")
    # Meta-RL samples its trajectories on the CPU whatever the device.
    device = "cpu" if kind == "metarl" else args.device
    config = {**config, "device": device}
    full = {"test": config["n_eval_tasks"], "validation": config.get("n_val_tasks")}
    if args.estimate:
        config["n_eval_tasks"] = min(args.estimate, full["test"])
        if "n_val_tasks" in config:
            config["n_val_tasks"] = min(args.estimate, full["validation"])
    tasks = {"test": config["n_eval_tasks"], "validation": config.get("n_val_tasks")}
    if kind == "fewshot":
        methods = ["maml"]
    elif kind == "sinusoid":
        methods = list(committed["training"])
    else:
        methods = list(committed["iterations"])
    record: dict[str, Any] = {
        "experiment": config["experiment"],
        "kind": kind,
        "device_of_committed_run": original_device,
        "device": device,
        "committed_evaluation": committed.get("device"),
        "weights": [f"params-{m}.pt" for m in methods],
        "checks": weight_checks(folder, methods),
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reevaluate-") as tmp:
        os.environ["MAMLLIB_RESULTS"] = tmp  # never the artifact's or results/ folder
        run = RunFolder(run_name(config), config["preset"], config["seed"])
        options = {"selection": not args.skip_selection} if kind == "fewshot" else {}
        seconds = EVALUATE[kind](folder, config, committed, run, **options)
        new_metrics = read_json(run.file("metrics.json"))
        new_rows = read_json(run.file("reproduction.json"))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["evaluation_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    record["committed_evaluation_wall_time_s"] = committed.get("evaluation_wall_time_s")
    if args.estimate:
        record["estimate"] = {
            "tasks": {k: tasks[k] for k in seconds},
            "of_tasks": {k: full[k] for k in seconds},
            "full_evaluation_seconds": round(
                sum(s * full[k] / tasks[k] for k, s in seconds.items())
            ),
        }
        return record
    keys = EVALUATED[kind]
    if "validation" not in seconds:  # nothing re-scored on validation tasks
        keys = tuple(k for k in keys if not k.startswith("selection."))
    rows = compare(pick(committed, keys), pick(new_metrics, keys), args.rtol, args.atol)
    committed_rows = read_json(folder / "reproduction.json")
    rows += compare(
        flatten({"reproduction": committed_rows}),
        flatten({"reproduction": new_rows}),
        args.rtol,
        args.atol,
    )
    numbers = [r for r in rows if r["numeric"]]
    text = [r for r in rows if not r["numeric"]]
    diffs = [r for r in numbers if r["abs_diff"] is not None]
    record.update(
        verdict="equal"
        if numbers and all(r["equal"] for r in numbers)
        else "DIFFERENT",
        text_verdict="equal" if all(r["equal"] for r in text) else "DIFFERENT",
        n_numbers=len(numbers),
        n_numbers_different=sum(not r["equal"] for r in numbers),
        n_numbers_bitwise_equal=sum(r["abs_diff"] == 0 for r in diffs),
        max_abs_diff=max((r["abs_diff"] for r in diffs), default=math.nan),
        max_rel_diff=max((r["rel_diff"] for r in diffs), default=math.nan),
        rows=rows,
    )
    return record


def fmt(x: Any) -> str:
    if is_number(x):
        return f"{x:.10g}"
    text = str(x)
    return text if len(text) <= 48 else text[:45] + "..."


def shown_rows(rows: list[dict], all_rows: bool) -> list[dict]:
    """Every quantity that differs at all, and the paper tables' numbers
    (``reproduction[i].ours``, ``.ours_ci95``); ``all_rows``: every quantity."""
    headline = (".ours", ".ours_ci95")
    return [
        r
        for r in rows
        if all_rows
        or not r["equal"]
        or r["abs_diff"]
        or r["quantity"].endswith(headline)
    ]


def print_rows(name: str, rows: list[dict], shown: list[dict]) -> None:
    print(f"{'artifact':<50} {'quantity':<40} {'committed':>18} {'now':>18} |diff|")
    for r in shown:
        diff = "" if r["abs_diff"] is None else f"{r['abs_diff']:.3g}"
        flag = "" if r["equal"] else "  <- differs"
        print(
            f"{name:<50} {r['quantity'][-40:]:<40} {fmt(r['committed']):>18} "
            f"{fmt(r['now']):>18} {diff}{flag}"
        )
    hidden = len(rows) - len(shown)
    if hidden:
        print(f"  ({hidden} more quantities, identical; --all-rows lists them)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", help="names under artifacts/ (all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where sinusoid and few-shot artifacts are scored (e.g. cuda, for "
        "an artifact evaluated on a GPU); meta-RL always on the CPU",
    )
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-12)
    parser.add_argument("--estimate", type=int, default=None, metavar="N")
    parser.add_argument(
        "--skip-selection",
        action="store_true",
        help="do not re-score the selected weights on the validation tasks",
    )
    parser.add_argument("--all-rows", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MAMLLIB_PROGRESS", "0")
    # Artifacts of one experiment's run; the comparison's (chapter 16) holds rows
    # over many runs and no weights to score again.
    names = args.artifacts or sorted(
        p.name
        for p in ARTIFACTS.iterdir()
        if (p / "metrics.json").exists()
        and "experiment" in read_json(p / "config.json")
    )
    unknown = [n for n in names if not (ARTIFACTS / n / "metrics.json").exists()]
    if unknown:
        parser.error(f"no artifact {unknown} under {ARTIFACTS}")
    report = read_json(args.out) if args.out.exists() else {}
    report.setdefault("artifacts", {})
    report.setdefault("estimates", {})
    settings = {
        "threads": args.threads,
        "rtol": args.rtol,
        "atol": args.atol,
        "torch": torch.__version__,
        "commit": git_commit(),
        "machine": f"{os.cpu_count()} CPU cores",
    }
    summary = []
    for name in names:
        print(f"== {name}", flush=True)
        record = {**reevaluate(name, args), "settings": settings}
        for check in record["checks"]:
            print(f"  {'ok' if check['ok'] else 'FAILED'}: {check['check']}")
        if args.estimate:
            est = record["estimate"]
            parts = ", ".join(
                f"{k}: {est['tasks'][k]} of {est['of_tasks'][k]} tasks in {s} s"
                for k, s in record["evaluation_seconds"].items()
            )
            print(
                f"  {parts}; the full evaluation would take about "
                f"{est['full_evaluation_seconds']} s",
                flush=True,
            )
            report["estimates"][name] = record
        else:
            shown = shown_rows(record["rows"], args.all_rows)
            print_rows(name, record["rows"], shown)
            record["n_rows_identical_not_listed"] = len(record["rows"]) - len(shown)
            record["rows"] = shown
            committed_s = record["committed_evaluation_wall_time_s"]
            committed_s = "not recorded" if committed_s is None else f"{committed_s} s"
            print(
                f"  {record['verdict']}: {record['n_numbers']} numbers, "
                f"{record['n_numbers_different']} differ, max |diff| "
                f"{record['max_abs_diff']:.3g}; text {record['text_verdict']}; "
                f"{record['seconds']} s in all, evaluating "
                + ", ".join(
                    f"{k} {v} s" for k, v in record["evaluation_seconds"].items()
                )
                + f" (the committed run's: {committed_s})",
                flush=True,
            )
            report["artifacts"][name] = record
            summary.append((name, record))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if summary:
        print(
            f"\n{'artifact':<50} {'numbers':<10} {'text':<10} {'max |diff|':>10} "
            f"{'max rel':>9} {'seconds':>8}"
        )
        for name, r in summary:
            print(
                f"{name:<50} {r['verdict']:<10} {r['text_verdict']:<10} "
                f"{r['max_abs_diff']:>10.3g} {r['max_rel_diff']:>9.3g} "
                f"{r['seconds']:>8.1f}"
            )
    print(f"report: {args.out}")
    failed = any(r["verdict"] != "equal" for _, r in summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
