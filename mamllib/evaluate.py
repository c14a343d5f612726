"""Evaluation: adaptation curves on fixed evaluation tasks, mean and 95% CI (normal
theory, or a bootstrap interval).

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


def bootstrap_ci(
    values: torch.Tensor,
    statistic: str = "mean",
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """A percentile bootstrap interval for the mean or median of ``values``.

    Resample the ``n`` values with replacement ``n_resamples`` times, take the
    statistic of each resample, and report the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of those. Unlike :func:`mean_ci` it assumes no normal
    distribution of the mean, so one huge value (a task whose adaptation diverged)
    shows as a wide, lopsided interval instead of a symmetric one that can dip below
    zero. The bounds are order statistics of the resampled values (the lower bound
    rounded down, the upper up), never interpolated: an infinite value (a loss that
    overflowed) stays usable.

    Args:
        statistic: ``"mean"``, or ``"median"`` (the middle value; the mean of the two
            middle values for an even ``n``).
        seed: the resampling's own generator, so the interval is reproducible.

    Returns:
        ``{"estimate", "low", "high", "n", "n_resamples", "level"}``; ``estimate`` is
        the statistic of ``values`` themselves.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"need at least 2 values to resample, got {n}")
    if values.isnan().any():
        raise ValueError("values hold NaN: write a value that overflowed as inf")
    ordered = values.sort().values
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per pass: bounded memory
    stats = []  # the statistic of each resample
    for start in range(0, n_resamples, chunk):
        size = (min(chunk, n_resamples - start), n)
        draws = torch.randint(n, size, generator=generator)
        if statistic == "mean":
            stats.append(ordered[draws].mean(-1))
        else:
            counts = torch.zeros(size, dtype=torch.float64)
            counts.scatter_add_(1, draws, torch.ones(size, dtype=torch.float64))
            stats.append(_median(ordered, counts))
    stats = torch.cat(stats)
    tail = (1 - level) / 2
    return {
        "estimate": (
            values.mean()
            if statistic == "mean"
            else _median(ordered, torch.ones(1, n, dtype=torch.float64))
        ).item(),
        "low": torch.quantile(stats, tail, interpolation="lower").item(),
        "high": torch.quantile(stats, 1 - tail, interpolation="higher").item(),
        "n": n,
        "n_resamples": n_resamples,
        "level": level,
    }


def _median(ordered: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The median of each resample given as ``counts[r, i]``, how often resample ``r``
    drew ``ordered[i]`` (the values, sorted): the mean of its order statistics
    ``(n - 1) // 2`` and ``n // 2`` (0-based), found where the running count first
    passes them. No resample is sorted, and an inf stays inf."""
    n = ordered.numel()
    running = counts.cumsum(-1)
    middle = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1], dtype=running.dtype)
    at = torch.searchsorted(running, middle.repeat(len(running), 1))
    return ordered[at].mean(-1)
