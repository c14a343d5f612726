"""The paper's sinusoid baselines (§5.1): pretrained-then-fine-tuned, and the oracle.

* Pretrained: one network trained by plain regression on points from all tasks, then
  fine-tuned on a new task's K points with SGD whose step size is tuned on validation
  tasks ("pretraining on all tasks ... with an automatically tuned step size").
* Oracle: a network that also receives the task's amplitude and phase as inputs, an
  upper bound that needs no adaptation.
* From scratch: a random initialisation fine-tuned on the K points (notebook 02).

Introduced in notebook 03 (learning from many tasks).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from mamllib.evaluate import adaptation_curve
from mamllib.maml import LossFn, task_loss
from mamllib.models import Params, forward
from mamllib.tasks import TaskBatch


def pretrain_objective(model: nn.Module, loss_fn: LossFn):
    """Multi-task regression: the loss of ``params`` on every point of every task.

    No adaptation: the network is asked to fit all tasks at once, so for sinusoids it
    learns their average, E[y|x] = -(2 E[A] / pi) cos x, a small cosine (notebook 03).
    """

    def objective(params: Params, tasks: TaskBatch) -> torch.Tensor:
        x = torch.cat([tasks.x_support, tasks.x_query], dim=1)
        y = torch.cat([tasks.y_support, tasks.y_query], dim=1)
        return task_loss(model, params, x, y, loss_fn)

    return objective


def oracle_inputs(x: torch.Tensor, tasks: TaskBatch) -> torch.Tensor:
    """Add task amplitude and phase to its inputs (``[n, m, 1] -> [n, m, 3]``)."""
    task_info = torch.stack([tasks.amplitude, tasks.phase], dim=-1)  # [n, 2]
    return torch.cat([x, task_info[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)


def oracle_objective(model: nn.Module, loss_fn: LossFn):
    """Regression with the task identity (amplitude, phase) as extra inputs."""

    def objective(params: Params, tasks: TaskBatch) -> torch.Tensor:
        x = torch.cat([tasks.x_support, tasks.x_query], dim=1)
        y = torch.cat([tasks.y_support, tasks.y_query], dim=1)
        return loss_fn(forward(model, params, oracle_inputs(x, tasks)), y)

    return objective


def oracle_losses(
    model: nn.Module, params: Params, tasks: TaskBatch, loss_fn: LossFn
) -> torch.Tensor:
    """Per-task query loss of the oracle (it needs no adaptation): ``[n_tasks]``."""
    with torch.no_grad():
        prediction = forward(model, params, oracle_inputs(tasks.x_query, tasks))
        return vmap(loss_fn)(prediction, tasks.y_query)


def tune_finetune_lr(
    model: nn.Module,
    params: Params,
    val_tasks: TaskBatch,
    loss_fn: LossFn,
    lrs: list[float],
    n_steps: int,
) -> tuple[float, dict[float, float]]:
    """The fine-tuning step size with the lowest mean query loss over steps 1..n_steps.

    Tuned on validation tasks (their own seed), never on evaluation tasks.

    Returns:
        ``(best_lr, {lr: mean loss})``.
    """
    scores = {}
    for lr in lrs:
        curve = adaptation_curve(model, params, val_tasks, loss_fn, lr, n_steps)
        score = curve[:, 1:].mean().item()
        scores[float(lr)] = score if score == score else float("inf")  # NaN -> worst
    best = min(scores, key=scores.get)
    return best, scores
