"""Refuse a notebook parameter that papermill injects but the notebook does not declare.

papermill puts the values it is given in a cell of its own (tagged
``injected-parameters``, first line ``# Parameters``) right after the cell tagged
``parameters``, and only warns about a name that cell does not assign: ``-p k_shot 0``
would run the whole notebook at its defaults and exit 0. :func:`check_parameters`,
called first in every notebook's setup cell, reads the cells the kernel has run
(IPython's input history ``In``), compares the names the injected cell assigns with
those the cell just before it declares, and raises before any work is done. Without an
injected cell (JupyterLab, nbval, the book build) or outside IPython it does nothing.

The rest of a chapter's setup cell is two calls: :func:`check_experiment` refuses an
experiment the chapter does not run (before any data is read), and
:func:`start_chapter` resolves the preset, makes the config, opens the run folder and
prints the config in one line. :func:`median_ms` times a call for the chapters'
cost sections.

Bottom floor as imported: the standard library only. :func:`start_chapter` imports
the library (presets, runs, plot) when it is called, as a notebook would.
"""

from __future__ import annotations

import ast
import difflib
import statistics
import time
from collections.abc import Sequence
from typing import Any

# The first line of the cell papermill injects (its Python translator's comment).
INJECTED_HEADER = "# Parameters"
# What `papermill --inject-paths` adds on its own: never the notebook's to declare.
PAPERMILL_NAMES = frozenset({"PAPERMILL_INPUT_PATH", "PAPERMILL_OUTPUT_PATH"})


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for elt in target.elts for name in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []  # x.attr = ..., x[i] = ...: no new name


def assigned_names(source: str) -> list[str]:
    """The names the top-level statements of ``source`` assign, in order; none if it
    is not Python."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    names: list[str] = []
    for node in body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            names += [n for n in _target_names(target) if n not in names]
    return names


def is_injected(source: str) -> bool:
    """Whether ``source`` is the cell papermill injects (its ``# Parameters`` line)."""
    lines = source.strip().splitlines()
    return bool(lines) and lines[0].strip() == INJECTED_HEADER


def find_parameters(
    history: Sequence[str],
) -> tuple[list[str], list[str] | None] | None:
    """(injected names, declared names) from the sources of the cells run so far, or
    None if papermill injected nothing.

    The injected cell is the last one with papermill's header; the declared names are
    those of the cell run just before it. They are None when the injected cell ran
    first: papermill puts it at the top of a notebook with no cell tagged
    ``parameters``.
    """
    sources = [s for s in history if isinstance(s, str) and s.strip()]
    for i in range(len(sources) - 1, -1, -1):
        if is_injected(sources[i]):
            declared = assigned_names(sources[i - 1]) if i > 0 else None
            return assigned_names(sources[i]), declared
    return None


def _ipython_history() -> Sequence[str] | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.user_ns.get("In")


def check_parameters(history: Sequence[str] | None = None) -> None:
    """Raise ValueError if papermill injected a name the notebook does not declare.

    ``history`` is the sources of the cells run so far, IPython's ``In`` by default.
    """
    if history is None:
        history = _ipython_history()
    found = find_parameters(history or [])
    if found is None:
        return
    injected, declared = found
    known = set(declared or ()) | PAPERMILL_NAMES
    unknown = [name for name in injected if name not in known]
    if not unknown:
        return
    given = ", ".join(unknown)
    if declared is None:
        raise ValueError(
            f"unknown parameter(s) {given}: this notebook takes no parameters. It has "
            "no cell tagged 'parameters', so papermill put the values in a cell of "
            "their own at the top, where nothing reads them; run it without -p."
        )
    hints = [
        f"{close[0]} for {name}"
        for name in unknown
        if (close := difflib.get_close_matches(name, declared, n=1))
    ]
    raise ValueError(
        f"unknown parameter(s) {given}: this notebook takes: "
        f"{', '.join(declared) or 'nothing'}"
        + (f" (did you mean {', '.join(hints)}?). " if hints else ". ")
        + "papermill only warns about a name the notebook's cell tagged 'parameters' "
        "does not assign, and the run would go on with the defaults; pass only the "
        "names above (-p NAME VALUE)."
    )


def check_experiment(
    experiment: str, families: str | Sequence[str], elsewhere: str = ""
) -> None:
    """Raise ValueError unless ``experiment`` is of one of ``families``.

    An experiment's family is its name before the first ``-`` (``omniglot`` for
    ``omniglot-20way-1shot``). A chapter calls this first in its setup cell, so that a
    wrong ``experiment`` fails before any data is read or any training starts.

    Args:
        families: the families the notebook runs, e.g. ``"omniglot"``.
        elsewhere: where the other experiments are run, added to the message.
    """
    families = (families,) if isinstance(families, str) else tuple(families)
    if experiment.split("-")[0] in families:
        return
    runs = " or ".join(f"{family}-*" for family in families)
    raise ValueError(
        f"experiment={experiment!r}: this notebook runs {runs} experiments only"
        + (f"; {elsewhere}" if elsewhere else "")
    )


def start_chapter(
    experiment: str,
    preset: str,
    show: Sequence[str] = (),
    threads: int | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], Any]:
    """A chapter's setup after its checks: the config and the run folder.

    Resolves the preset (the ``MAMLLIB_PRESET`` environment variable wins over
    ``preset``), makes the validated config of ``experiment`` with ``overrides``
    (``None`` values take the preset's), opens the run folder that ``python -m
    mamllib train`` also writes (so training resumes from its checkpoints; this seeds
    torch's global generator and writes ``config.json``), sets the plot style and
    prints the config in one line.

    Args:
        show: more config keys for the printed line.
        threads: torch's intra-op threads, when the chapter states its timings on a
            given number.

    Returns:
        ``(config, run)``: a plain dict and a :class:`mamllib.runs.RunFolder`.
    """
    from mamllib.experiments import run_name
    from mamllib.plot import use_house_style
    from mamllib.presets import make_config, resolve_preset, summary
    from mamllib.runs import start_run

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = make_config(experiment, resolve_preset(preset), **overrides)
    run = start_run(run_name(config), config)
    use_house_style()
    print(" | ".join([summary(config), *(f"{k}={config[k]}" for k in show)]))
    return config, run


def median_ms(function, repeats: int = 5) -> float:
    """Median wall time of ``function()`` in milliseconds over ``repeats`` calls, after
    one untimed warm-up call (first calls pay for allocation and dispatch caches)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")

    def once() -> float:
        start = time.perf_counter()
        function()
        return 1000 * (time.perf_counter() - start)

    once()
    return statistics.median(once() for _ in range(repeats))
