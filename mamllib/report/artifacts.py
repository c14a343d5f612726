"""Readers of committed artifacts and benchmark results: the parsing several chapters
would otherwise each repeat in a hidden cell. They read files and return plain dicts or
Markdown, and compute nothing but an artifact's status, by
:func:`mamllib.paper.run_status` from the iterations it reached.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mamllib import paper as paper_numbers
from mamllib.presets import PRESETS
from mamllib.presets.metarl import PRESETS as METARL_PRESETS
from mamllib.runs import (
    read_json,
    repo_root,
)

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
    name when several), as :func:`read_artifact` returns it, or None. Artifacts of
    further training seeds are named ``<run>-seed-<n>-paper`` and are not found here.

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

    A row without an artifact gives the command that makes it; a row with one, its
    status by :func:`artifact_status`.

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
            f"{artifact_status(artifact)} |"
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


# The paper's iterations of each method, by the preset key that holds them.
TARGET_KEYS = {
    "maml": "n_iterations",
    "pretrained": "pretrain_iterations",
    "oracle": "oracle_iterations",
}


def read_artifacts(
    root: Path | None = None, every_seed: bool = False
) -> list[dict[str, Any]]:
    """Committed artifacts with rows (``artifacts/*/reproduction.json``), as
    :func:`read_artifact` returns it plus ``"rows"``, in the paper's order: Table 1,
    Table 2, App. C, each in :mod:`mamllib.paper`'s order.

    Args:
        every_seed: every artifact; by default only each run's lowest training seed,
            the one the tables report (:func:`mamllib.report.seed_spread` shows the
            others beside it).
    """
    root = root or repo_root()
    found = []
    for path in sorted((root / "artifacts").glob("*/reproduction.json")):
        artifact = read_artifact(path.parent.name, root)
        if artifact is not None:
            found.append({**artifact, "rows": read_json(path)})
    if not every_seed:
        first: dict[str, int] = {}
        for a in found:
            first[run_of(a)] = min(first.get(run_of(a), _seed(a)), _seed(a))
        found = [a for a in found if _seed(a) == first[run_of(a)]]
    return sorted(found, key=lambda a: (*_paper_order(a), _seed(a)))


def _seed(artifact: Mapping[str, Any]) -> int:
    return int((artifact["config"] or {}).get("seed", 0))


def run_of(artifact: Mapping[str, Any]) -> str:
    """The artifact's run name: its experiment, with ``-first-order`` for first-order
    MAML (the keys of :data:`mamllib.paper.TABLE1`)."""
    config = artifact["config"]
    return config["experiment"] + ("-first-order" if config.get("first_order") else "")


def _paper_order(artifact: Mapping[str, Any]) -> tuple[int, int, str]:
    run = run_of(artifact)
    for rank, keys in enumerate(
        (paper_numbers.TABLE1, ("sinusoid",), paper_numbers.APPENDIX_C)
    ):
        if run in keys:
            return rank, list(keys).index(run), run
    return 3, 0, run


def iterations_reached(artifact: Mapping[str, Any]) -> dict[str, int]:
    """Meta-iterations each method of the artifact was trained for, from its
    ``metrics.json``: ``{"maml": 300}``."""
    metrics = artifact["metrics"]
    if isinstance(metrics.get("iterations"), int):
        return {"maml": metrics["iterations"]}
    if isinstance(metrics.get("iterations"), Mapping):
        return dict(metrics["iterations"])
    return {m: t["iterations"] for m, t in metrics["training"].items()}


def iteration_targets(artifact: Mapping[str, Any]) -> dict[str, int]:
    """The paper preset's iterations for each method the artifact must train (whatever
    the run's own ``n_iterations`` was): for meta-RL, MAML and the trained baselines
    of §5.3 (pretrained, oracle) whether or not it trained them; otherwise the methods
    it trained."""
    experiment = artifact["config"]["experiment"]
    preset = PRESETS[experiment]["paper"]
    metarl = experiment in METARL_PRESETS
    methods = TARGET_KEYS if metarl else iterations_reached(artifact)
    return {m: preset[TARGET_KEYS[m]] for m in methods}


def _reached_of_targets(artifact: Mapping[str, Any]) -> dict[str, int]:
    """:func:`iterations_reached` with 0 for a method it must train and did not."""
    reached = iterations_reached(artifact)
    return {m: reached.get(m, 0) for m in iteration_targets(artifact)} | reached


def artifact_status(artifact: Mapping[str, Any]) -> str:
    """The artifact's status by :func:`mamllib.paper.run_status`, the one rule:
    ``"complete"`` or ``"partial: ..."``."""
    return paper_numbers.run_status(
        artifact["config"]["preset"],
        _reached_of_targets(artifact),
        iteration_targets(artifact),
    )


def schedule_reached(artifact: Mapping[str, Any]) -> str:
    """The iterations reached of the paper's schedule, ``"300 / 60,000"``; with
    several methods, each by name: ``"maml 160 / 500, oracle 500 / 500"``."""
    reached, targets = _reached_of_targets(artifact), iteration_targets(artifact)
    counts = {m: f"{n:,} / {targets[m]:,}" for m, n in reached.items()}
    if len(counts) == 1:
        return next(iter(counts.values()))
    return ", ".join(f"{m} {c}" for m, c in counts.items())


def format_interval(value: float, ci95: float | None, digits: int | None = None) -> str:
    """``value ± ci95`` with ``digits`` decimals; by default as many as the more
    precise of the two is written with (the paper's 48.70 ± 1.84, 98.7 ± 0.4)."""
    if digits is None:
        digits = max(_decimals(v) for v in (value, ci95) if v is not None)
    text = f"{value:.{digits}f}"
    return text if ci95 is None else f"{text} ± {ci95:.{digits}f}"


def _decimals(x: float) -> int:
    text = repr(float(x))
    return 0 if text.endswith(".0") else len(text.partition(".")[2])
