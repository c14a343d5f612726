"""What each command of ``python -m mamllib`` does: train (and evaluate), artifact,
paper, run, compare.

Each takes the arguments :mod:`mamllib.cli` parsed and returns the exit status; a
mistake in the command raises :class:`UsageError` before anything is trained.
:func:`run_notebook` executes a notebook with papermill into its run folder.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mamllib import distributed, report
from mamllib.experiments import domain, run_name
from mamllib.presets import PRESET_NAMES, PRESETS, make_config
from mamllib.runs import RUN_RECORD_ENV, RunFolder, repo_root


class UsageError(Exception):
    """A mistake in the command (exit status 2)."""


def _methods(experiment: str) -> tuple[str, ...]:
    if domain(experiment) == "sinusoid":
        from mamllib.experiments.sinusoid import METHODS
    elif domain(experiment) == "metarl":
        from mamllib.experiments.metarl import METHODS
    else:
        return ("maml",)
    return METHODS


def _config(args, preset: str | None = None) -> dict:
    """The validated config of a train/evaluate/artifact command line."""
    overrides = {
        "seed": args.seed,
        "device": distributed.local_device(args.device) if args.device else None,
        "strategy": getattr(args, "strategy", None),
        "first_order": True if getattr(args, "first_order", False) else None,
        "n_iterations": getattr(args, "iterations", None),
    }
    if getattr(args, "sim_threads", None) is not None:
        if domain(args.experiment) != "metarl" or args.experiment == "navigation":
            raise UsageError("--sim-threads is for the locomotion experiments")
        overrides["sim_threads"] = args.sim_threads
    try:
        return make_config(args.experiment, preset or args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _check_methods(args) -> tuple[str, ...]:
    known = _methods(args.experiment)
    methods = tuple(args.methods or known)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(
            f"--methods {' '.join(unknown)}: {args.experiment} has the methods "
            f"{', '.join(known)}"
        )
    return methods


def train(args, evaluate_only: bool = False) -> int:
    """Train (resuming) and evaluate one experiment into its run folder."""
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed.init_from_environment(args.device or "cpu")
    config = _config(args)
    methods = _check_methods(args)
    kind = domain(config["experiment"])
    samplers = None
    if kind == "fewshot":  # sizes checked, then every split loaded, before the run
        from mamllib.experiments import fewshot

        try:
            fewshot.check_episodes(config)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        samplers = fewshot.episode_samplers(config)
    run = RunFolder(run_name(config), config["preset"], config["seed"])
    args.run_path = run.path  # for the message after an interrupt
    if distributed.is_main():
        run.write_json("config.json", config)
    if kind == "fewshot":
        fewshot.train_and_evaluate(
            config,
            run,
            samplers=samplers,
            time_limit_s=getattr(args, "time_limit", None),
            reevaluate=getattr(args, "reevaluate", False) or evaluate_only,
            evaluate_only=evaluate_only,
        )
    else:
        if kind == "sinusoid":
            from mamllib.experiments import sinusoid as module
        else:
            from mamllib.experiments import metarl as module
        module.train_and_evaluate(
            config,
            run,
            methods=methods,
            time_limit_s=getattr(args, "time_limit", None),
            evaluate_only=evaluate_only,
        )
    return 0


def artifact(args) -> int:
    """Copy a run's small files into ``artifacts/NAME`` with a manifest."""
    config = _config(args)
    run = RunFolder(run_name(config), config["preset"], config["seed"], create=False)
    target = report.make_artifact(
        run.path,
        args.name,
        _command_line(args.argv),
        note=args.note,
        checkpoints=args.checkpoints,
    )
    print(f"artifact written to {target}")
    return 0


def _paper_artifact(name: str) -> Path | None:
    """The committed artifact of a paper-preset run, complete or partial."""
    folder = repo_root() / "artifacts"
    found = [folder / f"{name}-paper", folder / f"{name}-paper-partial"]
    return next((f for f in found if (f / "config.json").exists()), None)


def paper(args) -> int:
    """Continue each named paper-preset run from its checkpoint (taken from its
    artifact when the run folder has none) for its share of the time budget, then
    evaluate it and refresh its artifact."""
    names = args.experiments or sorted(
        p.name.removesuffix("-paper-partial")
        for p in (repo_root() / "artifacts").glob("*-paper-partial")
    )
    plans = []
    for name in names:
        first_order = name.endswith("-first-order")
        experiment = name.removesuffix("-first-order")
        if experiment not in PRESETS:
            raise UsageError(
                f"unknown experiment {name!r}; choose among {', '.join(PRESETS)} "
                "(with -first-order for the few-shot first-order rows)"
            )
        ns = argparse.Namespace(
            experiment=experiment,
            seed=args.seed,
            device=args.device,
            first_order=first_order,
            strategy=None,
            iterations=None,
        )
        plans.append((name, ns, _config(ns, "paper")))
    if not plans:
        print("no partial paper runs to continue")
        return 0
    share = args.time_budget / len(plans)
    for name, ns, config in plans:
        run = RunFolder(run_name(config), "paper", config["seed"])
        source = _paper_artifact(run_name(config))
        if source is not None:  # its checkpoints and validation record
            for pattern in report.CHECKPOINT_PATTERNS:
                for checkpoint in source.glob(pattern):
                    if not (run.path / checkpoint.name).exists():
                        run.path.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(checkpoint, run.path / checkpoint.name)
        methods = tuple(
            sorted(
                p.stem.removeprefix("checkpoint-")
                for p in run.path.glob("checkpoint-*.pt")
            )
        ) or _methods(ns.experiment)
        print(f"{name}: {share / 60:.0f} min of training from {run.path}", flush=True)
        ns.methods, ns.time_limit, ns.threads, ns.reevaluate = (
            methods,
            share,
            None,
            True,
        )
        ns.preset = "paper"
        train(ns)
        status = report.read_json(run.file("metrics.json"))["status"]
        target = f"{run_name(config)}-paper" + (
            "" if status == "complete" else "-partial"
        )
        if source is not None and source.name != target:  # partial -> complete
            shutil.move(source, source.parent / target)
        report.make_artifact(
            run.path,
            target,
            _command_line(args.argv),
            note=f"continued by the paper runner, {share:.0f} s of training",
            checkpoints=True,
            refresh=True,
        )
        print(f"{name}: {status} -> artifacts/{target}", flush=True)
    return 0


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
        raise UsageError(f"no notebook at {notebook}")
    clash = sorted({"preset", "seed"} & set(parameters))
    if clash:
        raise UsageError(
            f"-p {' '.join(clash)}: give the preset and seed with --preset and --seed "
            "(they also name the run folder)"
        )
    if preset not in PRESET_NAMES:
        raise UsageError(
            f"--preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}"
        )
    # The preset given here must win: the environment variable would override it.
    os.environ.pop("MAMLLIB_PRESET", None)
    record = Path(tempfile.mkdtemp()) / "runs.txt"
    os.environ[RUN_RECORD_ENV] = str(record)
    output = record.with_name("executed.ipynb")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters={"preset": preset, "seed": seed, **parameters},
            cwd=str(notebook.parent.resolve()),
            kernel_name=kernel,
            progress_bar=False,
            log_output=True,
        )
    finally:
        os.environ.pop(RUN_RECORD_ENV, None)
    # The run folder the notebook opened (its first), else one named after it.
    run = RunFolder(notebook.stem, preset, seed)
    opened = record.read_text().split() if record.exists() else []
    if opened:
        run.path = Path(opened[0])
    shutil.move(output, run.file("executed.ipynb"))
    shutil.rmtree(record.parent, ignore_errors=True)
    return run, time.perf_counter() - start


def run(args) -> int:
    """Execute a notebook headlessly; optionally curate its run as an artifact."""
    parameters = {name: _literal(value) for name, value in args.parameter}
    folder, seconds = run_notebook(
        args.notebook, args.preset, args.seed, parameters, args.kernel
    )
    print(
        f"executed {args.notebook} at preset {args.preset} in {seconds:.0f} s -> "
        f"{folder.path}"
    )
    if args.artifact:
        words = list(args.argv)
        if "--note" in words:  # the note is recorded on its own line of the manifest
            del words[words.index("--note") : words.index("--note") + 2]
        target = report.make_artifact(
            folder.path,
            args.artifact,
            _command_line(words),
            note=args.note,
            notebook_wall_time_s=round(seconds, 1),
        )
        print(f"artifact written to {target}")
    return 0


def compare(args) -> int:
    """Train and score every algorithm of Part IV at one budget (resuming)."""
    from mamllib.experiments import comparison

    settings = args.settings or comparison.SETTINGS
    algorithms = args.algorithms or comparison.ALGORITHMS
    try:
        comparison.check_request(settings, algorithms, args.preset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    torch.set_num_threads(1)  # small models: one thread each, as the costs are timed
    summary = comparison.run_comparison(
        args.preset,
        settings,
        algorithms,
        args.seeds,
        time_limit_s=args.time_limit,
        measure=not args.no_cost,
    )
    for setting, rows in summary["rows"].items():
        for row in rows.values():
            mean = "diverged" if row["mean"] is None else f"{row['mean']:.3f}"
            print(
                f"{setting:22s} {row['label']:24s} {mean} ({len(row['seeds'])} seeds)"
            )
    if args.artifact:
        target = comparison.write_artifact(
            args.preset, args.artifact, _command_line(list(args.argv))
        )
        print(f"artifact written to {target}")
    return 0


def _command_line(words: list[str]) -> str:
    return "python -m mamllib " + " ".join(shlex.quote(w) for w in words)
