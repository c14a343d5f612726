"""Run notebooks headlessly with papermill and curate their results as artifacts.

    python -m mamllib.cli run notebooks/05-maml-sinusoid.ipynb --preset paper --seed 0
    python -m mamllib.cli run notebooks/05-maml-sinusoid.ipynb --preset paper \\
        --artifact sinusoid-paper
    python -m mamllib.cli presets sinusoid

``run`` executes the notebook into its run folder
(``results/<notebook>/<preset>/seed-<n>/executed.ipynb``) with ``preset`` and ``seed``
injected after the ``parameters`` cell (``-p name value`` for more). With
``--artifact NAME`` it then copies the run's small files into ``artifacts/NAME/`` and
writes a manifest: command, commit, device, wall time and the sha256 of every file.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from mamllib.presets import PRESET_NAMES, PRESETS
from mamllib.runs import (
    RunFolder,
    device_description,
    git_commit,
    read_json,
    repo_root,
    write_manifest,
)

# What an artifact keeps from a run folder: small, human-readable, enough to rebuild the
# book's tables and figures (never checkpoints with optimizer state).
ARTIFACT_PATTERNS = (
    "config.json",
    "metrics.json",
    "history.json",
    "reproduction.json",
    "params-*.pt",
    "figures/*.png",
)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebook(
    notebook: Path, preset: str, seed: int, parameters: dict, kernel: str | None = None
) -> tuple[RunFolder, float]:
    """Execute ``notebook`` with papermill into its run folder: (run, seconds)."""
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"no notebook at {notebook}")
    if preset not in PRESET_NAMES:
        raise ValueError(
            f"--preset {preset!r} is not a preset; choose one of "
            f"{', '.join(PRESET_NAMES)}"
        )
    run = RunFolder(notebook.stem, preset, seed)
    # The preset given here must win: the environment variable would override it.
    os.environ.pop("MAMLLIB_PRESET", None)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook),
        str(run.file("executed.ipynb")),
        parameters={"preset": preset, "seed": seed, **parameters},
        cwd=str(notebook.parent.resolve()),
        kernel_name=kernel,
        progress_bar=False,
        log_output=True,
    )
    return run, time.perf_counter() - start


def make_artifact(
    run: RunFolder, name: str, command: str, wall_time_s: float, note: str | None = None
) -> Path:
    """Copy ``run``'s small files into ``artifacts/<name>/`` with a manifest."""
    commit = git_commit()  # before this function changes tracked files under artifacts/
    target = repo_root() / "artifacts" / name
    if target.exists():
        shutil.rmtree(target)
    copied = []
    for pattern in ARTIFACT_PATTERNS:
        for src in sorted(run.path.glob(pattern)):
            dst = target / src.relative_to(run.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied.append(dst)
    if not copied:
        raise FileNotFoundError(f"{run.path} holds none of {ARTIFACT_PATTERNS}")
    config = (
        read_json(run.file("config.json")) if run.file("config.json").exists() else {}
    )
    metrics = (
        read_json(run.file("metrics.json")) if run.file("metrics.json").exists() else {}
    )
    write_manifest(
        target,
        command=command,
        commit=commit,
        device=device_description(config.get("device", "cpu")),
        notebook_wall_time_s=round(wall_time_s, 1),
        training_wall_time_s=metrics.get("training_wall_time_s"),
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        note=note,
        run_folder=str(run.path.relative_to(repo_root()))
        if run.path.is_relative_to(repo_root())
        else str(run.path),
    )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mamllib.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute a notebook headlessly with papermill")
    run_p.add_argument("notebook", type=Path)
    run_p.add_argument("--preset", default="book", choices=PRESET_NAMES)
    run_p.add_argument("--seed", type=int, default=0)
    run_p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="extra notebook parameter",
    )
    run_p.add_argument(
        "--artifact",
        metavar="NAME",
        help="then copy the run's small files to artifacts/NAME",
    )
    run_p.add_argument("--kernel", default=None, help="Jupyter kernel name")
    run_p.add_argument(
        "--note",
        default=None,
        help="a sentence for the manifest (e.g. how training was run)",
    )
    pre_p = sub.add_parser("presets", help="print an experiment's presets")
    pre_p.add_argument("experiment", choices=sorted(PRESETS))
    args = parser.parse_args(argv)

    if args.command == "presets":
        print(json.dumps(PRESETS[args.experiment], indent=2))
        return 0
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    parameters = {name: _literal(value) for name, value in args.parameter}
    run, seconds = run_notebook(
        args.notebook, args.preset, args.seed, parameters, args.kernel
    )
    print(
        f"executed {args.notebook} at preset {args.preset} in {seconds:.0f} s -> "
        f"{run.path}"
    )
    if args.artifact:
        words = list(sys.argv[1:] if argv is None else argv)
        if "--note" in words:  # the note is recorded on its own line of the manifest
            del words[words.index("--note") : words.index("--note") + 2]
        command = "python -m mamllib.cli " + " ".join(shlex.quote(w) for w in words)
        target = make_artifact(run, args.artifact, command, seconds, args.note)
        print(f"artifact written to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
