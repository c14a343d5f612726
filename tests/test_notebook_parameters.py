"""A notebook refuses a parameter that papermill injects but it does not declare, and a
chapter refuses an experiment that another chapter runs."""

import json
import subprocess
import sys

import papermill
import pytest
from papermill.exceptions import PapermillExecutionError
from papermill.translators import translate_parameters

from mamllib.cli import run_notebook
from mamllib.notebook import (
    assigned_names,
    check_experiment,
    check_parameters,
    find_parameters,
)
from mamllib.runs import repo_root

DECLARED = (
    'preset = "book"  # ci | book | paper\n'
    "seed = 0  # one seed\n"
    "n_iterations = None  # None takes the preset's value"
)
SETUP = "from mamllib.notebook import check_parameters\ncheck_parameters()"


def injected(**parameters) -> str:
    """The source of the cell papermill injects for ``parameters``."""
    return translate_parameters("python3", "python", parameters, "Parameters")


def test_assigned_names_reads_top_level_assignments_only():
    source = (
        "# a comment\n"
        "a = 1\n"
        "b: int = 2  # annotated\n"
        "c, (d, *e) = 3, (4, 5)\n"
        "f = g = None\n"
        "a += 1\n"
        "x.attr = 1\n"
        "x[0] = 1\n"
        "if True:\n"
        "    hidden = 1\n"
    )
    assert assigned_names(source) == ["a", "b", "c", "d", "e", "f", "g"]
    assert assigned_names("%matplotlib inline") == []  # not Python: declares nothing
    assert assigned_names(injected(k_shot=0, preset="ci")) == ["k_shot", "preset"]


def test_find_parameters_pairs_the_injected_cell_with_the_cell_before_it():
    # No injected cell (JupyterLab, nbval, the book build): nothing to check.
    assert find_parameters(["", DECLARED, SETUP]) is None
    assert find_parameters([]) is None
    # The parameters cell is the first code cell (In[0] is IPython's empty entry).
    history = ["", DECLARED, injected(preset="ci", k_shot=0), SETUP]
    assert find_parameters(history) == (
        ["preset", "k_shot"],
        ["preset", "seed", "n_iterations"],
    )
    # Code cells before the parameters cell do not matter; the last injection wins.
    history = ["", "import os", DECLARED, injected(seed=1), "", DECLARED]
    history += [injected(n_way=5), SETUP]
    assert find_parameters(history) == (["n_way"], ["preset", "seed", "n_iterations"])
    # No cell tagged parameters: papermill puts its cell first.
    assert find_parameters(["", injected(seed=1), SETUP]) == (["seed"], None)
    # A cell of the notebook's own that merely mentions parameters is not papermill's.
    assert find_parameters(["", "# Parameters of the run\nseed = 0", SETUP]) is None


def test_check_parameters_accepts_declared_names_and_refuses_the_others():
    check_parameters(["", DECLARED, injected(preset="ci", seed=3), SETUP])
    check_parameters(["", DECLARED, SETUP])  # not run by papermill
    check_parameters(["", DECLARED, injected(PAPERMILL_INPUT_PATH="in.ipynb"), SETUP])
    check_parameters()  # outside IPython: does nothing
    for name, value in (("k_shot", 0), ("n_way", 10000), ("meta_batch_size", 2.5)):
        history = ["", DECLARED, injected(preset="ci", **{name: value}), SETUP]
        with pytest.raises(ValueError) as error:
            check_parameters(history)
        message = str(error.value)
        assert message.startswith(f"unknown parameter(s) {name}: ")  # not preset
        assert "this notebook takes: preset, seed, n_iterations" in message
    with pytest.raises(ValueError, match=r"did you mean n_iterations for n_iteration"):
        check_parameters(["", DECLARED, injected(n_iteration=5), SETUP])
    with pytest.raises(ValueError, match=r"seed: this notebook takes no parameters"):
        check_parameters(["", injected(seed=1), SETUP])


NOTEBOOK = "notebooks/01-gradient-descent.ipynb"  # the cheapest chapter at ci


@pytest.mark.slow
def test_papermill_run_refuses_an_unknown_parameter_before_any_work(
    results_dir, monkeypatch, tmp_path
):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)  # run_notebook drops it
    notebook = repo_root() / NOTEBOOK
    # papermill's own command line, as in the bug: it only warns, then ran everything.
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb")]
        + ["-p", "k_shot", "0", "--cwd", str(notebook.parent)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "unknown parameter(s) k_shot: this notebook takes: preset, seed" in (
        done.stdout + done.stderr
    )
    # The same through mamllib.cli, which injects preset and seed beside it.
    with pytest.raises(PapermillExecutionError) as error:
        run_notebook(notebook, "ci", 0, {"k_shot": 0})
    assert "unknown parameter(s) k_shot: this notebook takes: preset, seed" in str(
        error.value
    )
    folder = results_dir / notebook.stem / "ci" / "seed-0"
    assert not (folder / "config.json").exists()  # refused before the run started
    # Declared parameters still work.
    run, _ = run_notebook(notebook, "ci", 3, {})
    config = json.loads(run.file("config.json").read_text())
    assert (config["preset"], config["seed"]) == ("ci", 3)


def test_check_experiment_accepts_the_chapters_families_only():
    check_experiment("omniglot-20way-5shot", "omniglot")
    check_experiment("ant-velocity", ("half_cheetah", "ant"))
    with pytest.raises(ValueError) as error:
        check_experiment("miniimagenet-5way-1shot", "omniglot", "see chapter 8")
    assert str(error.value) == (
        "experiment='miniimagenet-5way-1shot': this notebook runs omniglot-* "
        "experiments only; see chapter 8"
    )
    with pytest.raises(
        ValueError, match="runs half_cheetah-\\* or ant-\\* experiments"
    ):
        check_experiment("navigation", ("half_cheetah", "ant"))


@pytest.mark.parametrize(
    "notebook, experiment, runs",
    [
        ("notebooks/07-omniglot.ipynb", "miniimagenet-5way-1shot", "omniglot-*"),
        ("notebooks/08-miniimagenet.ipynb", "omniglot-5way-1shot", "miniimagenet-*"),
    ],
)
def test_a_chapter_refuses_another_chapters_experiment_before_any_work(
    notebook, experiment, runs, results_dir, monkeypatch, tmp_path
):
    # Empty data and cache folders: reading (or downloading) any data set would fail
    # with another message, or hang, so the refusal must come first.
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MAMLLIB_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("MAMLLIB_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    path = repo_root() / notebook
    with pytest.raises(PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(path),
            str(tmp_path / "out.ipynb"),
            parameters={"preset": "ci", "experiment": experiment},
            cwd=str(path.parent),
            progress_bar=False,
            execution_timeout=120,
        )
    assert error.value.ename == "ValueError"
    assert f"experiment='{experiment}': this notebook runs {runs} experiments only" in (
        error.value.evalue
    )
    assert not results_dir.exists()  # no run folder: refused before the run started
    assert not (tmp_path / "no-cache").exists()


def test_median_ms_warms_up_then_takes_the_median(monkeypatch):
    """A fake clock: the warm-up's 500 ms is not counted; 30, 10, 20 -> 20."""
    import mamllib.notebook

    ticks = iter([0.0, 0.5, 1.0, 1.03, 2.0, 2.01, 3.0, 3.02])
    monkeypatch.setattr(mamllib.notebook.time, "perf_counter", lambda: next(ticks))
    calls = []
    ms = mamllib.notebook.median_ms(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4
    assert ms == pytest.approx(20.0)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        mamllib.notebook.median_ms(lambda: None, repeats=0)
