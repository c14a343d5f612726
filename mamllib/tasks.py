"""Task distributions. They hand out support/query tensors and know nothing of MAML.

Introduced in notebook 02 (few-shot regression): sine waves, and the named random
streams of a run (:func:`make_generator`). Few-shot classification (notebooks 07 and
08) samples N-way K-shot episodes from any image set with
:class:`~mamllib.episodes.EpisodeSampler`, importable from here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mamllib.batch import Batch
from mamllib.episodes import Episodes, EpisodeSampler, SplitSizes


@dataclass
class TaskBatch(Batch):
    """A meta-batch of regression tasks, stacked on a leading task axis.

    Shapes: ``x_support``/``y_support`` are ``[n_tasks, k_shot, 1]``,
    ``x_query``/``y_query`` are ``[n_tasks, n_query, 1]``; ``amplitude`` and ``phase``
    are ``[n_tasks]`` (what the oracle sees).
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor


class SinusoidTasks:
    """Sine waves y = A sin(x - phase), as in the paper (§5.1).

    Amplitude A ~ U[0.1, 5.0], phase ~ U[0, pi], inputs x ~ U[-5, 5]
    (cbfinn/maml ``data_generator.py`` uses the same ranges).
    """

    amplitude_range = (0.1, 5.0)
    phase_range = (0.0, math.pi)
    input_range = (-5.0, 5.0)

    def sample(
        self,
        n_tasks: int,
        k_shot: int,
        n_query: int | None = None,
        generator: torch.Generator | None = None,
        support_range: tuple[float, float] | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` tasks with ``k_shot`` support and ``n_query`` query points.

        Args:
            n_tasks: number of tasks (the meta-batch size in training).
            k_shot: K, support points per task.
            n_query: query points per task; defaults to K, as cbfinn/maml draws 2K
                points per task and splits them K/K.
            generator: the task stream's own generator (separate from model init).
            support_range: draw support x from this sub-interval instead (Figure 2's
                "points from half the input range"); query x always covers [-5, 5].
        """
        if n_tasks < 1 or k_shot < 1:
            raise ValueError(
                f"n_tasks and k_shot must be >= 1, got {n_tasks}, {k_shot}"
            )
        n_query = k_shot if n_query is None else n_query
        if n_query < 1:
            raise ValueError(f"n_query must be >= 1, got {n_query}")
        g = generator

        def uniform(shape, low, high):
            return torch.rand(shape, generator=g) * (high - low) + low

        amplitude = uniform((n_tasks,), *self.amplitude_range)
        phase = uniform((n_tasks,), *self.phase_range)
        x_support = uniform((n_tasks, k_shot, 1), *(support_range or self.input_range))
        x_query = uniform((n_tasks, n_query, 1), *self.input_range)
        return TaskBatch(
            x_support=x_support,
            y_support=self.target(x_support, amplitude, phase),
            x_query=x_query,
            y_query=self.target(x_query, amplitude, phase),
            amplitude=amplitude,
            phase=phase,
        )

    @staticmethod
    def target(
        x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor
    ) -> torch.Tensor:
        """y = A sin(x - phase), one (A, phase) per task broadcast over its points."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


def make_generator(seed: int, stream: str = "tasks") -> torch.Generator:
    """A CPU generator for one named random stream of a run.

    Streams (``"tasks"``, ``"init"``, ``"eval"`` ...) get different seeds derived from
    the one ``seed``, so model initialisation never shifts the task sequence.
    """
    offsets = {"tasks": 0, "init": 1, "eval": 2, "val": 3}
    if stream not in offsets:
        raise ValueError(f"unknown stream {stream!r}; choose one of {sorted(offsets)}")
    g = torch.Generator()
    g.manual_seed(int(seed) * 1000 + offsets[stream])
    return g


__all__ = [
    "Episodes",
    "EpisodeSampler",
    "SinusoidTasks",
    "SplitSizes",
    "TaskBatch",
    "make_generator",
]
