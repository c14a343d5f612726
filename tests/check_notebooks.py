"""Fail if a notebook carries outputs or lacks the house skeleton.

Checks every ``notebooks/*.ipynb`` and ``book/*.ipynb``: no outputs or execution counts
(sources are committed output-free), every cell has an id, exactly one level-1 title,
and a ``parameters``-tagged cell of plain literals that sets ``preset`` and ``seed``.
The setup cell (the first code cell after it, or the first code cell of a notebook with
none) imports ``check_parameters`` from ``mamllib.notebook`` and calls it before any
other statement, so that a papermill run refuses a parameter the notebook does not take.
"""

import ast
import sys
from pathlib import Path

import nbformat

from mamllib.notebook import is_injected

ROOT = Path(__file__).resolve().parent.parent


def problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    found = []
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count):
            found.append(
                f"cell {cell.get('id')} has outputs: clear them before committing"
            )
        if not cell.get("id"):
            found.append("a cell has no id")
    titles = [
        line
        for c in nb.cells
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("# ")
    ]
    if len(titles) != 1:
        found.append(f"{len(titles)} level-1 titles, expected exactly 1")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if path.parent.name == "notebooks":
        if len(params) != 1:
            found.append(f"{len(params)} cells tagged 'parameters', expected 1")
        else:
            names = set()
            for node in ast.parse(params[0].source).body:
                if not (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                ):
                    found.append("the parameters cell may only assign plain names")
                    continue
                try:
                    ast.literal_eval(node.value)
                except ValueError:
                    found.append(
                        f"parameter {node.targets[0].id} is not a plain literal"
                    )
                names.add(node.targets[0].id)
            missing = {"preset", "seed"} - names
            if missing:
                found.append(f"the parameters cell does not set {sorted(missing)}")
    if len(params) == 1 and is_injected(params[0].source):
        found.append(
            "the parameters cell starts like papermill's injected one ('# Parameters')"
        )
    found += setup_problems(nb)
    return found


def setup_problems(nb) -> list[str]:
    """The setup cell must call ``check_parameters()`` first, after its imports."""
    start = next(
        (
            i + 1
            for i, c in enumerate(nb.cells)
            if "parameters" in c.metadata.get("tags", [])
        ),
        0,
    )
    setup = next((c for c in nb.cells[start:] if c.cell_type == "code"), None)
    if setup is None:
        return []
    where = f"setup cell {setup.get('id')}"
    try:
        body = ast.parse(setup.source).body
    except SyntaxError as error:
        return [f"{where} is not Python: {error}"]
    imported = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "mamllib.notebook"
        and any(alias.name == "check_parameters" for alias in node.names)
        for node in body
    )
    first = next(
        (n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))), None
    )
    calls = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Call)
        and isinstance(first.value.func, ast.Name)
        and first.value.func.id == "check_parameters"
        and not (first.value.args or first.value.keywords)
    )
    if imported and calls:
        return []
    return [
        f"{where} must import check_parameters from mamllib.notebook and call "
        "check_parameters() first, after its imports (unknown papermill parameters)"
    ]


def main() -> int:
    paths = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "book").glob("*.ipynb")
    )
    bad = {p: problems(p) for p in paths}
    for path, found in bad.items():
        for problem in found:
            print(f"{path.relative_to(ROOT)}: {problem}")
    if any(bad.values()):
        return 1
    print(f"{len(paths)} notebooks are output-free and follow the skeleton")
    return 0


if __name__ == "__main__":
    sys.exit(main())
