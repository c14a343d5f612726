"""One rank's share of a meta-batch's tasks, and random draws that do not depend on it.

Under torch.distributed every rank draws the same meta-batch and keeps a contiguous
share of its tasks (:func:`mamllib.distributed.shard`). The trajectories must then be
the ones a single process samples for those tasks, whichever rank runs them. The
action noise and the initial states are drawn for the whole meta-batch at once from
one stream, task after task, so a rank draws the whole meta-batch's numbers and keeps
its share's rows (:func:`randn_tasks`): each task gets a single process's numbers, and
every rank's stream advances as a single process's does, so the ranks stay in step.
Drawing the other ranks' noise is cheap beside simulating their episodes.

Only torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TaskShare:
    """Tasks ``start:stop`` of a meta-batch of ``total`` tasks."""

    start: int
    stop: int
    total: int

    def __post_init__(self):
        if not 0 <= self.start < self.stop <= self.total:
            raise ValueError(
                f"a share needs 0 <= start < stop <= total, got {self.start}:"
                f"{self.stop} of {self.total}"
            )

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def fraction(self) -> float:
        """The share's fraction of the tasks: its weight in a mean over tasks."""
        return len(self) / self.total


def randn_tasks(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    share: TaskShare | None = None,
    rows_per_task: int = 1,
) -> torch.Tensor:
    """``torch.randn(shape)`` for a meta-batch's tasks, ``rows_per_task`` rows of
    ``shape[0]`` per task, task after task.

    With a ``share``, ``shape`` describes the share's tasks; the rows of all
    ``share.total`` tasks are drawn and the share's kept, the same numbers a single
    process draws for them. Without one, this is ``torch.randn(shape)``.
    """
    if share is None:
        return torch.randn(shape, generator=generator, dtype=dtype)
    if shape[0] != len(share) * rows_per_task:
        raise ValueError(
            f"{shape[0]} rows do not fit a share of {len(share)} tasks with "
            f"{rows_per_task} rows each"
        )
    full = torch.randn(
        (share.total * rows_per_task, *shape[1:]), generator=generator, dtype=dtype
    )
    return full[share.start * rows_per_task : share.stop * rows_per_task]
