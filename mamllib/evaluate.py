"""Evaluation: adaptation curves on fixed evaluation tasks, mean and 95% CI.

Every method meets the same evaluation tasks: they come from a fixed evaluation seed
(:data:`EVAL_SEED`), independent of the run's seed.

Introduced in notebook 02 (few-shot regression); used by every later chapter.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import vmap

from mamllib.maml import LossFn, inner_update
from mamllib.models import Params, detach_params, forward
from mamllib.tasks import SinusoidTasks, TaskBatch

EVAL_SEED = 20170309  # fixed: the same evaluation tasks for every method and run
VAL_SEED = 20170310  # tasks for tuning (e.g. the fine-tuning step size), never test


def evaluation_tasks(
    k_shot: int, n_tasks: int = 600, n_query: int = 100, seed: int = EVAL_SEED
) -> TaskBatch:
    """Fixed sinusoid evaluation tasks for ``k_shot`` (600 as in cbfinn/maml's test).

    The query set is ``n_query`` points over the whole input range. cbfinn/maml scores
    on K query points per task; a larger query set estimates the same expected MSE with
    less noise, so the confidence interval reflects task variation, not point sampling.
    """
    g = torch.Generator()
    g.manual_seed(seed * 100 + k_shot)
    return SinusoidTasks().sample(n_tasks, k_shot, n_query, generator=g)


def adaptation_curve(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    inner_lr: float,
    n_steps: int,
    metric_fn: LossFn | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Query loss (or ``metric_fn``) after 0..``n_steps`` SGD steps on each task.

    Each step reuses the same K support points, as in the paper's evaluation (§5.1).
    Tasks are batched with vmap; nothing here needs second derivatives.

    Args:
        metric_fn: ``metric_fn(prediction, y_query)`` to report instead of the loss,
            e.g. :func:`mamllib.maml.accuracy`; adaptation always follows ``loss_fn``.
        chunk_size: tasks per vmap call (bounds memory for image tasks); all at once
            if None.

    Returns:
        ``[n_tasks, n_steps + 1]``; column j is after j steps.
    """
    params = detach_params(params, requires_grad=False)
    metric_fn = metric_fn or loss_fn

    def one_task(xs, ys, xq, yq):
        adapted_params = params
        values = [metric_fn(forward(model, adapted_params, xq), yq)]
        for _ in range(n_steps):
            adapted_params = inner_update(
                model, adapted_params, xs, ys, loss_fn, inner_lr, first_order=True
            )
            values.append(metric_fn(forward(model, adapted_params, xq), yq))
        return torch.stack(values)

    n = len(tasks)
    size = chunk_size or n
    return torch.cat(
        [
            vmap(one_task)(
                tasks.x_support[i : i + size],
                tasks.y_support[i : i + size],
                tasks.x_query[i : i + size],
                tasks.y_query[i : i + size],
            ).detach()
            for i in range(0, n, size)
        ]
    )


def mean_ci(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and 95% CI half-width (1.96 sigma / sqrt(n)).

    cbfinn/maml reports the same interval over its 600 test tasks.
    """
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"need at least 2 values for a confidence interval, got {n}")
    std = values.std(unbiased=True).item()
    return {
        "mean": values.mean().item(),
        "std": std,
        "ci95": 1.96 * std / math.sqrt(n),
        "n": n,
    }


def summarize_curve(curve: torch.Tensor) -> list[dict[str, float]]:
    """:func:`mean_ci` of each column of an adaptation curve (one entry per step)."""
    return [{"step": j, **mean_ci(curve[:, j])} for j in range(curve.shape[1])]
