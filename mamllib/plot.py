"""The house figure style and the figures every sinusoid chapter reuses."""

from __future__ import annotations

import matplotlib.pyplot as plt

COLORS = {
    "maml": "#d62728",
    "pretrained": "#1f77b4",
    "oracle": "#2ca02c",
    "scratch": "#7f7f7f",
    "truth": "#222222",
    "first_order": "#ff7f0e",
}
LABELS = {
    "maml": "MAML",
    "pretrained": "pretrained",
    "oracle": "oracle",
    "scratch": "from scratch",
    "first_order": "first-order MAML",
}


def use_house_style() -> None:
    """Readable defaults for every figure in the book."""
    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 11,
            "legend.frameon": False,
        }
    )


def plot_curves(
    ax, steps_by_method: dict, title: str = "", ylabel: str = "MSE", legend: bool = True
):
    """Mean with 95% CI band per method, from ``summarize_curve`` outputs.

    ``steps_by_method`` maps a method name to a list of ``{"step", "mean", "ci95"}``.
    """
    for method, steps in steps_by_method.items():
        x = [s["step"] for s in steps]
        mean = [s["mean"] for s in steps]
        ci = [s["ci95"] for s in steps]
        color = COLORS.get(method)
        ax.plot(
            x, mean, marker="o", ms=3, color=color, label=LABELS.get(method, method)
        )
        ax.fill_between(
            x,
            [m - c for m, c in zip(mean, ci)],
            [m + c for m, c in zip(mean, ci)],
            color=color,
            alpha=0.2,
        )
    ax.set_xlabel("gradient steps at test time")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax
