"""The sinusoid experiment (paper §5.1): MAML, pretrained and oracle, trained, scored.

Glue on the top floor: turns a config (``presets.make_config("sinusoid", ...)``) into
trained parameters with checkpoints in a run folder, and scores every method on the
same fixed evaluation tasks. Notebook 05 walks through it; papermill runs it at scale.
"""

from __future__ import annotations

from typing import Any

import torch

from mamllib import paper, report
from mamllib.baselines import (
    oracle_losses,
    oracle_objective,
    pretrain_objective,
    tune_finetune_lr,
)
from mamllib.evaluate import (
    VAL_SEED,
    adaptation_curve,
    evaluation_tasks,
    summarize_curve,
)
from mamllib.maml import mse_loss
from mamllib.models import MLP, Params, init_params
from mamllib.presets import PRESETS
from mamllib.runs import RunFolder
from mamllib.tasks import SinusoidTasks, make_generator
from mamllib.train import FitResult, checkpoint_iteration, fit, meta_objective

# Settings that do not change what training computes: a checkpoint stays valid if only
# these differ (so a partial run can be continued to more iterations, or re-evaluated).
_NOT_TRAINING = {
    "preset",
    "n_iterations",
    "pretrain_iterations",
    "oracle_iterations",
    "checkpoint_every",
    "finetune_lrs",
    "n_val_tasks",
    "eval_k_shots",
    "n_eval_tasks",
    "n_eval_query",
    "n_eval_steps",
    "device",
    "strategy",
}


METHODS = ("maml", "pretrained", "oracle")
NAMES = {"maml": "MAML", "pretrained": "pretrained", "oracle": "oracle"}


def models(config: dict[str, Any]) -> dict[str, MLP]:
    """Skeletons: 1-40-40-1 for MAML and pretrained, 3-40-40-1 for the oracle."""
    hidden = tuple(config["hidden_sizes"])
    return {
        "maml": MLP((1, *hidden, 1)),
        "pretrained": MLP((1, *hidden, 1)),
        "oracle": MLP((3, *hidden, 1)),
    }


def train_method(
    method: str,
    config: dict[str, Any],
    run: RunFolder | None = None,
    desc: str | None = None,
    time_limit_s: float | None = None,
) -> FitResult:
    """Train ``method`` (``"maml"``, ``"pretrained"`` or ``"oracle"``) per ``config``.

    Resumes from ``run``'s checkpoint for that method if one exists.
    """
    model = models(config)[method]
    device = torch.device(config["device"])
    params = init_params(model, make_generator(config["seed"], "init"), device=device)
    if method == "maml":
        objective = meta_objective(
            model,
            mse_loss,
            config["inner_lr"],
            config["n_inner_steps"],
            config["first_order"],
            config["strategy"],
        )
        n_iterations = config["n_iterations"]
    elif method == "pretrained":
        objective, n_iterations = (
            pretrain_objective(model, mse_loss),
            config["pretrain_iterations"],
        )
    elif method == "oracle":
        objective, n_iterations = (
            oracle_objective(model, mse_loss),
            config["oracle_iterations"],
        )
    else:
        raise ValueError(
            f"method must be 'maml', 'pretrained' or 'oracle', got {method!r}"
        )
    distribution = SinusoidTasks()

    def sample_batch(generator):
        return distribution.sample(
            config["meta_batch_size"],
            config["k_shot"],
            config["n_query"],
            generator=generator,
        ).to(device)

    fingerprint = {k: v for k, v in config.items() if k not in _NOT_TRAINING}
    fingerprint["method"] = method
    return fit(
        objective,
        params,
        sample_batch,
        make_generator(config["seed"], "tasks"),
        n_iterations,
        config["outer_lr"],
        checkpoint=run.checkpoint(method) if run else None,
        checkpoint_every=config["checkpoint_every"],
        log_every=config["log_every"],
        fingerprint=fingerprint,
        desc=desc or method,
        time_limit_s=time_limit_s,
    )


def evaluate_methods(
    trained: dict[str, Params], config: dict[str, Any]
) -> dict[str, Any]:
    """Score every trained method on the fixed evaluation tasks for each eval K.

    MAML fine-tunes with its own ``inner_lr``; the pretrained net with a step size
    tuned on validation tasks (separately for each K); the oracle is not adapted.

    Returns:
        ``{"curves": {k: {method: [n_tasks, steps+1] tensor}}, "metrics": {...}}``
        where metrics hold mean/std/ci95 per step, JSON-ready.
    """
    nets, device = models(config), torch.device(config["device"])
    curves: dict[int, dict[str, torch.Tensor]] = {}
    metrics: dict[str, Any] = {}
    for k in config["eval_k_shots"]:
        tasks = evaluation_tasks(k, config["n_eval_tasks"], config["n_eval_query"]).to(
            device
        )
        val = evaluation_tasks(
            k, config["n_val_tasks"], config["n_eval_query"], seed=VAL_SEED
        ).to(device)
        curves[k], metrics[f"k{k}"] = {}, {}
        for method, params in trained.items():
            lr = config["inner_lr"]
            if method == "oracle":
                flat = oracle_losses(nets["oracle"], params, tasks, mse_loss)
                curve = flat[:, None].expand(-1, config["n_eval_steps"] + 1)
                metrics[f"k{k}"][method] = {"steps": summarize_curve(curve.cpu())}
            else:
                if method == "pretrained":
                    lr, scores = tune_finetune_lr(
                        nets[method],
                        params,
                        val,
                        mse_loss,
                        config["finetune_lrs"],
                        config["n_eval_steps"],
                    )
                curve = adaptation_curve(
                    nets[method], params, tasks, mse_loss, lr, config["n_eval_steps"]
                )
                metrics[f"k{k}"][method] = {
                    "finetune_lr": lr,
                    "steps": summarize_curve(curve.cpu()),
                }
                if method == "pretrained":
                    metrics[f"k{k}"][method]["lr_scores"] = {
                        str(a): b for a, b in scores.items()
                    }
            curves[k][method] = curve.cpu()
    return {"curves": curves, "metrics": metrics}


def save_results(
    run: RunFolder,
    config: dict[str, Any],
    results: dict[str, FitResult],
    metrics: dict[str, Any],
    **facts: Any,
) -> dict[str, Any]:
    """Write the run's ``metrics.json`` (``metrics`` from :func:`evaluate_methods`
    under ``evaluation``), ``history.json``, weights and Table 2's rows, through
    :mod:`mamllib.report`; the status follows :func:`mamllib.paper.run_status` for
    MAML against the paper preset's iterations. Returns the metrics written."""
    target = PRESETS["sinusoid"]["paper"]["n_iterations"]
    status = paper.run_status(
        config["preset"], {"maml": results["maml"].iterations}, {"maml": target}
    )
    k5 = metrics["k5"]
    return report.write_results(
        run,
        status,
        {
            "training": {
                m: {
                    "iterations": r.iterations,
                    "wall_time_s": round(r.wall_time_s, 1),
                    "final_loss": r.history["loss"][-1] if r.history["loss"] else None,
                }
                for m, r in results.items()
            },
            "training_wall_time_s": round(
                sum(r.wall_time_s for r in results.values()), 1
            ),
            "evaluation": metrics,
            **facts,
        },
        history={m: r.history for m, r in results.items()},
        params={m: r.params for m, r in results.items()},
        rows=[
            report.row(
                "Sinusoid regression, K = 5",
                f"{NAMES[m]}: MSE after {step} step{'s' * (step > 1)}",
                value,
                paper.TABLE2_SOURCE,
                k5[m]["steps"][step]["mean"],
                k5[m]["steps"][step]["ci95"],
                status,
                lower_is_better=True,
            )
            for m, by_step in paper.TABLE2.items()
            for step, value in by_step.items()
        ],
    )


def train_and_evaluate(
    config: dict[str, Any],
    run: RunFolder,
    methods: tuple[str, ...] = METHODS,
    time_limit_s: float | None = None,
    evaluate_only: bool = False,
) -> dict[str, Any] | None:
    """Train ``methods`` (resuming), and once all three are trained, evaluate them
    and write the results; returns the metrics, or None while a method is missing."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose among {list(METHODS)}")
    results = {}
    for method in METHODS:
        train = method in methods and not evaluate_only
        if not train and not run.checkpoint(method).exists():
            if evaluate_only:
                raise FileNotFoundError(f"no checkpoint at {run.checkpoint(method)}")
            continue
        # A method this call does not train is read as its checkpoint left it.
        settings = config if train else {**config, **_at_checkpoint(run, method)}
        results[method] = train_method(
            method, settings, run, time_limit_s=time_limit_s if train else None
        )
        r = results[method]
        print(f"{method}: {r.iterations:,} iterations, {r.wall_time_s:.0f} s in all")
    if set(results) != set(METHODS):
        print(f"evaluation needs all of {list(METHODS)}: train the others too")
        return None
    evaluation = evaluate_methods({m: r.params for m, r in results.items()}, config)
    saved = save_results(run, config, results, evaluation["metrics"])
    print(saved["status"], "->", run.path)
    return saved


def _at_checkpoint(run: RunFolder, method: str) -> dict[str, int]:
    """Iteration settings that make a call train nothing past the checkpoint."""
    key = {"maml": "n_iterations", "pretrained": "pretrain_iterations"}.get(
        method, "oracle_iterations"
    )
    return {key: checkpoint_iteration(run.checkpoint(method))}
