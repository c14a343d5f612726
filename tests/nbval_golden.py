"""Golden outputs for nbval, kept beside the tests so the notebooks stay output-free.

nbval compares a cell tagged ``nbval-check-output`` with the outputs stored in the
notebook file, but our notebooks are committed without outputs. This plugin (loaded
with ``-p tests.nbval_golden``) hands nbval the expected stdout of each marked cell from
``tests/golden_outputs.json`` ({notebook file name: {cell id: text}}), as if it had been
stored in the notebook. A cell tag, not a ``# NBVAL_CHECK_OUTPUT`` comment, marks
the cell, so the rendered book shows no marker. A marked cell without a golden, or a
golden whose cell is gone, is an error: nothing is silently left unchecked.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import nbval.plugin

GOLDEN_FILE = Path(__file__).with_name("golden_outputs.json")
TAG = "nbval-check-output"


def _golden() -> dict[str, dict[str, str]]:
    return json.loads(GOLDEN_FILE.read_text())


def with_goldens(nb, path: str):
    """Fill the outputs of ``nb``'s marked cells from the golden file."""
    name = Path(path).name
    expected = _golden().get(name, {})
    marked = {
        c.id
        for c in nb.cells
        if c.cell_type == "code" and TAG in c.metadata.get("tags", [])
    }
    if marked - set(expected):
        raise ValueError(
            f"{name}: cells {sorted(marked - set(expected))} are tagged "
            f"{TAG!r} but have no golden output in {GOLDEN_FILE}"
        )
    if set(expected) - marked:
        raise ValueError(
            f"{name}: {GOLDEN_FILE} has goldens for cells "
            f"{sorted(set(expected) - marked)} that are not marked cells"
        )
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.id in expected:
            cell.execution_count = 1  # nbval skips comparing cells it thinks unrun
            cell.outputs = [
                nbformat.v4.new_output("stream", name="stdout", text=expected[cell.id])
            ]
    return nb


class _Reader:
    """nbformat, except that ``read`` adds the golden outputs."""

    def __getattr__(self, name):
        return getattr(nbformat, name)

    @staticmethod
    def read(path, as_version, **kwargs):
        return with_goldens(nbformat.read(path, as_version=as_version, **kwargs), path)


nbval.plugin.nbformat = _Reader()
