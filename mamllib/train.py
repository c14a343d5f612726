"""Training loops: the side effects live here (progress bar, checkpoints, NaN guard).

:func:`fit` minimises any ``objective(params, batch)`` with Adam over batches drawn
from a seeded generator. MAML, the pretrained baseline and the oracle are all fits of
different objectives; :func:`meta_objective` builds MAML's.

Checkpoints hold the parameters, the Adam state, the task generator's state, the
iteration and the history, so a resumed run continues exactly where it stopped and
reaches the same numbers as an uninterrupted one (``tests/test_train.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mamllib.maml import LossFn, meta_loss_of
from mamllib.models import Params, detach_params
from mamllib.runs import save_torch

Objective = Callable[[Params, Any], torch.Tensor]


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


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    params: Params
    history: dict[str, list[float]] = field(default_factory=dict)
    iterations: int = 0
    wall_time_s: float = 0.0
    resumed_from: int | None = None
    # What a caller's checkpoint selection found (e.g. fewshot.train_maml's
    # validation record); None when there was none.
    selection: dict | None = None


def meta_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
    path: str = "vmap",
) -> Objective:
    """MAML's meta-objective as ``objective(params, tasks)`` for :func:`fit`."""
    meta_loss = meta_loss_of(path)

    def objective(params: Params, tasks) -> torch.Tensor:
        return meta_loss(
            model, params, tasks, loss_fn, inner_lr, n_inner_steps, first_order
        )

    return objective


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
        ValueError: the checkpoint's fingerprint differs from ``fingerprint`` (the
            differing keys are named), or it is already past ``n_iterations``.
    """
    state = torch.load(checkpoint, map_location=device, weights_only=False)
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


def fit(
    objective: Objective,
    params: Params,
    sample_batch: Callable[[torch.Generator], Any],
    generator: torch.Generator,
    n_iterations: int,
    outer_lr: float,
    checkpoint: Path | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 100,
    fingerprint: dict | None = None,
    desc: str = "training",
    clip_grad: float | None = None,
    time_limit_s: float | None = None,
    on_checkpoint: Callable[[int, Params], None] | None = None,
) -> FitResult:
    """Minimise ``objective`` with Adam(``outer_lr``) for ``n_iterations`` batches.

    Args:
        objective: ``objective(params, batch) -> scalar loss``.
        params: initial parameters (copied; the caller's dict is not modified).
        sample_batch: ``sample_batch(generator) -> batch``.
        generator: the batch stream; its state is checkpointed.
        checkpoint: file to resume from and save to (atomically); ``None`` for none.
        checkpoint_every: iterations between checkpoints (also saved at the end and on
            Ctrl-C, so nothing is lost).
        log_every: iterations averaged into one history point.
        fingerprint: settings that must match to resume (e.g. the config); a
            checkpoint made with other settings is refused, never silently mixed.
        clip_grad: clip each gradient element to [-clip_grad, clip_grad] if given.
        time_limit_s: stop (with a checkpoint) after this many seconds of this call;
            the result's ``iterations`` says how far it got, and calling again with
            the same checkpoint continues.
        on_checkpoint: ``on_checkpoint(iteration, params)`` every
            ``checkpoint_every`` iterations, before the checkpoint is written (e.g.
            to score the parameters on validation tasks); it must not modify them.

    Raises:
        FloatingPointError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    params = detach_params(params)
    optimizer = torch.optim.Adam(params.values(), lr=outer_lr)
    history: dict[str, list[float]] = {"iteration": [], "loss": []}
    start, resumed_from, wall_before = 0, None, 0.0
    window: list[float] = []  # losses of the current, unfinished log window
    fingerprint = fingerprint or {}

    if checkpoint is not None and Path(checkpoint).exists():
        device = next(iter(params.values())).device
        state = load_checkpoint(checkpoint, fingerprint, n_iterations, device)
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, start, window = state["history"], state["iteration"], state["window"]
        wall_before = state.get("wall_time_s", 0.0)
        resumed_from = start

    t0 = time.perf_counter()

    def save(iteration: int, window: list[float]) -> None:
        if checkpoint is None:
            return
        save_torch(
            checkpoint,
            {
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "iteration": iteration,
                "window": list(window),
                "fingerprint": fingerprint,
                "wall_time_s": wall_before + time.perf_counter() - t0,
            },
        )

    bar = tqdm(
        total=n_iterations,
        initial=start,
        desc=desc,
        disable=not progress_enabled(),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    last_saved = completed = start
    try:
        for iteration in range(start, n_iterations):
            generator_before = generator.get_state()
            batch = sample_batch(generator)
            loss = objective(params, batch)
            if not torch.isfinite(loss):
                where = (
                    f"the last good checkpoint ({checkpoint}, iteration {last_saved}) "
                    "is kept"
                    if checkpoint is not None
                    else "no checkpoint was kept"
                )
                raise FloatingPointError(
                    f"{desc}: loss is {loss.item()} at iteration {iteration}; {where}. "
                    "Lower outer_lr or inner_lr, or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                for p in params.values():
                    if p.grad is not None:
                        p.grad.clamp_(-clip_grad, clip_grad)
            optimizer.step()
            window.append(loss.item())
            completed = iteration + 1
            if len(window) == log_every:
                history["iteration"].append(completed)
                history["loss"].append(sum(window) / len(window))
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
                window = []
            bar.update(1)
            if completed % checkpoint_every == 0:
                if on_checkpoint is not None:
                    on_checkpoint(completed, params)
                save(completed, window)
                last_saved = completed
                log_checkpoint(
                    desc,
                    completed,
                    n_iterations,
                    start,
                    time.perf_counter() - t0,
                    loss=history["loss"][-1] if history["loss"] else loss.item(),
                )
            if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                break
    except KeyboardInterrupt:
        # Nothing lost on Ctrl-C: save the last completed iteration. If the interrupt
        # came before this iteration's update, rewind the batch stream to match.
        if completed != last_saved:
            if completed == iteration:
                generator.set_state(generator_before)
            save(completed, window)
        raise
    finally:
        bar.close()
    if last_saved != completed:
        save(completed, window)
    wall = wall_before + time.perf_counter() - t0
    return FitResult(
        detach_params(params, requires_grad=False),
        history,
        completed,
        wall,
        resumed_from,
    )
