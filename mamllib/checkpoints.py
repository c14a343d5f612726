"""A training run's checkpoint file: read back, refused when made with other settings,
and locked while a process trains into it.

:func:`mamllib.train.fit` writes the checkpoints (atomically, through
:func:`mamllib.runs.save_torch`): the parameters, the outer step's state, the task
generator's state, the iteration and the history.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import torch


def checkpoint_iteration(checkpoint: str | Path) -> int:
    """The iteration a checkpoint reached (to resume a run without training it)."""
    return torch.load(checkpoint, weights_only=False, map_location="cpu")["iteration"]


def load_checkpoint(
    checkpoint: str | Path,
    fingerprint: dict[str, Any],
    n_iterations: int,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a training checkpoint, refusing one made with other settings.

    Tensors land on ``device`` (a checkpoint written on a GPU resumes on a CPU and
    back), except the task-stream generator state, which stays on the CPU.

    Raises:
        ValueError: the file is not a readable checkpoint (the message names it and
            the fix), its fingerprint differs from ``fingerprint`` (the differing
            keys are named), or it is already past ``n_iterations``.
    """
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        state["fingerprint"], state["iteration"], state["params"]
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ValueError(
            f"cannot read the checkpoint {checkpoint} ({type(exc).__name__}: {exc}); "
            "it is damaged or not a mamllib checkpoint: delete it to start afresh, "
            "or use another run folder (seed)"
        ) from exc
    if state["fingerprint"] != fingerprint:
        changed = sorted(
            k
            for k in set(state["fingerprint"]) | set(fingerprint)
            if state["fingerprint"].get(k) != fingerprint.get(k)
        )
        raise ValueError(
            f"checkpoint {checkpoint} was made with different settings ({changed}); "
            "delete it or use another run folder (seed) to start afresh"
        )
    if state["iteration"] > n_iterations:
        raise ValueError(
            f"checkpoint {checkpoint} is at iteration {state['iteration']}, past "
            f"n_iterations={n_iterations}; raise n_iterations or use another run "
            "folder"
        )
    state["generator"] = state["generator"].cpu()
    return state


class RunLock:
    """An exclusive lock on a checkpoint, so that two processes never train into the
    same run: the second is refused with the PID of the first.

    ``flock`` on ``<checkpoint>.lock``: the kernel releases it when the holder ends,
    however it ends, so a killed run leaves no stale lock behind.
    """

    def __init__(self, checkpoint: Path):
        self.path = Path(checkpoint).with_name(Path(checkpoint).name + ".lock")
        self.file = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RuntimeError(
                f"another process (PID {holder}) is training into "
                f"{self.path.with_suffix('')}; wait for it to finish or stop it, or "
                "use another run folder (seed)"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
