"""The one writer of results: a run's metrics, history, weights and reproduction rows,
and the committed artifacts made from runs (with a manifest).

Every experiment and chapter writes through :func:`write_results`, so every
``metrics.json`` opens with the same ``status`` (:func:`mamllib.paper.run_status`) and
every ``reproduction.json`` row has the same fields (:data:`ROW_FIELDS`), which the
book's reproduction page reads.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
