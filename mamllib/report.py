"""The one writer of results: a run's metrics, history, weights and reproduction rows,
and the committed artifacts made from runs (with a manifest); and the readers the
chapters show them with.

Every experiment and chapter writes through :func:`write_results`, so every
``metrics.json`` opens with the same ``status`` (:func:`mamllib.paper.run_status`) and
every ``reproduction.json`` row has the same fields (:data:`ROW_FIELDS`), which the
book's reproduction page reads.

The readers (:func:`read_artifact`, :func:`find_artifact`, :func:`read_benchmark`,
:func:`describe_manifest`, :func:`table1`, :func:`steps_table`) are the parsing that
several chapters would otherwise each repeat in a hidden cell: they read committed
files and return plain dicts or Markdown, and compute nothing.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mamllib import paper as paper_numbers
from mamllib.models import Params
from mamllib.runs import (
    RunFolder,
    device_description,
    git_commit,
    read_json,
    repo_root,
    save_torch,
    write_manifest,
)

# What an artifact keeps from a run folder: small, human-readable, enough to rebuild
# the book's tables and figures. Checkpoints only when asked (they let a later run
# continue a partial artifact exactly).
ARTIFACT_PATTERNS = (
    "config.json",
    "metrics.json",
    "history.json",
    "reproduction.json",
    "params-*.pt",
    "figures/*.png",
)
CHECKPOINT_PATTERNS = ("checkpoint-*.pt", "selection-*.pt")
ROW_FIELDS = (
    "experiment",
    "quantity",
    "paper",
    "paper_ci95",
    "source",
    "ours",
    "ours_ci95",
    "lower_is_better",
    "status",
)


def row(
    experiment: str,
    quantity: str,
    paper: float | None,
    source: str,
    ours: float,
    ours_ci95: float | None,
    status: str,
    lower_is_better: bool = False,
    paper_ci95: float | None = None,
) -> dict[str, Any]:
    """One row of the reproduction table: the paper's number beside ours."""
    return {
        "experiment": experiment,
        "quantity": quantity,
        "paper": paper,
        "paper_ci95": paper_ci95,
        "source": source,
        "ours": ours,
        "ours_ci95": ours_ci95,
        "lower_is_better": lower_is_better,
        "status": status,
    }


def write_results(
    run: RunFolder,
    status: str,
    metrics: Mapping[str, Any],
    history: Mapping[str, Any] | None = None,
    params: Mapping[str, Params] | None = None,
    rows: Iterable[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write a run's ``metrics.json`` (``status`` first), ``history.json``,
    ``params-<method>.pt`` (on the CPU) and ``reproduction.json``; returns the
    metrics as written."""
    metrics = {"status": status, **metrics}
    run.write_json("metrics.json", metrics)
    if history is not None:
        run.write_json("history.json", dict(history))
    for method, p in (params or {}).items():
        save_torch(run.file(f"params-{method}.pt"), {k: v.cpu() for k, v in p.items()})
    if rows is not None:
        rows = [dict(r) for r in rows]
        for r in rows:
            if set(r) != set(ROW_FIELDS):
                raise ValueError(f"a reproduction row needs exactly {ROW_FIELDS}: {r}")
        run.write_json("reproduction.json", rows)
    return metrics


def make_artifact(
    run_path: Path,
    name: str,
    command: str,
    note: str | None = None,
    checkpoints: bool = False,
    root: Path | None = None,
    refresh: bool = False,
    **facts: Any,
) -> Path:
    """Copy a run folder's small files into ``artifacts/<name>/`` with a manifest:
    the command, commit, device, wall times, iterations, status and the sha256 of
    every file. An existing artifact of that name is replaced, or with ``refresh``
    updated in place: the run's files overwrite theirs and the artifact's other files
    (notes, probes, logs) stay.

    Args:
        checkpoints: copy the checkpoints too (then a later run can continue it).
        facts: more lines for the manifest.
    """
    run_path = Path(run_path)
    root = root or repo_root()
    if not (run_path / "metrics.json").exists():
        raise FileNotFoundError(
            f"{run_path} has no metrics.json: train and evaluate the run first "
            "(python -m mamllib train ...)"
        )
    commit = git_commit(root)  # before this function changes tracked files
    target = root / "artifacts" / name
    previous = None
    if refresh and (target / "manifest.json").exists():
        # What earlier runs recorded (command, device, notes) stays, one level down.
        previous = read_json(target / "manifest.json")
        previous.pop("files", None)
    if target.exists() and not refresh:
        shutil.rmtree(target)
    patterns = ARTIFACT_PATTERNS + (CHECKPOINT_PATTERNS if checkpoints else ())
    for pattern in patterns:
        for src in sorted(run_path.glob(pattern)):
            dst = target / src.relative_to(run_path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    config = read_json(run_path / "config.json")
    metrics = read_json(run_path / "metrics.json")
    write_manifest(
        target,
        command=command,
        commit=commit,
        device=metrics.get("device") or device_description(config.get("device", "cpu")),
        training_wall_time_s=metrics.get("training_wall_time_s"),
        evaluation_wall_time_s=metrics.get("evaluation_wall_time_s"),
        iterations=metrics.get("iterations"),
        status=metrics["status"],
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        note=note,
        run_folder=str(run_path.relative_to(root))
        if run_path.is_relative_to(root)
        else str(run_path),
        **facts,
        **({"previous": previous} if previous else {}),
    )
    return target


# --------------------------------------------------------------------------------------
# Readers: what the chapters show from committed artifacts and benchmark results
# --------------------------------------------------------------------------------------

# What a chapter prints of an artifact's manifest, in this order (those present).
MANIFEST_KEYS = (
    "command",
    "commit",
    "device",
    "training_wall_time_s",
    "notebook_wall_time_s",
    "created",
    "note",
)


def read_artifact(name: str, root: Path | None = None) -> dict[str, Any] | None:
    """A committed artifact's JSON files, or None when ``artifacts/<name>/`` has no
    ``metrics.json``.

    Returns:
        ``{"name", "path", "metrics", "manifest", "config", "history"}``, each JSON
        file's content or None when the artifact lacks it.
    """
    path = (root or repo_root()) / "artifacts" / name
    if not (path / "metrics.json").exists():
        return None
    found: dict[str, Any] = {"name": name, "path": path}
    for part in ("metrics", "manifest", "config", "history"):
        file = path / f"{part}.json"
        found[part] = read_json(file) if file.exists() else None
    return found


def find_artifact(run: str, root: Path | None = None) -> dict[str, Any] | None:
    """The paper-scale artifact of a run (``artifacts/<run>-paper*/``, the last by
    name when several), as :func:`read_artifact` returns it, or None.

    ``run`` is a run name (:func:`mamllib.experiments.run_name`): the experiment,
    with ``-first-order`` for first-order MAML.
    """
    folders = sorted(
        p.parent
        for p in ((root or repo_root()) / "artifacts").glob(
            f"{run}-paper*/metrics.json"
        )
    )
    return read_artifact(folders[-1].name, root) if folders else None


def read_benchmark(name: str, root: Path | None = None) -> dict[str, Any]:
    """A committed benchmark result, ``benchmarks/results/<name>.json``.

    Raises:
        FileNotFoundError: naming the file and where the scripts that make it are.
    """
    path = (root or repo_root()) / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no benchmark result {path}: run the script in benchmarks/ that writes "
            f"it (benchmarks/README.md lists them)"
        )
    return read_json(path)


def describe_manifest(
    manifest: Mapping[str, Any], keys: Iterable[str] = MANIFEST_KEYS
) -> str:
    """``key: value`` lines of a manifest, for ``keys`` it holds (a missing or None
    value is left out). A command that carries the note (``--note '...'``) shows
    ``NOTE`` in its place, so the note is printed once."""
    shown = dict(manifest)
    if shown.get("command") and shown.get("note"):
        shown["command"] = shown["command"].replace(shlex.quote(shown["note"]), "NOTE")
    return "\n".join(
        f"{key}: {shown[key]}" for key in keys if shown.get(key) is not None
    )


def _mean_ci(mean: float, ci95: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + ("" if ci95 is None else f" ± {ci95:.{digits}f}")


def table1(dataset: str, root: Path | None = None) -> tuple[str, dict[str, Any]]:
    """Table 1's rows for ``dataset`` (``"omniglot"`` or ``"miniimagenet"``) beside
    our paper-scale artifacts, as a Markdown table.

    A row without an artifact gives the command that makes it.

    Returns:
        The table, and ``{run name: artifact or None}`` (:func:`find_artifact`) for
        every row.
    """
    lines = ["| setting | paper (Table 1) | ours | status |", "|---|---|---|---|"]
    found: dict[str, Any] = {}
    for run, (value, ci95) in paper_numbers.TABLE1.items():
        if run.split("-")[0] != dataset:
            continue
        found[run] = artifact = find_artifact(run, root)
        if artifact is None:
            experiment = run.removesuffix("-first-order")
            flag = " --first-order" if run.endswith("-first-order") else ""
            command = f"`python -m mamllib train {experiment}{flag} --preset paper`"
            lines.append(f"| {run} | {value} ± {ci95} | not run yet | {command} |")
            continue
        metrics = artifact["metrics"]
        acc = metrics["test_accuracy"]
        lines.append(
            f"| {run} | {value} ± {ci95} | "
            f"{_mean_ci(100 * acc['mean'], 100 * acc['ci95'])} ({acc['n']} tasks) | "
            f"{metrics['status']} |"
        )
    return "\n".join(lines), found


def steps_table(
    rows: Mapping[str, Iterable[Mapping[str, float]]],
    paper: Mapping[str, Iterable[float]] | None = None,
    n_steps: int | None = None,
    digits: int = 2,
) -> str:
    """A Markdown table of a quantity after 0, 1, 2, ... adaptation steps.

    Args:
        rows: ``{label: steps}``, ``steps`` as :func:`mamllib.evaluate.summarize_curve`
            gives them (``{"mean", "ci95", ...}`` per step); shown as mean ± 95% CI.
        paper: ``{label: values}``, the paper's numbers, shown first.
        n_steps: columns for steps ``0 .. n_steps - 1``; default: the longest row.

    Returns:
        The table, one row per label.
    """
    rows = {label: list(steps) for label, steps in rows.items()}
    paper = {label: list(values) for label, values in (paper or {}).items()}
    if n_steps is None:
        n_steps = max(len(v) for v in [*rows.values(), *paper.values()])
    header = " | ".join(f"{j} step{'s' * (j != 1)}" for j in range(n_steps))
    lines = [f"| | {header} |", "|---|" + "---|" * n_steps]
    for label, values in paper.items():
        cells = [f"{v:.{digits}f}" for v in values[:n_steps]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, steps in rows.items():
        cells = [_mean_ci(s["mean"], s.get("ci95"), digits) for s in steps[:n_steps]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
