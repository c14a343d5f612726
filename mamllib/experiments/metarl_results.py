"""Meta-RL's evaluation and results: returns after 0, 1, 2, ... adaptation steps on
fixed test goals, the metrics, the reproduction rows (part of
:mod:`mamllib.experiments.metarl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mamllib import paper, report
from mamllib.evaluate import EVAL_SEED, summarize_curve
from mamllib.experiments.metarl_setup import make_env, models, sample_task_goals
from mamllib.experiments.metarl_trpo import process
from mamllib.models import Params
from mamllib.presets import PRESETS
from mamllib.rl.envs import sample_goals
from mamllib.rl.metarl import adapted_policies
from mamllib.rl.rollouts import sample_trajectories
from mamllib.train import FitResult


def load_trained(method: str, checkpoint: Path) -> FitResult:
    """The parameters and history a checkpoint holds, without training further."""
    if not Path(checkpoint).exists():
        raise FileNotFoundError(
            f"no checkpoint at {checkpoint}: train {method} first (without "
            "--evaluate-only)"
        )
    state = torch.load(checkpoint, weights_only=False)
    return FitResult(
        dict(state["params"]),
        state["history"],
        state["iteration"],
        state["wall_time_s"],
        state["iteration"],
    )


def evaluation_goals(
    n_tasks: int, seed: int = EVAL_SEED, config: dict[str, Any] | None = None
) -> torch.Tensor:
    """Fixed test goals: the same for every method and run (navigation unless
    ``config`` names another experiment)."""
    generator = torch.Generator().manual_seed(seed)
    if config is None:
        return sample_goals(n_tasks, generator)
    return sample_task_goals(config, n_tasks, generator)


def adaptation_returns(
    method: str,
    params: Params,
    config: dict[str, Any],
    goals: torch.Tensor | None = None,
    keep_paths: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Average return on each test task after 0..``n_eval_steps`` policy-gradient
    steps (step size alpha, then alpha/2, as the paper), ``n_eval_traj`` trajectories
    per step; the oracle is not adapted.

    Returns:
        ``(returns [n_tasks, n_steps + 1], paths)`` where ``paths[j]`` holds the
        positions ``[keep_paths, n_traj, T + 1, 2]`` of the first tasks after j steps.
    """
    if goals is None:
        goals = evaluation_goals(config["n_eval_tasks"], config=config)
    model = models(config)[method]
    generator = torch.Generator().manual_seed(EVAL_SEED + 1)
    env = make_env(config, goals, config["n_eval_traj"], method == "oracle", generator)
    params = {k: v.detach() for k, v in params.items()}
    columns, paths = [], []
    for step in range(config["n_eval_steps"] + 1):
        traj = sample_trajectories(model, params, env, config["horizon"], generator)
        columns.append(traj.returns().mean(1))
        paths.append(traj.positions[:keep_paths])
        if method == "oracle":  # given the goal, it has nothing to adapt
            columns += [columns[0]] * config["n_eval_steps"]
            paths += [paths[0]] * config["n_eval_steps"]
            break
        if step < config["n_eval_steps"]:
            lr = config["inner_lr"] * (1.0 if step == 0 else 0.5)
            params = adapted_policies(model, params, process(traj, config), lr)
    return torch.stack(columns, dim=1), paths


def evaluate_methods(
    trained: dict[str, Params], config: dict[str, Any], keep_paths: int = 0
) -> dict[str, Any]:
    """:func:`adaptation_returns` for every method; metrics with mean/std/95% CI over
    the test tasks, JSON-ready."""
    curves, paths, metrics = {}, {}, {}
    for method, params in trained.items():
        curves[method], paths[method] = adaptation_returns(
            method, params, config, keep_paths=keep_paths
        )
        metrics[method] = {"steps": summarize_curve(curves[method])}
    return {"curves": curves, "paths": paths, "metrics": metrics}


def save_results(
    run,
    config: dict[str, Any],
    results: dict[str, FitResult],
    evaluation: dict[str, Any],
    evaluation_wall_time_s: float | None = None,
    other_iterations: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``history.json`` and ``params-<method>.pt`` to ``run``.

    The status is :func:`mamllib.paper.run_status` of MAML and the trained baselines
    (pretrained, oracle) against the paper preset's iterations: a method not in
    ``results`` counts with its ``other_iterations`` (a checkpoint of an earlier
    call), else 0, so a run without its baselines is never complete.
    ``reproduction.json`` holds App. C's rows, where the paper has them.
    """
    paper_preset = PRESETS[config["experiment"]]["paper"]
    targets = {
        "maml": paper_preset["n_iterations"],
        "pretrained": paper_preset["pretrain_iterations"],
        "oracle": paper_preset["oracle_iterations"],
    }
    reached = {m: r.iterations for m, r in results.items()}
    others = other_iterations or {}
    status = paper.run_status(
        config["preset"], {m: others.get(m, 0) for m in targets} | reached, targets
    )
    name, paper_returns = paper.APPENDIX_C.get(config["experiment"], (None, None))
    maml = evaluation["metrics"].get("maml", {}).get("steps", [])
    return report.write_results(
        run,
        status,
        {
            "iterations": reached,
            "training_wall_time_s": round(
                sum(r.wall_time_s for r in results.values()), 1
            ),
            "training_wall_time_s_per_method": {
                m: round(r.wall_time_s, 1) for m, r in results.items()
            },
            "s_per_iteration": {
                m: round(r.wall_time_s / max(r.iterations, 1), 2)
                for m, r in results.items()
            },
            "evaluation_wall_time_s": evaluation_wall_time_s,
            "n_eval_tasks": config["n_eval_tasks"],
            "n_eval_traj": config["n_eval_traj"],
            "returns": evaluation["metrics"],
            "paper_appendix_c_maml": paper_returns,
        },
        history={m: r.history for m, r in results.items()},
        params={m: r.params for m, r in results.items()},
        rows=[
            report.row(
                name,
                f"MAML: average return after {s['step']} step{'s' * (s['step'] != 1)}",
                value,
                paper.APPENDIX_C_SOURCE,
                s["mean"],
                s["ci95"],
                status,
            )
            for s, value in zip(maml, paper_returns or [])
        ],
    )
