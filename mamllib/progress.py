"""What a training run shows while it runs: the progress bar's switch, checkpoint lines.

``MAMLLIB_PROGRESS`` and ``CI`` decide; :func:`mamllib.train.fit` draws the bar and
calls :func:`log_checkpoint` at every checkpoint.
"""

from __future__ import annotations

import os
import time


def progress_enabled() -> bool:
    """Progress bars are on unless ``CI`` is set or ``MAMLLIB_PROGRESS`` is ``0`` (or
    ``lines``: see :func:`progress_lines`)."""
    if os.environ.get("MAMLLIB_PROGRESS") is not None:
        off = ("0", "false", "False", "", "lines")
        return os.environ["MAMLLIB_PROGRESS"] not in off
    return os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def progress_lines() -> bool:
    """``MAMLLIB_PROGRESS=lines``: no bar, one plain line per checkpoint instead, for
    the log file of a headless run (``nohup ... > train.log``)."""
    return os.environ.get("MAMLLIB_PROGRESS") == "lines"


def log_checkpoint(
    desc: str, completed: int, n_iterations: int, start: int, elapsed_s: float, **stats
) -> None:
    """With ``MAMLLIB_PROGRESS=lines``, print one line at a checkpoint: where the run
    is, its speed in this call and the time left at that speed, e.g.
    ``omniglot-5way-1shot: iteration 36000/60000, loss 0.0123, 0.46 s/it, about 3.1 h
    left (11:07:35)``. Otherwise nothing."""
    if not progress_lines():
        return
    done = completed - start
    rate = elapsed_s / done if done else float("nan")
    left_s = rate * (n_iterations - completed)
    left = f"{left_s / 3600:.1f} h" if left_s >= 3600 else f"{left_s / 60:.0f} min"
    shown = "".join(f", {k} {v:.4g}" for k, v in stats.items())
    print(
        f"{desc}: iteration {completed}/{n_iterations}{shown}, {rate:.3g} s/it, "
        f"about {left} left ({time.strftime('%H:%M:%S')})",
        flush=True,
    )
