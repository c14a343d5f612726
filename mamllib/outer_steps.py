"""What one iteration of :func:`mamllib.train.fit` computes: an :class:`OuterStep`.

:class:`AdamStep` minimises an ``objective(params, batch)`` (MAML, the pretrained
baseline and the oracle are fits of different objectives; :func:`meta_objective`
builds MAML's); meta-RL plugs in its TRPO step (:mod:`mamllib.experiments.metarl`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mamllib import distributed
from mamllib.maml import LossFn, meta_loss_of
from mamllib.models import Params

Objective = Callable[[Params, Any], torch.Tensor]


def meta_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
    strategy: str = "vmap",
) -> Objective:
    """MAML's meta-objective as ``objective(params, tasks)`` for
    :func:`mamllib.train.fit`."""
    meta_loss = meta_loss_of(strategy)

    def objective(params: Params, tasks) -> torch.Tensor:
        return meta_loss(
            model, params, tasks, loss_fn, inner_lr, n_inner_steps, first_order
        )

    return objective


class OuterStep:
    """One outer update: ``step(params, batch, fraction) -> (params, stats)``.

    ``stats`` names the statistics every call returns (the history's columns).

    ``batch`` is this process's share of the meta-batch and ``fraction`` its share
    of the tasks (1 in a single process; see :mod:`mamllib.distributed`). ``stats``
    are floats for the history, the same on every rank; a ``"loss"`` among them is
    watched by the NaN and divergence guards. ``state_dict``/``load_state_dict``
    carry what must survive a resume (e.g. Adam's moments).
    """

    stats: tuple[str, ...] = ()

    def __call__(
        self, params: Params, batch: Any, fraction: float
    ) -> tuple[Params, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AdamStep(OuterStep):
    """Adam on ``objective(params, batch)``, in place (Algorithm 1, line 8;
    Algorithm 2, line 10).

    Under torch.distributed the gradients of the ranks' shares are all-reduced
    before the step, so every rank takes the step of the whole meta-batch.

    Args:
        clip_grad: clip each gradient element to ``[-clip_grad, clip_grad]``
            (cbfinn/maml on MiniImageNet), after the all-reduce.
    """

    stats = ("loss",)

    def __init__(
        self,
        objective: Objective,
        params: Params,
        outer_lr: float,
        clip_grad: float | None = None,
    ):
        self.objective, self.clip_grad = objective, clip_grad
        # foreach: one kernel per operation for all tensors, where the default on a
        # CPU loops over them (the same numbers, bit for bit).
        self.optimizer = torch.optim.Adam(params.values(), lr=outer_lr, foreach=True)

    def __call__(self, params, batch, fraction):
        loss = self.objective(params, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(params, fraction)
        value = distributed.all_reduce_mean(loss.item(), fraction, loss.device)
        if math.isfinite(value):  # a NaN is reported by fit before any step
            if self.clip_grad is not None:
                for p in params.values():
                    if p.grad is not None:
                        p.grad.clamp_(-self.clip_grad, self.clip_grad)
            self.optimizer.step()
        return params, {"loss": value}

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)
