"""The container every meta-batch of tasks shares (bottom floor: imports only torch).

Both task families hand out one: :class:`mamllib.tasks.TaskBatch` (sinusoids) and
:class:`mamllib.omniglot.Episodes` (images).
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
        return type(self)(**{k: v[i : i + 1] for k, v in vars(self).items()})

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None):
        """The same tasks on ``device``; ``dtype`` applies to floating tensors only."""
        return type(self)(
            **{
                k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                for k, v in vars(self).items()
            }
        )
