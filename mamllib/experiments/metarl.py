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
Notebooks 09 and 10 walk through it; ``scripts/train_metarl.py`` runs it headlessly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mamllib import paper, report
from mamllib.evaluate import EVAL_SEED, summarize_curve
from mamllib.models import MLP, Params
from mamllib.presets import PRESETS
from mamllib.rl.envs import Navigation2D, sample_goals
from mamllib.rl.metarl import (
    META_OBJECTIVES,
    PGData,
    adapted_policies,
    meta_trpo_problem,
)
from mamllib.rl.policy import init_policy_params, per_task_mean, policy_model
from mamllib.rl.rollouts import Trajectories, advantages, sample_trajectories
from mamllib.rl.trpo import TRPOStats, direct_problem, trpo_step
from mamllib.tasks import make_generator
from mamllib.train import FitResult, OuterStep, fit

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


def is_locomotion(config: dict[str, Any]) -> bool:
    return config.get("experiment", "navigation") != "navigation"


def _robot_task(config: dict[str, Any]) -> tuple[str, str]:
    """``"half_cheetah-direction"`` -> ``("half_cheetah", "direction")``."""
    robot, task = config["experiment"].split("-")
    return robot, task


def make_env(
    config: dict[str, Any],
    goals: torch.Tensor,
    n_traj: int,
    oracle: bool,
    generator: torch.Generator,
):
    """The experiment's batch of environments for ``goals`` (``generator`` draws the
    locomotion's initial states)."""
    if not is_locomotion(config):
        return Navigation2D(goals, n_traj, config["reward"], oracle=oracle)
    from mamllib.rl.locomotion import Locomotion

    robot, task = _robot_task(config)
    return Locomotion(
        robot,
        task,
        goals,
        n_traj,
        generator,
        oracle=oracle,
        threads=config.get("sim_threads", 1),
    )


def sample_task_goals(
    config: dict[str, Any], n_tasks: int, generator: torch.Generator
) -> torch.Tensor:
    """Goals of ``n_tasks`` tasks of the experiment."""
    if not is_locomotion(config):
        return sample_goals(n_tasks, generator)
    from mamllib.rl import locomotion

    return locomotion.sample_goals(*_robot_task(config), n_tasks, generator)


def env_dims(config: dict[str, Any]) -> tuple[int, int]:
    """(observation, action) sizes without the oracle's goal."""
    if not is_locomotion(config):
        return 2, 2
    from mamllib.rl.locomotion import dims

    return dims(_robot_task(config)[0])


def models(config: dict[str, Any]) -> dict[str, MLP]:
    """Mean networks: obs -> 100 -> 100 -> actions (navigation 2 -> 2, cheetah
    17 -> 6, ant 27 -> 8); the oracle sees the goal too (navigation: 2 more inputs,
    locomotion: 1)."""
    hidden = tuple(config["hidden_sizes"])
    obs_dim, act_dim = env_dims(config)
    goal_dim = 1 if is_locomotion(config) else 2
    return {
        "maml": policy_model(obs_dim, act_dim, hidden),
        "pretrained": policy_model(obs_dim, act_dim, hidden),
        "random": policy_model(obs_dim, act_dim, hidden),
        "oracle": policy_model(obs_dim + goal_dim, act_dim, hidden),
    }


def initial_params(method: str, config: dict[str, Any]) -> Params:
    """The method's starting point, from the run's ``init`` stream."""
    return init_policy_params(
        models(config)[method], make_generator(config["seed"], "init")
    )


def process(traj: Trajectories, config: dict[str, Any]) -> PGData:
    """Trajectories -> policy-gradient data (advantages from the per-task baseline)."""
    return PGData(
        traj.obs,
        traj.actions,
        advantages(traj, config["discount"]),
        traj.mask,
    )


def with_old_policy(model: MLP, params: Params, traj, config) -> PGData:
    """:func:`process` plus the sampling policy's mean and log std, per task."""
    data = process(traj, config)
    n = len(traj)
    with torch.no_grad():
        if params["log_std"].dim() == 2:
            mean = per_task_mean(model, params, traj.obs)
            log_std = params["log_std"]
        else:
            from mamllib.rl.policy import policy_mean

            mean = policy_mean(model, params, traj.obs)
            log_std = params["log_std"].expand(n, -1)
    data.old_mean, data.old_log_std = mean.detach(), log_std.detach()
    return data


def meta_iteration(
    method: str,
    model: MLP,
    params: Params,
    config: dict[str, Any],
    generator: torch.Generator,
    goals: torch.Tensor | None = None,
) -> tuple[Params, dict[str, float]]:
    """One TRPO iteration of ``method``: sample trajectories for ``goals`` (drawn
    here when not given), update.

    Returns the new parameters and the iteration's statistics (average returns before
    and after the inner step, the KL reached, the line-search step taken).
    """
    if goals is None:
        goals = sample_task_goals(config, config["meta_batch_size"], generator)
    env = make_env(config, goals, config["n_traj"], method == "oracle", generator)
    traj = sample_trajectories(model, params, env, config["horizon"], generator)
    stats = {"return_pre": traj.returns().mean().item()}
    if method == "maml":
        pre = process(traj, config)
        adapted = adapted_policies(model, params, pre, config["inner_lr"])
        traj_post = sample_trajectories(
            model, adapted, env, config["horizon"], generator
        )
        post = with_old_policy(model, adapted, traj_post, config)
        stats["return_post"] = traj_post.returns().mean().item()
        lr, first_order = config["inner_lr"], config["first_order"]
    else:
        pre, post, lr, first_order = (
            None,
            with_old_policy(model, params, traj, config),
            0.0,
            True,
        )
    meta_objective = META_OBJECTIVES[config["strategy"]]

    def evaluate(p):
        # Values only: a first-order inner step computes the same numbers cheaper.
        return meta_objective(model, p, pre, post, lr, True)

    if config["strategy"] == "loop":  # readable: plain autograd, third derivatives
        loss, gradient, hvp = direct_problem(
            params, lambda p: meta_objective(model, p, pre, post, lr, first_order)
        )
    else:
        loss, gradient, hvp = meta_trpo_problem(
            model, params, pre, post, lr, first_order
        )
    params, step = trpo_step(
        params,
        loss,
        gradient,
        hvp,
        evaluate,
        max_kl=config["max_kl"],
        cg_iters=config["cg_iters"],
        damping=config["cg_damping"],
    )
    stats.update(kl=step.kl_after, step_fraction=step.step_fraction)
    return params, stats


class TRPOStep(OuterStep):
    """MAML-TRPO's outer step (or plain TRPO for the baselines) for :func:`fit`.

    The batch is the meta-batch's goals; the trajectories are sampled here, on
    policy, from the same task stream (``generator``), whose state ``fit``
    checkpoints. TRPO keeps no state between iterations.
    """

    def __init__(self, method: str, model: MLP, config: dict[str, Any], generator):
        self.method, self.model, self.config = method, model, config
        self.generator = generator
        self.stats = ("return_pre",) + (("return_post",) if method == "maml" else ())
        self.stats += ("kl", "step_fraction")

    def __call__(self, params, goals, fraction):
        if fraction != 1.0:
            raise ValueError(
                "meta-RL trains in one process: TRPO's conjugate gradient is not "
                "shared among torch.distributed ranks; run it without torchrun"
            )
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return meta_iteration(
            self.method, self.model, params, self.config, self.generator, goals
        )


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
        lambda g: sample_task_goals(config, config["meta_batch_size"], g),
        generator,
        n_iterations,
        checkpoint=checkpoint,
        checkpoint_every=config["checkpoint_every"],
        log_every=1,
        fingerprint=fingerprint,
        desc=desc or method,
        time_limit_s=time_limit_s,
    )


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


__all__ = [
    "TRPOStats",
    "adaptation_returns",
    "evaluate_methods",
    "evaluation_goals",
    "meta_iteration",
    "models",
    "train_policy",
]


def save_results(
    run,
    config: dict[str, Any],
    results: dict[str, FitResult],
    evaluation: dict[str, Any],
    evaluation_wall_time_s: float | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``history.json`` and ``params-<method>.pt`` to ``run``.

    The status is :func:`mamllib.paper.run_status` of every method against the
    paper preset's iterations; ``reproduction.json`` holds App. C's rows, where the
    paper has them.
    """
    paper_preset = PRESETS[config["experiment"]]["paper"]
    targets = {
        "maml": paper_preset["n_iterations"],
        "pretrained": paper_preset["pretrain_iterations"],
        "oracle": paper_preset["oracle_iterations"],
    }
    reached = {m: r.iterations for m, r in results.items()}
    status = paper.run_status(config["preset"], reached, targets)
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


def train_and_evaluate(
    config: dict[str, Any],
    run,
    methods: tuple[str, ...] = METHODS,
    time_limit_s: float | None = None,
    evaluate_only: bool = False,
) -> dict[str, Any]:
    """Train each of ``methods`` (resuming; ``time_limit_s`` each), then evaluate
    them and the random initialisation on the fixed test goals and write the results.

    ``evaluate_only`` scores the checkpoints as they are. Returns the metrics.
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
        print(
            f"{method}: {r.iterations} iterations, {r.wall_time_s:.0f} s in all, "
            f"resumed from {r.resumed_from}",
            flush=True,
        )
    t0 = time.perf_counter()
    trained = {m: r.params for m, r in results.items()}
    trained["random"] = initial_params("random", config)
    evaluation = evaluate_methods(trained, config)
    metrics = save_results(
        run, config, results, evaluation, round(time.perf_counter() - t0, 1)
    )
    print(metrics["status"])
    for method, values in metrics["returns"].items():
        steps = " / ".join(
            f"{s['mean']:.2f} +- {s['ci95']:.2f}" for s in values["steps"]
        )
        print(f"{method:>10}: {steps}", flush=True)
    return metrics
