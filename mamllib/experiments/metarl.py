"""MAML-TRPO on 2D navigation and on locomotion: meta-training, the baselines,
evaluation (top floor).

The side effects live here: progress bar, checkpoints (atomic, with the random stream's
state, saved on Ctrl-C and at a time limit, so a resumed run continues exactly), the
history. Methods (paper §5.3):

* ``maml``: TRPO on the post-update surrogate through one policy-gradient step;
* ``pretrained``: TRPO on all tasks jointly (no inner step), later fine-tuned;
* ``oracle``: TRPO with the goal in the observation; not adapted;
* ``random``: the initial parameters, fine-tuned (needs no training).

The experiment (``config["experiment"]``) picks the environment: ``navigation``
(:class:`~mamllib.rl.envs.Navigation2D`) or ``<robot>-<task>`` such as
``half_cheetah-direction`` (:class:`~mamllib.rl.locomotion.Locomotion`).
Notebooks 09 and 10 walk through it; ``python -m mamllib train`` runs it headlessly,
under torchrun too (each rank samples its share of the meta-batch's tasks; every rank
takes the single process's TRPO step).

The concerns live in their own modules, every public name importable from here:
:mod:`.metarl_setup` (environments, goals, policies, initial parameters),
:mod:`.metarl_trpo` (the TRPO outer step, in one process or under torchrun),
:mod:`.metarl_results` (evaluation, metrics, reproduction rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mamllib import distributed
from mamllib.experiments.metarl_results import (
    adaptation_returns,
    evaluate_methods,
    evaluation_goals,
    load_trained,
    save_results,
)
from mamllib.experiments.metarl_setup import (
    env_dims,
    initial_params,
    is_locomotion,
    make_env,
    models,
    sample_task_goals,
)
from mamllib.experiments.metarl_trpo import (
    GoalBatch,
    TRPOStep,
    meta_iteration,
    process,
    shared_problem,
    with_old_policy,
)
from mamllib.rl.rollouts import sample_trajectories
from mamllib.rl.trpo import TRPOStats
from mamllib.tasks import make_generator
from mamllib.train import FitResult, fit

METHODS = ("maml", "pretrained", "oracle")

# Settings that do not change what training computes (a checkpoint stays valid).
_NOT_TRAINING = {
    "preset",
    "n_iterations",
    "pretrain_iterations",
    "oracle_iterations",
    "checkpoint_every",
    "n_eval_tasks",
    "n_eval_traj",
    "n_eval_steps",
    "device",
    "strategy",
    "sim_threads",
}

__all__ = [
    "METHODS",
    "GoalBatch",
    "TRPOStats",
    "TRPOStep",
    "adaptation_returns",
    "env_dims",
    "evaluate_methods",
    "evaluation_goals",
    "initial_params",
    "is_locomotion",
    "load_trained",
    "make_env",
    "meta_iteration",
    "models",
    "process",
    "sample_task_goals",
    "sample_trajectories",
    "save_results",
    "shared_problem",
    "train_and_evaluate",
    "train_policy",
    "with_old_policy",
]


def train_policy(
    method: str,
    config: dict[str, Any],
    checkpoint: Path | None = None,
    desc: str | None = None,
    time_limit_s: float | None = None,
) -> FitResult:
    """Train ``method`` (``maml``, ``pretrained`` or ``oracle``) per ``config``
    with :func:`mamllib.train.fit`.

    Resumes from ``checkpoint`` if it exists (refusing one made with other settings);
    saves it atomically every ``checkpoint_every`` iterations, at the end, at the time
    limit and on Ctrl-C. The goals and the action noise come from the run's ``tasks``
    stream, whose state is checkpointed, so a resumed run matches an uninterrupted one.
    Under torchrun each rank samples its share of the tasks (:mod:`.metarl_trpo`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_iterations = {
        "maml": config["n_iterations"],
        "pretrained": config["pretrain_iterations"],
        "oracle": config["oracle_iterations"],
    }[method]
    model = models(config)[method]
    generator = make_generator(config["seed"], "tasks")
    fingerprint = {k: v for k, v in config.items() if k not in _NOT_TRAINING}
    fingerprint["method"] = method
    return fit(
        TRPOStep(method, model, config, generator),
        initial_params(method, config),
        lambda g: GoalBatch(sample_task_goals(config, config["meta_batch_size"], g)),
        generator,
        n_iterations,
        checkpoint=checkpoint,
        checkpoint_every=config["checkpoint_every"],
        log_every=1,
        fingerprint=fingerprint,
        desc=desc or method,
        time_limit_s=time_limit_s,
    )


def train_and_evaluate(
    config: dict[str, Any],
    run,
    methods: tuple[str, ...] = METHODS,
    time_limit_s: float | None = None,
    evaluate_only: bool = False,
) -> dict[str, Any] | None:
    """Train each of ``methods`` (resuming; ``time_limit_s`` each), then evaluate
    them and the random initialisation on the fixed test goals and write the results.

    ``evaluate_only`` scores the checkpoints as they are. Returns the metrics. Under
    torchrun every rank trains and rank 0 alone evaluates, writes and reports (the
    others return None).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose among {list(METHODS)}")
    results = {}
    for method in methods:
        if evaluate_only:
            results[method] = load_trained(method, run.checkpoint(method))
        else:
            results[method] = train_policy(
                method, config, run.checkpoint(method), time_limit_s=time_limit_s
            )
        r = results[method]
        if not distributed.is_main():
            continue
        print(
            f"{method}: {r.iterations} iterations, {r.wall_time_s:.0f} s in all, "
            f"resumed from {r.resumed_from}",
            flush=True,
        )
    if not distributed.is_main():
        return None
    t0 = time.perf_counter()
    trained = {m: r.params for m, r in results.items()}
    trained["random"] = initial_params("random", config)
    evaluation = evaluate_methods(trained, config)
    earlier = {  # methods trained by earlier calls count for the status
        m: load_trained(m, run.checkpoint(m)).iterations
        for m in METHODS
        if m not in results and run.checkpoint(m).exists()
    }
    metrics = save_results(
        run, config, results, evaluation, round(time.perf_counter() - t0, 1), earlier
    )
    print(metrics["status"])
    for method, values in metrics["returns"].items():
        steps = " / ".join(
            f"{s['mean']:.2f} +- {s['ci95']:.2f}" for s in values["steps"]
        )
        print(f"{method:>10}: {steps}", flush=True)
    return metrics
