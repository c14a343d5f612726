"""The house figure style and the figures every sinusoid chapter reuses."""

from __future__ import annotations

import matplotlib.pyplot as plt

COLORS = {
    "maml": "#d62728",
    "pretrained": "#1f77b4",
    "oracle": "#2ca02c",
    "scratch": "#7f7f7f",
    "random": "#7f7f7f",  # meta-RL's random initialisation: the sinusoid's scratch
    "truth": "#222222",
    "first_order": "#ff7f0e",
}
LABELS = {
    "maml": "MAML",
    "pretrained": "pretrained",
    "oracle": "oracle",
    "scratch": "from scratch",
    "random": "random init",
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


PAPER_COLOR = "#222222"


def plot_reproduction(panels: list[dict], width: float = 6.8):
    """Dot-and-whisker panels: per row, the paper's number (square, with its 95% CI
    where the paper gives one) above ours (circle, with its 95% CI over test tasks);
    a partial run's circle is hollow and labelled at the right with the schedule
    reached.

    ``panels`` as :func:`mamllib.report.reproduction_panels` gives them:
    ``[{"title", "xlabel", "rows": [{"label", "paper", "paper_ci95", "ours",
    "ours_ci95", "partial"}]}]``. Returns the figure.
    """
    heights = [len(p["rows"]) + 2.2 for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width, 0.3 * sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, panel in zip(axes[:, 0], panels):
        rows = panel["rows"]
        for i, r in enumerate(rows):
            ax.errorbar(
                r["paper"],
                i - 0.17,
                xerr=r["paper_ci95"],
                fmt="s",
                ms=5,
                color=PAPER_COLOR,
                capsize=2,
            )
            partial = r["partial"] is not None
            ax.errorbar(
                r["ours"],
                i + 0.17,
                xerr=r["ours_ci95"],
                fmt="o",
                ms=6,
                color=COLORS["maml"],
                mfc="white" if partial else COLORS["maml"],
                mew=1.5,
                capsize=2,
            )
            if partial:
                ax.annotate(
                    r["partial"],
                    xy=(1.0, i + 0.17),
                    xycoords=("axes fraction", "data"),
                    xytext=(6, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8.5,
                    color=COLORS["maml"],
                )
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=9.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
        ax.grid(axis="y", visible=False)
        ax.set_title(panel["title"], fontsize=10.5, loc="left")
        ax.set_xlabel(panel["xlabel"], fontsize=9.5)
        ax.tick_params(axis="x", labelsize=9)
    handles = [
        plt.Line2D([], [], marker="s", ls="", color=PAPER_COLOR, label="paper"),
        plt.Line2D([], [], marker="o", ls="", color=COLORS["maml"], label="ours"),
        plt.Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=COLORS["maml"],
            mfc="white",
            mew=1.5,
            label="ours, partial (iterations reached / paper's)",
        ),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def plot_curves_with_paper(
    ax,
    steps_by_method: dict,
    paper_values,
    paper_label: str,
    title: str = "",
    ylabel: str = "average return",
):
    """:func:`plot_curves` with the paper's numbers after 0, 1, 2, ... steps drawn over
    them as black diamonds on a dotted line: the form of the paper's Figures 4 and 5
    (returns against adaptation steps), for the values its App. C tabulates.

    ``paper_values`` may be None (nothing to overlay). The x ticks are whole steps;
    call ``ax.legend`` again to move the legend.
    """
    plot_curves(ax, steps_by_method, title=title, ylabel=ylabel, legend=False)
    n_steps = max(len(steps) for steps in steps_by_method.values())
    if paper_values is not None:
        ax.plot(
            range(len(paper_values)),
            list(paper_values),
            ls=":",
            marker="D",
            ms=5,
            color="k",
            label=paper_label,
        )
        n_steps = max(n_steps, len(paper_values))
    ax.set_xticks(range(n_steps))
    ax.legend(fontsize=9)
    return ax
