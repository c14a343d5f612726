"""The paper's numbers the book compares against, each with its source; the one rule
that calls a run complete or partial; the paper's rows the book does not reproduce;
and, importable from here, the paper's and the original code's settings
(:mod:`mamllib.paper_settings`).

Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017; the original code is cbfinn/maml (sinusoid, Omniglot,
MiniImagenet) and cbfinn/maml_rl (reinforcement learning). Our settings live in
:mod:`mamllib.presets`, each beside its source.
"""

from __future__ import annotations

from collections.abc import Mapping

from mamllib.paper_settings import (  # noqa: F401  (the settings, importable from here)
    BOOKKEEPING,
    FAMILIES,
    FOLLOW_PAPER,
    SETTINGS,
    Setting,
    variant_value,
)

# Table 1: few-shot classification test accuracy (%) with its 95% CI, by run name (the
# experiment, plus "-first-order" for the paper's first-order approximation).
TABLE1: dict[str, tuple[float, float]] = {
    "omniglot-5way-1shot": (98.7, 0.4),
    "omniglot-5way-5shot": (99.9, 0.1),
    "omniglot-20way-1shot": (95.8, 0.3),
    "omniglot-20way-5shot": (98.9, 0.2),
    "miniimagenet-5way-1shot": (48.70, 1.84),
    "miniimagenet-5way-5shot": (63.11, 0.92),
    "miniimagenet-5way-1shot-first-order": (48.07, 1.75),
    "miniimagenet-5way-5shot-first-order": (63.15, 0.91),
}
TABLE1_SOURCE = "Table 1"

# App. C.1, Table 2: sinusoid regression, K = 5, mean squared error after 1, 5 and 10
# gradient steps at test time.
TABLE2: dict[str, dict[int, float]] = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained": {1: 2.41, 5: 2.23, 10: 2.19},
}
TABLE2_SOURCE = "App. C.1, Table 2"

# App. C: MAML's average return after 0, 1, 2, 3 policy-gradient steps (the other
# locomotion tasks are reported only as curves, Figure 5).
APPENDIX_C: dict[str, tuple[str, list[float]]] = {
    "navigation": ("2D navigation (point mass)", [-40.41, -11.68, -3.33, -3.23]),
    "half_cheetah-direction": (
        "Half-cheetah forward/backward",
        [-50.69, 293.19, 313.48, 315.65],
    ),
}
APPENDIX_C_SOURCE = "App. C"


def run_status(
    preset: str, reached: Mapping[str, int], targets: Mapping[str, int]
) -> str:
    """``"complete"``, or ``"partial: ..."`` with the iterations reached.

    The one rule, for every experiment: a run is complete only at the ``paper``
    preset with every method trained to its paper-scale number of iterations
    (``targets``, from the paper preset, whatever a call's ``n_iterations`` was).

    Args:
        reached: iterations reached by method (e.g. ``{"maml": 4874}``).
        targets: the paper preset's iterations by method.

    Returns:
        e.g. ``"partial: paper preset, 4,874 of 60,000 meta-iterations"`` or, with
        several methods, ``"partial: paper preset, maml 160 of 500, pretrained 500
        of 500 meta-iterations"``.
    """
    missing = sorted(set(reached) - set(targets))
    if missing:
        raise ValueError(f"no paper-scale iterations for {missing}")
    if preset == "paper" and all(reached[m] >= targets[m] for m in reached):
        return "complete"
    if len(reached) == 1:
        ((method, n),) = reached.items()
        counts = f"{n:,} of {targets[method]:,}"
    else:
        counts = ", ".join(f"{m} {n:,} of {targets[m]:,}" for m, n in reached.items())
    return f"partial: {preset} preset, {counts} meta-iterations"


# --------------------------------------------------------------------------------------
# What the book does not reproduce
# --------------------------------------------------------------------------------------

# Figure 5: the locomotion results, reported only as curves of average return after
# 0-3 policy-gradient steps (App. C gives numbers for half-cheetah forward/backward
# alone, in APPENDIX_C).
FIGURE5: dict[str, str] = {
    "half_cheetah-velocity": "Half-cheetah goal velocity",
    "half_cheetah-direction": "Half-cheetah forward/backward",
    "ant-velocity": "Ant goal velocity",
    "ant-direction": "Ant forward/backward",
}
FIGURE5_SOURCE = "Figure 5"

# Rows of the paper's tables for methods mamllib does not implement:
# (what, {column: value}, source).
NOT_IMPLEMENTED: tuple[tuple[str, dict[str, str], str], ...] = (
    (
        "Omniglot 5-way, MAML without convolutions (MLP 256-128-64-64)",
        {"1-shot": "89.7 ± 1.1 %", "5-shot": "97.5 ± 0.6 %"},
        "Table 1",
    ),
    (
        "Sinusoid, multi-task regressors, no regularisation",
        {"1 step": "4.19", "5 steps": "3.85", "10 steps": "3.69"},
        TABLE2_SOURCE,
    ),
    (
        "Sinusoid, multi-task regressors, ℓ2 regularisation",
        {"1 step": "7.18", "5 steps": "5.69", "10 steps": "5.60"},
        TABLE2_SOURCE,
    ),
    (
        "Sinusoid, multi-task regressors, regularised to the mean θ",
        {"1 step": "2.91", "5 steps": "2.72", "10 steps": "2.71"},
        TABLE2_SOURCE,
    ),
    (
        "Omniglot 5-way, context vector",
        {"1-shot": "94.9 ± 0.9 %", "5-shot": "97.7 ± 0.3 %"},
        "App. C.2, Table 3",
    ),
    (
        "2D navigation, context vector (return after 0 / 1 / 2 / 3 steps)",
        {"returns": "-42.42 / -13.90 / -5.17 / -3.18"},
        APPENDIX_C_SOURCE,
    ),
    (
        "Half-cheetah forward/backward, context vector (0 / 1 / 2 / 3 steps)",
        {"returns": "-40.49 / -44.08 / -38.27 / -42.50"},
        APPENDIX_C_SOURCE,
    ),
)
