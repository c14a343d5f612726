"""The container every meta-batch of tasks shares (bottom floor: imports only torch).

Both task families hand out one: :class:`mamllib.tasks.TaskBatch` (sinusoids) and
:class:`mamllib.tasks.Episodes` (images).
"""

from __future__ import annotations

import torch


class Batch:
    """What every meta-batch of tasks shares: a task axis first, on every tensor.

    Subclasses are dataclasses of tensors (support/query sets and whatever describes
    the tasks); the training code uses only ``x_support``, ``y_support``,
    ``x_query``, ``y_query`` and ``len()``.
    """

    def __len__(self) -> int:
        return self.x_support.shape[0]

    def task(self, i: int):
        """Task ``i`` alone, keeping a task axis of length 1."""
        return self.subset(slice(i, i + 1))

    def subset(self, index: slice | torch.Tensor):
        """The tasks at ``index`` (a slice or a tensor of task indices)."""
        return type(self)(**{k: v[index] for k, v in vars(self).items()})

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None):
        """The same tasks on ``device``; ``dtype`` applies to floating tensors only."""
        return type(self)(
            **{
                k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                for k, v in vars(self).items()
            }
        )


def split_episodes(
    x: torch.Tensor, k_shot: int, n_query: int
) -> dict[str, torch.Tensor]:
    """Support and query sets of N-way episodes from their images, class by class.

    Args:
        x: ``[T, N, K + Q, C, H, W]``: for each task and class (label = position on
            axis 1), K support images then Q query images.

    Returns:
        ``x_support`` ``[T, N * K, C, H, W]`` and ``y_support`` ``[T, N * K]``
        (class-major: K examples of label 0, then label 1, ...), ``x_query`` and
        ``y_query`` likewise with Q per class.
    """
    n_tasks, n_way = x.shape[:2]
    labels = torch.arange(n_way)

    def flat(part: torch.Tensor) -> torch.Tensor:
        return part.reshape(n_tasks, -1, *x.shape[3:])

    return {
        "x_support": flat(x[:, :, :k_shot]),
        "y_support": labels.repeat_interleave(k_shot).repeat(n_tasks, 1),
        "x_query": flat(x[:, :, k_shot : k_shot + n_query]),
        "y_query": labels.repeat_interleave(n_query).repeat(n_tasks, 1),
    }
