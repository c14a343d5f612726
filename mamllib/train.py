"""The training loop of every experiment: :func:`fit`, and its outer steps.

The side effects live here: progress bar, checkpoints, resume, time limit, the NaN
and divergence guards, Ctrl-C and SIGTERM, a lock on the run, torch.distributed. What
one iteration computes is an :class:`OuterStep`: :class:`AdamStep` minimises an
``objective(params, batch)`` (MAML, the pretrained baseline and the oracle are fits
of different objectives; :func:`meta_objective` builds MAML's); meta-RL plugs in its
TRPO step (:mod:`mamllib.experiments.metarl`).

Checkpoints hold the parameters, the outer step's state (Adam's moments), the task
generator's state, the iteration and the history, so a resumed run continues exactly
where it stopped and reaches the same numbers as an uninterrupted one
(``tests/test_train.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mamllib import distributed
from mamllib.fast.allocator import keep_freed_memory
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
    strategy: str = "vmap",
) -> Objective:
    """MAML's meta-objective as ``objective(params, tasks)`` for :func:`fit`."""
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
    """Adam on ``objective(params, batch)`` (Algorithm 1, line 10), in place.

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
        self.optimizer = torch.optim.Adam(params.values(), lr=outer_lr)

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

    if checkpoint is not None and Path(checkpoint).exists():
        device = next(iter(params.values())).device
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
                if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
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
