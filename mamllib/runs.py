"""Run folders, atomic writes and the artifacts manifest.

Runs live under ``results/<notebook>/<preset>/seed-<n>/`` resolved from the repository
root (jupyter-book, nbval and papermill each start in a different working directory),
or under ``$MAMLLIB_RESULTS`` if set. Every file is written atomically
(:mod:`mamllib.data.store`): to a temporary name in the same folder, its size reserved
first, then ``os.replace``, so an interrupted run or a full disk never leaves a
half-written result or checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from mamllib.data import store
from mamllib.data.store import atomic_write_bytes


def repo_root() -> Path:
    """The repository root: ``$MAMLLIB_ROOT``, else the folder holding mamllib's
    ``pyproject.toml`` (an editable install), else the nearest parent of the working
    directory with a ``_toc.yml``, else the working directory."""
    if os.environ.get("MAMLLIB_ROOT"):
        return Path(os.environ["MAMLLIB_ROOT"]).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "mamllib").is_dir():
        return here
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "_toc.yml").exists():
            return folder
    return cwd


RESULTS_FIX = "free space there or point MAMLLIB_RESULTS at a folder on another disk"


def write_json(path: Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON; returns the path."""
    return store.write_json(path, obj, RESULTS_FIX)


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_torch(path: Path, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path`` (its full size reserved first)."""
    return store.save_torch(path, obj, RESULTS_FIX)


class RunFolder:
    """``results/<notebook>/<preset>/seed-<n>/``: config, metrics, history, figures."""

    def __init__(
        self,
        notebook: str,
        preset: str,
        seed: int,
        root: Path | None = None,
        create: bool = True,
    ):
        """``create=False`` only names the folder (to read a run, or to create it
        on its first write, after the inputs are checked and the data loaded)."""
        base = (
            Path(os.environ["MAMLLIB_RESULTS"])
            if os.environ.get("MAMLLIB_RESULTS")
            else (root or repo_root()) / "results"
        )
        self.path = base / notebook / preset / f"seed-{seed}"
        if create:
            (self.path / "figures").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run folder."""
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write ``name`` (e.g. ``config.json``, ``metrics.json``)."""
        return write_json(self.path / name, obj)

    def checkpoint(self, name: str) -> Path:
        """Where the checkpoint of the model called ``name`` lives."""
        return self.path / f"checkpoint-{name}.pt"

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png`` (atomically)."""
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        path = self.path / "figures" / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue(), RESULTS_FIX)
        return path


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return store.file_digest(path, "sha256")


def git_commit(root: Path | None = None) -> str:
    """The current commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    root = root or repo_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description(device: str = "cpu") -> str:
    """A human description of the device a run used."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def write_manifest(folder: Path, **facts: Any) -> Path:
    """Write ``folder/manifest.json``: ``facts`` plus the sha256 of every file."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    return write_json(folder / "manifest.json", {**facts, "files": files})


def handle_interrupts(run: RunFolder) -> None:
    """In a training script: make Ctrl-C, ``kill -INT`` and ``kill`` (SIGTERM) stop
    training with its checkpoint saved, and end with one line saying where it is
    instead of a traceback.

    The training loops save the last completed iteration on ``KeyboardInterrupt``
    (:func:`mamllib.train.fit`), so the same command continues the run. Two signals
    would otherwise skip that: SIGINT, which a shell without job control ignores in a
    job it starts in the background (``nohup python ... &`` in a script), so Python
    never turns it into ``KeyboardInterrupt``; and SIGTERM, the default of ``kill``
    and of schedulers, which ends Python at once. Both are routed to
    ``KeyboardInterrupt`` here.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(
                f"\ninterrupted: the last completed iteration is checkpointed in "
                f"{run.path}; run the same command again to continue",
                file=sys.stderr,
                flush=True,
            )
            return
        previous(kind, value, traceback)

    sys.excepthook = hook


# Set by ``python -m mamllib run``: a file to which start_run appends the run folder it
# opens, so that the driver puts the executed notebook and the artifact where the
# notebook's results are.
RUN_RECORD_ENV = "MAMLLIB_RUN_RECORD"


def start_run(notebook: str, config: dict[str, Any]) -> RunFolder:
    """Open the run folder for ``notebook`` at the config's preset and seed.

    Seeds torch's global generator from ``config["seed"]`` (for anything that does not
    take an explicit generator) and writes ``config.json`` there.
    """
    torch.manual_seed(config.get("seed", 0))
    run = RunFolder(notebook, config["preset"], config.get("seed", 0))
    run.write_json("config.json", config)
    if os.environ.get(RUN_RECORD_ENV):  # the headless driver asks where the run went
        with open(os.environ[RUN_RECORD_ENV], "a") as record:
            record.write(f"{run.path}\n")
    return run
