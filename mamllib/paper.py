"""The paper's numbers the book compares against, each with its source, and the one
rule that calls a run complete or partial.

Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017. Settings (step sizes, meta-batch sizes, iterations) live in
:mod:`mamllib.presets`, beside the source of each; this module holds results.
"""

from __future__ import annotations

from collections.abc import Mapping

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
