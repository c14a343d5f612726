"""The book's reproduction page: every artifact's rows beside the paper's (table and
dot-and-whisker panels), the paper's rows never attempted, and how each artifact was
made.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mamllib import paper as paper_numbers
from mamllib.report.artifacts import (
    artifact_status,
    describe_manifest,
    find_artifact,
    format_interval,
    read_artifacts,
    run_of,
    schedule_reached,
)


def reproduction_rows(root: Path | None = None) -> list[dict[str, Any]]:
    """Every row of every artifact's ``reproduction.json``, in the paper's order, with
    the artifact's ``name``, ``first_order``, ``status`` (:func:`artifact_status`,
    not the row's stored text), ``complete`` and ``reached``
    (:func:`schedule_reached`)."""
    rows = []
    for artifact in read_artifacts(root):
        status = artifact_status(artifact)
        for r in artifact["rows"]:
            rows.append(
                {
                    **r,
                    "status": status,
                    "artifact": artifact["name"],
                    "first_order": bool(artifact["config"].get("first_order")),
                    "complete": status == "complete",
                    "reached": schedule_reached(artifact),
                }
            )
    return rows


def ours_cell(row: Mapping[str, Any]) -> str:
    """Our number with its interval and, for a partial run, the schedule reached:
    ``"31.17 ± 1.76 (partial, 300 / 60,000)"``."""
    text = format_interval(row["ours"], row["ours_ci95"], digits=2)
    return text if row["complete"] else f"{text} (partial, {row['reached']})"


def reproduction_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`reproduction_rows`: experiment (with the paper's
    source, on its first row), quantity, the paper's number, ours (:func:`ours_cell`).
    """
    lines = ["| experiment | quantity | paper | ours (95% CI) |", "|---|---|---|---|"]
    previous = None
    for r in rows:
        group = (r["experiment"], r["source"], r["artifact"])
        name = f"{r['experiment']} ({r['source']})"
        paper = format_interval(r["paper"], r["paper_ci95"])
        lines.append(
            f"| {name if group != previous else ''} | {r['quantity']} | {paper} | "
            f"{ours_cell(r)} |"
        )
        previous = group
    return "\n".join(lines)


def split_quantity(quantity: str) -> tuple[str, str, str]:
    """(method, measure, steps) of a row's quantity as the experiments write it:
    ``"MAML: MSE after 1 step"`` and ``"first-order MAML test accuracy (%), 10 steps"``
    give ``("MAML", "MSE", "1 step")`` and ``("first-order MAML", "test accuracy (%)",
    "10 steps")``; anything else ``(quantity, "", "")``."""
    for pattern in (
        r"^(?P<method>.+?): (?P<measure>.+) after (?P<steps>\d+ steps?)$",
        r"^(?P<method>(first-order )?MAML) (?P<measure>.+), (?P<steps>\d+ steps?)$",
    ):
        found = re.match(pattern, quantity)
        if found:
            return found["method"], found["measure"], found["steps"]
    return quantity, "", ""


def reproduction_panels(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The reproduction figure's panels (:func:`mamllib.plot.plot_reproduction`).

    Artifacts with one row (a setting of Table 1) share a panel with the other
    one-row artifacts of their source and data set (the experiment's first word),
    labelled by the rest of the experiment; an artifact with several rows (a curve
    over steps) has a panel of its own, labelled by method and steps.

    Returns:
        ``[{"title", "xlabel", "rows": [{"label", "paper", "paper_ci95", "ours",
        "ours_ci95", "partial"}]}]``, ``partial`` the schedule reached or None.
    """
    by_artifact: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_artifact.setdefault(r["artifact"], []).append(r)
    panels: dict[str, dict[str, Any]] = {}
    for group in by_artifact.values():
        first = group[0]
        dataset, _, setting = first["experiment"].partition(" ")
        measure = split_quantity(first["quantity"])[1]
        if first["lower_is_better"]:
            measure += " (lower is better)"
        shared = len(group) == 1
        name = dataset if shared else first["experiment"]
        title = f"{name} ({first['source']})"
        panel = panels.setdefault(
            title, {"title": title, "xlabel": measure, "rows": []}
        )
        for r in group:
            method, _, steps = split_quantity(r["quantity"])
            if shared:
                label = setting + (", first order" if r["first_order"] else "")
            else:
                label = f"{method}, {steps}" if steps else method
            panel["rows"].append(
                {
                    "label": label,
                    "paper": r["paper"],
                    "paper_ci95": r["paper_ci95"],
                    "ours": r["ours"],
                    "ours_ci95": r["ours_ci95"],
                    "partial": None if r["complete"] else r["reached"],
                }
            )
    return list(panels.values())


def seed_spread(root: Path | None = None, digits: int = 2) -> str:
    """Runs trained with several seeds, as a Markdown table: per quantity the paper's
    number, ours for each training seed (in the order the experiment cell lists the
    seeds; a partial seed is marked with the schedule it reached), and their mean ±
    standard deviation across seeds (``ddof=1``).

    Returns:
        The table, or a sentence saying no run has more than one seed.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for artifact in read_artifacts(root, every_seed=True):
        runs.setdefault(run_of(artifact), []).append(artifact)
    runs = {run: found for run, found in runs.items() if len(found) > 1}
    if not runs:
        return "No run has been trained with more than one seed yet."
    lines = [
        "| experiment | quantity | paper | ours, per seed | mean ± sd across seeds |",
        "|---|---|---|---|---|",
    ]
    for found in runs.values():
        seeds = ", ".join(
            str(a["config"].get("seed", 0))
            + ("" if artifact_status(a) == "complete" else f" ({schedule_reached(a)})")
            for a in found
        )
        values: dict[str, list[float]] = {}
        for a in found:
            for r in a["rows"]:
                values.setdefault(r["quantity"], []).append(r["ours"])
        for i, r in enumerate(found[0]["rows"]):
            ours = values[r["quantity"]]
            name = f"{r['experiment']} ({r['source']}; seeds {seeds})" if i == 0 else ""
            lines.append(
                f"| {name} | {r['quantity']} | {r['paper']} | "
                + ", ".join(f"{v:.{digits}f}" for v in ours)
                + f" | {statistics.mean(ours):.{digits}f} ± "
                f"{statistics.stdev(ours):.{digits}f} |"
            )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def command_parts(command: str) -> list[str]:
    """A recorded command split at each ``"; "`` outside parentheses and quotes: the
    parts of a run made in several calls, one a line (each keeps its ``;``)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif command.startswith("; ", i) and depth == 0:
            parts.append(command[start : i + 1])
            start = i + 2
    return [*parts, command[start:]]


def provenance(root: Path | None = None) -> str:
    """How each artifact was made, as Markdown: per artifact its status and the
    iterations reached, the hardware, the wall times, the commit and the command
    (as recorded in its ``manifest.json``; a ``--note '...'`` the command carried is
    shown as ``NOTE``, one part of a multi-part command per line)."""
    blocks = []
    for artifact in read_artifacts(root, every_seed=True):
        m = artifact["manifest"] or {}
        status = artifact_status(artifact)
        word = "complete" if status == "complete" else "partial"
        times = [
            f"{label} {_duration(m[key])}"
            for key, label in (
                ("training_wall_time_s", "training"),
                ("evaluation_wall_time_s", "evaluation"),
                ("notebook_wall_time_s", "notebook"),
            )
            if m.get(key) is not None
        ]
        command = describe_manifest(m, ("command",)).removeprefix("command: ")
        blocks.append(
            "\n".join(
                [
                    f"**`{artifact['name']}`**",
                    "",
                    f"- {word}: {schedule_reached(artifact)} meta-iterations",
                    f"- hardware: {m.get('device', 'not recorded')}",
                    f"- wall time: {', '.join(times) or 'not recorded'}",
                    f"- commit: `{m.get('commit', 'not recorded')[:12]}`",
                    "- command:",
                    "",
                    "  ```text",
                    *(f"  {line}" for line in command_parts(command)),
                    "  ```",
                ]
            )
        )
    return "\n\n".join(blocks) if blocks else "No artifacts committed yet."


def not_reproduced(root: Path | None = None) -> str:
    """The paper's results with no committed artifact, as a Markdown list: those an
    experiment of mamllib can run (with the command that runs it), then the rows of
    methods mamllib does not implement (:data:`mamllib.paper.NOT_IMPLEMENTED`)."""
    runnable = [(run, paper_numbers.TABLE1_SOURCE) for run in paper_numbers.TABLE1] + [
        ("sinusoid", paper_numbers.TABLE2_SOURCE)
    ]
    runnable += [
        (run, paper_numbers.APPENDIX_C_SOURCE) for run in paper_numbers.APPENDIX_C
    ]
    runnable += [
        (run, paper_numbers.FIGURE5_SOURCE)
        for run in paper_numbers.FIGURE5
        if run not in paper_numbers.APPENDIX_C
    ]
    lines = []
    for run, source in runnable:
        if find_artifact(run, root) is None:
            experiment = run.removesuffix("-first-order")
            flag = " --first-order" if run.endswith("-first-order") else ""
            lines.append(
                f"- `{run}` ({source}): never run at the `paper` preset; "
                f"`python -m mamllib train {experiment}{flag} --preset paper`"
            )
    for what, values, source in paper_numbers.NOT_IMPLEMENTED:
        numbers = ", ".join(f"{v} ({k})" for k, v in values.items())
        lines.append(f"- {what} ({source}): {numbers}; not implemented in mamllib")
    return "\n".join(lines)
