"""The training loop of every experiment: :func:`fit`.

The side effects live here: progress bar, checkpoints, resume, time limit, the NaN
and divergence guards, Ctrl-C and SIGTERM, a lock on the run, torch.distributed. What
one iteration computes is an :class:`~mamllib.outer_steps.OuterStep`
(:mod:`mamllib.outer_steps`: Adam on an objective, MAML's meta-objective; meta-RL
plugs in its TRPO step); reading and locking a checkpoint is
:mod:`mamllib.checkpoints`, the progress shown is :mod:`mamllib.progress`. The names
of theirs that the experiments use are importable from here too.

Checkpoints hold the parameters, the outer step's state (Adam's moments), the task
generator's state, the iteration and the history, so a resumed run continues exactly
where it stopped and reaches the same numbers as an uninterrupted one
(``tests/test_train.py``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mamllib import distributed
from mamllib.checkpoints import RunLock, checkpoint_iteration, load_checkpoint
from mamllib.fast.allocator import keep_freed_memory
from mamllib.models import Params, detach_params
from mamllib.outer_steps import AdamStep, Objective, OuterStep, meta_objective
from mamllib.progress import log_checkpoint, progress_enabled
from mamllib.runs import save_torch

__all__ = [
    "AdamStep",
    "FitResult",
    "Objective",
    "OuterStep",
    "checkpoint_iteration",
    "fit",
    "meta_objective",
]


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


class _Signals:
    """While training in the main thread: SIGTERM (``kill``, schedulers) and a
    SIGINT that the shell ignores (a background job started by a script) both
    raise ``KeyboardInterrupt``, so :func:`fit` saves before the process ends."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.getsignal(sig)
            if sig == signal.SIGTERM or self.saved[sig] == signal.SIG_IGN:
                signal.signal(sig, signal.default_int_handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _guard(stats, params, iteration, reference, divergence_factor, stop) -> None:
    """Raise (through ``stop``) on a NaN/inf loss or parameter, or a diverged loss."""
    loss = stats.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise stop(
            iteration,
            f"the loss is {loss}",
            "Lower outer_lr or inner_lr, or check the data.",
        )
    if not all(torch.isfinite(v).all() for v in params.values()):
        raise stop(
            iteration,
            "the parameters became NaN/inf",
            "Lower the step sizes, or check the data.",
        )
    if None not in (loss, reference, divergence_factor):
        if loss > divergence_factor * max(reference, 1e-8):
            raise stop(
                iteration,
                f"the loss diverged to {loss:.4g} (the run began at {reference:.4g})",
                "Lower inner_lr or outer_lr.",
            )


def _mean_stats(window: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for stats in window for k in stats)
    return {
        k: sum(s[k] for s in window if k in s) / sum(k in s for s in window)
        for k in keys
    }


def fit(
    step: OuterStep | Objective,
    params: Params,
    sample_batch: Callable[[torch.Generator], Any],
    generator: torch.Generator,
    n_iterations: int,
    outer_lr: float | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 100,
    fingerprint: dict | None = None,
    desc: str = "training",
    clip_grad: float | None = None,
    time_limit_s: float | None = None,
    on_checkpoint: Callable[[int, Params], None] | None = None,
    divergence_factor: float | None = 1e4,
) -> FitResult:
    """THE training loop: ``n_iterations`` outer steps on batches from ``generator``.

    Args:
        step: an :class:`OuterStep`, or an ``objective(params, batch) -> scalar``
            to minimise with :class:`AdamStep` (``outer_lr``, ``clip_grad``).
        params: initial parameters (copied; the caller's dict is not modified).
        sample_batch: ``sample_batch(generator) -> batch``: the whole meta-batch
            (under torch.distributed each rank keeps its share).
        generator: the batch stream; its state is checkpointed.
        checkpoint: file to resume from and save to (atomically, by rank 0);
            ``None`` for none. It is locked while training (:class:`RunLock`).
        checkpoint_every: iterations between checkpoints (also saved at the end, at
            the time limit, on Ctrl-C and SIGTERM, so nothing is lost).
        log_every: iterations averaged into one history point.
        fingerprint: settings that must match to resume (e.g. the config); a
            checkpoint made with other settings is refused, never silently mixed.
        time_limit_s: stop (with a checkpoint) after this many seconds of this call;
            the result's ``iterations`` says how far it got, and calling again with
            the same checkpoint continues.
        on_checkpoint: ``on_checkpoint(iteration, params)`` every
            ``checkpoint_every`` iterations, after the checkpoint is written (e.g.
            to score the parameters on validation tasks; it must not modify them),
            and again for the checkpoint's iteration when a run resumes, so that an
            exception in it loses nothing.
        divergence_factor: stop when the loss exceeds this many times the run's
            first loss (finite but absurd, e.g. a far too large ``inner_lr``);
            ``None`` to never stop on it.

    Raises:
        FloatingPointError: the loss or the parameters became NaN/inf, or the loss
            diverged; the message says which checkpoint, if any, is kept.
    """
    params = detach_params(params)
    if not isinstance(step, OuterStep):
        if outer_lr is None:
            raise ValueError("fit needs outer_lr to minimise an objective with Adam")
        step = AdamStep(step, params, outer_lr, clip_grad)
    keep_freed_memory()  # big activations reused, not re-faulted (fast/allocator.py)
    main = distributed.is_main()
    history: dict[str, list[float]] = {"iteration": [], **{k: [] for k in step.stats}}
    start, resumed_from, wall_before, reference = 0, None, 0.0, None
    window: list[dict[str, float]] = []  # stats of the current, unfinished window
    fingerprint = fingerprint or {}
    device = next(iter(params.values())).device

    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, fingerprint, n_iterations, device)
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v)
        # "optimizer": the key of checkpoints written before OuterStep existed.
        step.load_state_dict(state.get("outer_step", state.get("optimizer", {})))
        generator.set_state(state["generator"])
        history, start = state["history"], state["iteration"]
        window = [
            w if isinstance(w, dict) else {"loss": w} for w in state.get("window", [])
        ]
        wall_before = state.get("wall_time_s", 0.0)
        reference = state.get("reference_loss")
        resumed_from = start

    t0 = time.perf_counter()

    saved_wall = [wall_before]  # the training time the last checkpoint recorded

    def save(iteration: int, window: list[dict[str, float]]) -> None:
        saved_wall[0] = wall_before + time.perf_counter() - t0
        if checkpoint is None or not main:
            return
        save_torch(
            checkpoint,
            {
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "outer_step": step.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "iteration": iteration,
                "window": list(window),
                "fingerprint": fingerprint,
                "wall_time_s": saved_wall[0],
                "reference_loss": reference,
            },
        )

    def stop(iteration: int, what: str, fix: str) -> FloatingPointError:
        if last_saved > 0 and checkpoint is not None:
            kept = f"the last checkpoint ({checkpoint}, iteration {last_saved}) is kept"
        elif checkpoint is not None:
            kept = "no checkpoint was written yet"
        else:
            kept = "no checkpoint was asked for"
        return FloatingPointError(
            f"{desc}: {what} at iteration {iteration}; {kept}. {fix}"
        )

    bar = tqdm(
        total=n_iterations,
        initial=start,
        desc=desc,
        disable=not (progress_enabled() and main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    last_saved = completed = iteration = start
    if on_checkpoint is not None and start > 0 and start % checkpoint_every == 0:
        on_checkpoint(start, params)
    lock = RunLock(checkpoint) if checkpoint is not None and main else None
    with _Signals(), lock or contextlib.nullcontext():
        try:
            for iteration in range(start, n_iterations):
                generator_before = generator.get_state()
                batch, fraction = distributed.shard(sample_batch(generator))
                params, stats = step(params, batch, fraction)
                _guard(stats, params, iteration, reference, divergence_factor, stop)
                if reference is None and "loss" in stats:
                    reference = abs(stats["loss"])
                window.append(stats)
                completed = iteration + 1
                if len(window) == log_every:
                    history["iteration"].append(completed)
                    for k, v in _mean_stats(window).items():
                        history.setdefault(k, []).append(v)
                    bar.set_postfix({k: f"{history[k][-1]:.4g}" for k in stats})
                    window = []
                bar.update(1)
                if completed % checkpoint_every == 0:
                    save(completed, window)
                    last_saved = completed
                    if on_checkpoint is not None:
                        on_checkpoint(completed, params)
                    log_checkpoint(
                        desc,
                        completed,
                        n_iterations,
                        start,
                        time.perf_counter() - t0,
                        **{
                            k: history[k][-1] if history.get(k) else v
                            for k, v in stats.items()
                        },
                    )
                if time_limit_s is not None and distributed.any_rank(
                    time.perf_counter() - t0 > time_limit_s, device
                ):
                    break
            if last_saved != completed:
                save(completed, window)
                last_saved = completed
        except KeyboardInterrupt:
            # Nothing lost on Ctrl-C or SIGTERM: save the last completed iteration. If
            # the interrupt came before this iteration's update, rewind the stream.
            if completed != last_saved:
                if completed == iteration:
                    generator.set_state(generator_before)
                save(completed, window)
            raise
        finally:
            bar.close()
    # The time the final checkpoint holds, so that a resumed call that trains
    # nothing reports the same; a call that trained nothing adds none.
    wall = saved_wall[0]
    return FitResult(
        detach_params(params, requires_grad=False),
        history,
        completed,
        wall,
        resumed_from,
    )
