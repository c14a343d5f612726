"""The book's settings page: the paper's, the original code's and our ``paper`` preset's
value of every hyperparameter, side by side (:data:`mamllib.paper.SETTINGS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mamllib import paper as paper_numbers
from mamllib.presets import PRESETS

# What each hyperparameter of a paper preset is, in a few words, for the settings page.
SETTING_LABELS = {
    # the model
    "hidden_sizes": "hidden layers",
    "n_filters": "filters per conv layer",
    "max_pool": "max-pooling, else strided convolutions",
    "in_channels": "image channels",
    "image_size": "image side in pixels",
    # the tasks
    "n_way": "N, classes per task",
    "k_shot": "K, support examples per class",
    "n_query": "query examples per class, meta-training",
    "scheme": "character split",
    "rotations": "rotations by 90° as new classes",
    "images_per_class": "images per class used",
    "reward": "reward",
    "horizon": "H, steps per episode",
    "n_traj": "trajectories per task and step",
    # the inner loop
    "inner_lr": "α, inner step size",
    "n_inner_steps": "inner steps in meta-training",
    "first_order": "first-order approximation",
    # the outer loop
    "meta_batch_size": "tasks per meta-batch",
    "outer_lr": "β, Adam's step size",
    "max_kl": "TRPO's KL step size δ",
    "cg_iters": "conjugate-gradient iterations",
    "cg_damping": "conjugate-gradient damping",
    "discount": "discount γ",
    "clip_grad": "meta-gradient clipped to ±",
    "n_iterations": "meta-iterations",
    "pretrain_iterations": "pretrained baseline's iterations",
    "oracle_iterations": "oracle's iterations",
    "finetune_lrs": "baseline's fine-tuning step",
    "n_val_tasks": "validation tasks",
    # the test
    "n_test_inner_steps": "inner steps at test",
    "eval_k_shots": "K at test",
    "n_eval_tasks": "test tasks",
    "n_eval_query": "query examples per class, test",
    "n_eval_traj": "trajectories per test step",
    "n_eval_steps": "steps of the test curve",
}


def format_setting(value: Any) -> str:
    """A setting's value as the settings page writes it (``None``: "-")."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_setting(v) for v in value) + "]"
    return str(value)


def _variant_label(variant: str) -> str:
    # "5way" -> "5-way", "half_cheetah-direction" -> "half cheetah direction"
    variant = re.sub(r"(\d+)(way|shot)", r"\1-\2", variant)
    return (
        variant.replace("_", " ")
        .replace("-direction", " direction")
        .replace("-velocity", " velocity")
    )


def format_variants(by_variant: Mapping[str, Any]) -> str:
    """``{variant: value}`` as ``"5-way: 0.4; 20-way: 0.1"``, ``"other"`` last as
    ``"others"``; one value alone if they are all equal."""
    values = [format_setting(v) for v in by_variant.values()]
    if len(set(values)) == 1:
        return values[0]
    cells = [
        f"{'others' if k == 'other' else _variant_label(k)}: {format_setting(v)}"
        for k, v in by_variant.items()
        if k != "other"
    ]
    if "other" in by_variant:
        cells.append(f"others: {format_setting(by_variant['other'])}")
    return "; ".join(cells)


def _our_variants(key: str, experiments: tuple[str, ...]) -> dict[str, Any]:
    """Our paper-preset values of ``key`` over ``experiments``, keyed by the shortest
    part of the experiment names that picks out those with each value."""
    values = {e: PRESETS[e]["paper"][key] for e in experiments}
    distinct = []
    for v in values.values():
        if v not in distinct:
            distinct.append(v)
    if len(distinct) == 1:
        return {"all": distinct[0]}
    parts = {p for e in experiments for p in e.split("-")}
    found: dict[str, Any] = {}
    for v in distinct:
        group = {e for e in experiments if values[e] == v}
        label = next(
            (
                p
                for p in sorted(parts)
                if {e for e in experiments if p in e.split("-")} == group
            ),
            None,
        )
        if label is None and len(group) == 1:
            label = next(iter(group))
        found[label or "other"] = v
    return found


def settings_table(family: str) -> str:
    """The settings page's table for an experiment family of
    :data:`mamllib.paper.FAMILIES`: every hyperparameter of the ``paper`` preset, the
    paper's value (with its section), the original code's (with its file and flag),
    ours, and the notes (:data:`mamllib.paper.SETTINGS`), numbered under the table; a
    last line lists the bookkeeping (:data:`mamllib.paper.BOOKKEEPING`)."""
    title, experiments, repository = paper_numbers.FAMILIES[family]
    settings = paper_numbers.SETTINGS[family]
    lines = [
        f"| setting | paper | original code ({repository}) | ours |",
        "|---|---|---|---|",
    ]
    notes = []
    # Model, tasks, inner loop, outer loop, test: SETTING_LABELS's order.
    for key in sorted(settings, key=list(SETTING_LABELS).index):
        s = settings[key]
        paper = "not stated"
        if s.paper is not None:
            paper = _with_variants(s.paper) + f" ({s.paper_source})"
        code = "–"
        if s.code is not None:
            code = _with_variants(s.code) + f" ({s.code_source})"
        ours = format_variants(_our_variants(key, experiments))
        if s.note:
            notes.append(f"{len(notes) + 1}. `{key}`: {s.note}")
            ours += f" (note {len(notes)})"
        lines.append(f"| {SETTING_LABELS[key]} (`{key}`) | {paper} | {code} | {ours} |")
    kept = []
    present = {k for e in experiments for k in PRESETS[e]["paper"]}
    for key in paper_numbers.BOOKKEEPING:
        if key in present:
            value = format_variants(_our_variants(key, experiments))
            kept.append(f"`{key}` " + (f"({value})" if ":" in value else value))
    return "\n".join(
        [
            *lines,
            "",
            *notes,
            "",
            "Bookkeeping, set by neither source: " + ", ".join(kept) + ".",
        ]
    )


def _with_variants(value: Any) -> str:
    return (
        format_variants(value) if isinstance(value, Mapping) else format_setting(value)
    )
