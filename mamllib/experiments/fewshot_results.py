"""A few-shot run's results: its row of Table 1, its files, and whether they are
already up to date.

:func:`save_results` writes them through :mod:`mamllib.report`;
:func:`already_evaluated` says when a resumed call that trained nothing need not
evaluate again.
"""

from __future__ import annotations

from typing import Any

from mamllib import paper, report
from mamllib.presets import PRESETS
from mamllib.runs import RunFolder, device_description, read_json, repo_root
from mamllib.train import FitResult

DATASETS = {"omniglot": "Omniglot", "miniimagenet": "MiniImageNet"}


def setting_name(experiment: str, first_order: bool = False) -> str:
    """The row of Table 1 (:data:`mamllib.paper.TABLE1`) a run reproduces: the
    experiment, with ``-first-order`` for the first-order approximation. Unknown
    names are refused."""
    name = experiment + ("-first-order" if first_order else "")
    if experiment not in paper.TABLE1:
        known = sorted(k for k in paper.TABLE1 if not k.endswith("-first-order"))
        raise ValueError(f"unknown few-shot experiment {experiment!r}; known: {known}")
    if name not in paper.TABLE1:
        rows = sorted(k for k in paper.TABLE1 if k.endswith("-first-order"))
        raise ValueError(f"Table 1 has no first-order row for {experiment!r}: {rows}")
    return name


def already_evaluated(
    run: RunFolder, config: dict[str, Any], result: FitResult
) -> str | None:
    """Why this call need not evaluate: the run's ``metrics.json`` scores its weights.

    Returns a one-line note, or None when the call must evaluate. A note only when
    this call *resumed* and trained nothing (``result.resumed_from ==
    result.iterations``), and ``metrics.json`` holds those iterations, the config's
    number of test tasks and test inner steps, and (with selection on validation
    tasks) the same selected iteration. The parameters scored then cannot differ from
    the ones this call ends with, so evaluating again would repeat the same numbers:
    ``scripts/train_*.py`` skip it unless asked (``--reevaluate``).

    Two cases that look finished but are not: a run retrained from scratch after its
    checkpoint was deleted reaches the same iterations with new weights, but did not
    resume at them; and a run stopped by a time limit between validation checkpoints,
    then called with ``--iterations`` set to where it stopped, is validated at that
    iteration now and may select it. Both are evaluated.
    """
    path = run.file("metrics.json")
    if result.resumed_from != result.iterations or not path.exists():
        return None
    old = read_json(path)
    at = old.get("test_accuracy", {})
    same = (old.get("iterations"), at.get("n"), at.get("step")) == (
        result.iterations,
        config["n_eval_tasks"],
        config["n_test_inner_steps"],
    )
    selection = result.selection or {}
    if not same or old.get("selected_iteration") != selection.get("best_iteration"):
        return None
    return (
        f"{path} already holds the evaluation at {result.iterations:,} iterations "
        f"({old['status']}); not evaluated again (--reevaluate does)"
    )


def save_results(
    run: RunFolder,
    config: dict[str, Any],
    result: FitResult,
    evaluation: dict[str, Any],
    evaluation_wall_time_s: float | None = None,
    **facts: Any,
) -> str:
    """Write a run's ``metrics.json``, ``history.json``, final weights and its row of
    Table 1 (``reproduction.json``) through :mod:`mamllib.report`.

    The status follows :func:`mamllib.paper.run_status` against the paper preset's
    iterations. ``facts`` go into ``metrics.json`` after the status. Prints a
    one-line summary and returns the status.
    """
    experiment = config["experiment"]
    target = PRESETS[experiment]["paper"]["n_iterations"]
    status = paper.run_status(
        config["preset"], {"maml": result.iterations}, {"maml": target}
    )
    at = evaluation["at_test_steps"]
    # The row of Table 1 this run reproduces, if the paper has one (it has no
    # first-order Omniglot rows).
    setting = experiment + ("-first-order" if config["first_order"] else "")
    value, ci95 = paper.TABLE1.get(setting, (None, None))
    report.write_results(
        run,
        status,
        {
            "experiment": experiment,
            "first_order": config["first_order"],
            **facts,
            "iterations": result.iterations,
            "training_wall_time_s": round(result.wall_time_s, 1),
            "evaluation_wall_time_s": None
            if evaluation_wall_time_s is None
            else round(evaluation_wall_time_s, 1),
            "device": device_description(config["device"]),
            "test_accuracy": at,
            "steps": evaluation["steps"],
        },
        history=result.history,
        params={"maml": result.params},
        rows=[]
        if value is None
        else [
            report.row(
                f"{DATASETS[experiment.split('-')[0]]} {config['n_way']}-way "
                f"{config['k_shot']}-shot",
                ("first-order " if config["first_order"] else "")
                + f"MAML test accuracy (%), {config['n_test_inner_steps']} steps",
                value,
                paper.TABLE1_SOURCE,
                100 * at["mean"],
                100 * at["ci95"],
                status,
                paper_ci95=ci95,
            )
        ],
    )
    # Relative to the repository (or $MAMLLIB_RESULTS): no machine paths in output.
    where = (
        run.path.relative_to(repo_root())
        if run.path.is_relative_to(repo_root())
        else "$MAMLLIB_RESULTS/" + "/".join(run.path.parts[-3:])
    )
    print(
        f"{setting}: accuracy after {config['n_test_inner_steps']} steps "
        f"{100 * at['mean']:.2f} +- {100 * at['ci95']:.2f} % over {at['n']} tasks "
        f"({status}) -> {where}"
    )
    return status
