"""The command line: train, evaluate, curate artifacts, continue the paper runs, run
notebooks.

    python -m mamllib train omniglot-5way-1shot --preset paper --device cuda
    python -m mamllib train sinusoid --preset paper --time-limit 3600
    python -m mamllib evaluate half_cheetah-direction --preset paper --methods maml
    python -m mamllib artifact omniglot-5way-1shot --name omniglot-5way-1shot-paper
    python -m mamllib paper omniglot-20way-1shot miniimagenet-5way-1shot \\
        --device cuda --time-budget 2h
    python -m mamllib run notebooks/05-maml-sinusoid.ipynb --preset paper --seed 1
    python -m mamllib presets omniglot-20way-1shot
    python -m mamllib compare --preset book --artifact comparison-book
    torchrun --nproc_per_node 8 -m mamllib train omniglot-20way-1shot \\
        --preset paper --device cuda

Runs live in ``results/<experiment>[-first-order]/<preset>/seed-<n>/`` (the chapters
read and resume the same folders). Everything resumes: run the same command again to
continue; Ctrl-C or ``kill`` saves the last completed iteration first. Mistakes on the
command line are one line on stderr and exit status 2, before anything is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from mamllib.commands import (
    UsageError,
    artifact,
    compare,
    paper,
    run,
    run_notebook,
    train,
)
from mamllib.presets import ENV_VAR, PRESET_NAMES, PRESETS

__all__ = ["UsageError", "build_parser", "main", "run_notebook"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _int_at_least(flag: str, low: int = 1):
    """An argparse type: an integer >= ``low``, the flag named in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {low}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """``3600``, ``90s``, ``45m``, ``2h`` or ``1.5h`` -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 3600, 45m or 2h, got {text!r}"
        )
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _experiment(text: str) -> str:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"unknown experiment {text!r}; choose one of {', '.join(PRESETS)}"
        )
    return text


def _common(parser, preset: str = "paper") -> None:
    parser.add_argument("experiment", type=_experiment, help="e.g. omniglot-5way-1shot")
    parser.add_argument("--preset", default=preset, choices=PRESET_NAMES)
    parser.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1")
    parser.add_argument(
        "--first-order", action="store_true", help="first-order MAML (its own run)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m mamllib",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (
        ("train", "train (resuming) and evaluate an experiment"),
        ("evaluate", "evaluate the checkpoints of a run as they are"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        _common(p)
        p.add_argument("--methods", nargs="+", default=None, help="default: all")
        p.add_argument("--threads", type=_int_at_least("--threads"), default=None)
        p.add_argument("--sim-threads", type=_int_at_least("--sim-threads"))
        if name == "train":
            p.add_argument(
                "--time-limit",
                type=_seconds,
                default=None,
                help="training time of this call per method (3600, 45m, 2h)",
            )
            p.add_argument(
                "--iterations",
                type=_int_at_least("--iterations"),
                help="train to this iteration (the run folder stays the "
                "preset's, so a later call without it continues)",
            )
            p.add_argument(
                "--strategy",
                default=None,
                help="loop | vmap | batched | threads | compiled (default: the "
                "preset's)",
            )
            p.add_argument(
                "--reevaluate",
                action="store_true",
                help="evaluate even if metrics.json already scores the weights",
            )
    a = sub.add_parser(
        "artifact", help="copy a run into artifacts/NAME with a manifest"
    )
    _common(a)
    a.add_argument("--name", required=True, help="folder name under artifacts/")
    a.add_argument(
        "--checkpoints",
        action="store_true",
        help="also copy the checkpoints (a later run can continue it)",
    )
    a.add_argument("--note", default=None, help="a sentence for the manifest")
    pp = sub.add_parser("paper", help="continue the paper-preset runs within a budget")
    pp.add_argument(
        "experiments",
        nargs="*",
        help="default: every run with a partial paper artifact",
    )
    pp.add_argument("--device", default="cuda")
    pp.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    pp.add_argument(
        "--time-budget",
        type=_seconds,
        required=True,
        help="training time for all of them together (e.g. 2h)",
    )
    r = sub.add_parser("run", help="execute a notebook headlessly with papermill")
    r.add_argument("notebook", type=Path)
    r.add_argument("--preset", default="book", choices=PRESET_NAMES)
    r.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    r.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="another notebook parameter",
    )
    r.add_argument(
        "--artifact",
        metavar="NAME",
        help="then copy the run's small files to artifacts/NAME",
    )
    r.add_argument("--kernel", default=None, help="Jupyter kernel name")
    r.add_argument("--note", default=None, help="a sentence for the manifest")
    c = sub.add_parser(
        "compare",
        help="every algorithm of Part IV at one budget (the comparison page)",
    )
    c.add_argument("--preset", default="book", choices=PRESET_NAMES)
    c.add_argument("--settings", nargs="+", default=None, help="default: all")
    c.add_argument("--algorithms", nargs="+", default=None, help="default: all")
    c.add_argument("--seeds", nargs="+", type=_int_at_least("--seeds", 0), default=None)
    c.add_argument(
        "--time-limit", type=_seconds, default=None, help="for this call (e.g. 2h)"
    )
    c.add_argument(
        "--no-cost", action="store_true", help="skip the time and memory measurement"
    )
    c.add_argument(
        "--artifact",
        metavar="NAME",
        help="then write the rows to artifacts/NAME with a manifest",
    )
    pr = sub.add_parser("presets", help="print an experiment's presets")
    pr.add_argument("experiment", type=_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # On the command line --preset decides (paper by default); MAMLLIB_PRESET, which
    # overrides a notebook's preset, would otherwise override it silently.
    os.environ.pop(ENV_VAR, None)
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        if args.command == "presets":
            print(json.dumps(PRESETS[args.experiment], indent=2))
            return 0
        command = {
            "train": train,
            "evaluate": lambda a: train(a, evaluate_only=True),
            "artifact": artifact,
            "paper": paper,
            "run": run,
            "compare": compare,
        }[args.command]
        return command(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = getattr(args, "run_path", None)
        print(
            "\ninterrupted: the last completed iteration is checkpointed"
            + (f" in {where}" if where else "")
            + "; run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # Data missing, a checkpoint of other settings, another process on the run:
        # the message says what to do; a traceback would bury it.
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
