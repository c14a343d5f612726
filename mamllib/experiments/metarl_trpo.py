"""Meta-RL's outer step: one TRPO iteration of MAML or a baseline, for
:func:`mamllib.train.fit`, in one process or under torchrun (part of
:mod:`mamllib.experiments.metarl`).

Under torch.distributed each rank samples and processes the trajectories of its share
of the meta-batch's tasks only, the ones a single process samples for them
(:mod:`mamllib.rl.share`). Everything TRPO takes from the meta-batch is a mean over
its tasks: the surrogate loss and its gradient, every KL Hessian-vector product of
conjugate gradient, the surrogate and the KL of each line-search candidate. Each rank
weights its share's mean by its fraction of the tasks and the weighted means are
summed over the ranks (:func:`shared_problem`), so every rank solves the meta-batch's
conjugate gradient and takes the same step, that of a single process. Outside
torch.distributed nothing is reduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mamllib import distributed
from mamllib.experiments.metarl_setup import make_env, sample_task_goals
from mamllib.models import MLP, Params
from mamllib.rl.metarl import (
    META_OBJECTIVES,
    PGData,
    adapted_policies,
    meta_trpo_problem,
)
from mamllib.rl.policy import per_task_mean, policy_mean
from mamllib.rl.rollouts import Trajectories, advantages, sample_trajectories
from mamllib.rl.share import TaskShare
from mamllib.rl.trpo import Closure, direct_problem, trpo_step
from mamllib.train import OuterStep


@dataclass
class GoalBatch:
    """A meta-batch's goals for :func:`~mamllib.train.fit`, or one rank's share of
    them: ``share`` says which tasks of the meta-batch they are (None: all)."""

    goals: torch.Tensor
    share: TaskShare | None = None

    def __len__(self) -> int:
        return self.goals.shape[0]

    def subset(self, index: slice | torch.Tensor) -> GoalBatch:
        """The tasks at ``index``, contiguous ones (as
        :func:`mamllib.distributed.shard` takes them)."""
        rows = torch.arange(len(self))[index].reshape(-1)
        start = int(rows[0]) if rows.numel() else 0
        stop = start + rows.numel()
        if not rows.numel() or not torch.equal(rows, torch.arange(start, stop)):
            raise ValueError(f"a share of the goals is a contiguous range, got {index}")
        offset, total = (
            (0, len(self))
            if self.share is None
            else (self.share.start, self.share.total)
        )
        share = TaskShare(offset + start, offset + stop, total)
        return GoalBatch(self.goals[start:stop], share)


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
            mean = policy_mean(model, params, traj.obs)
            log_std = params["log_std"].expand(n, -1)
    data.old_mean, data.old_log_std = mean.detach(), log_std.detach()
    return data


def shared_problem(
    loss: float,
    gradient: torch.Tensor,
    hvp: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Closure,
    fraction: float,
):
    """TRPO's problem ``(loss, gradient, hvp, evaluate)`` of the whole meta-batch
    from that of this rank's share, ``fraction`` of its tasks: each value weighted by
    the fraction and summed over the ranks (one all-reduce per value, per product and
    per line-search candidate). Outside torch.distributed, the problem as it is."""
    if not distributed.is_distributed():
        return loss, gradient, hvp, evaluate

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_weighted(tensor, fraction)

    def shared_hvp(vector: torch.Tensor) -> torch.Tensor:
        return reduce(hvp(vector))

    def shared_evaluate(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        surrogate, kl = reduce(torch.stack([x.detach() for x in evaluate(params)]))
        return surrogate, kl

    loss = distributed.all_reduce_mean(loss, fraction, gradient.device)
    return loss, reduce(gradient), shared_hvp, shared_evaluate


def meta_iteration(
    method: str,
    model: MLP,
    params: Params,
    config: dict[str, Any],
    generator: torch.Generator,
    goals: torch.Tensor | None = None,
    share: TaskShare | None = None,
) -> tuple[Params, dict[str, float]]:
    """One TRPO iteration of ``method``: sample trajectories for ``goals`` (drawn
    here when not given), update.

    ``share``: ``goals`` are these tasks of the meta-batch, this rank's share under
    torch.distributed; the step is still the whole meta-batch's (module docstring).

    Returns the new parameters and the iteration's statistics (average returns before
    and after the inner step, the KL reached, the line-search step taken).
    """
    if goals is None:
        if share is not None:
            raise ValueError("a share of the meta-batch needs its goals")
        goals = sample_task_goals(config, config["meta_batch_size"], generator)
    fraction = 1.0 if share is None else share.fraction

    def task_mean(value: float) -> float:  # the meta-batch's mean from the share's
        return distributed.all_reduce_mean(value, fraction)

    horizon = config["horizon"]
    env = make_env(
        config, goals, config["n_traj"], method == "oracle", generator, share
    )
    traj = sample_trajectories(model, params, env, horizon, generator, share)
    stats = {"return_pre": task_mean(traj.returns().mean().item())}
    if method == "maml":
        pre = process(traj, config)
        adapted = adapted_policies(model, params, pre, config["inner_lr"])
        traj_post = sample_trajectories(model, adapted, env, horizon, generator, share)
        post = with_old_policy(model, adapted, traj_post, config)
        stats["return_post"] = task_mean(traj_post.returns().mean().item())
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
    loss, gradient, hvp, evaluate = shared_problem(
        loss, gradient, hvp, evaluate, fraction
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

    The batch is a :class:`GoalBatch`, the meta-batch's goals or this rank's share of
    them; the trajectories are sampled here, on policy, from the same task stream
    (``generator``), whose state ``fit`` checkpoints. TRPO keeps no state between
    iterations.
    """

    def __init__(self, method: str, model: MLP, config: dict[str, Any], generator):
        self.method, self.model, self.config = method, model, config
        self.generator = generator
        self.stats = ("return_pre",) + (("return_post",) if method == "maml" else ())
        self.stats += ("kl", "step_fraction")

    def __call__(self, params, batch: GoalBatch, fraction):
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return meta_iteration(
            self.method,
            self.model,
            params,
            self.config,
            self.generator,
            batch.goals,
            batch.share,
        )
