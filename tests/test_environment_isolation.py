"""Tests do not follow the ``MAMLLIB_*`` variables of the shell that runs them.

A user who set ``MAMLLIB_RESULTS`` (or ``MAMLLIB_CACHE``, ``MAMLLIB_ROOT``,
``MAMLLIB_PRESET``, ``MAMLLIB_PROGRESS``, ``MAMLLIB_RUN_RECORD``) for real runs and then
runs the tests must get the same results as anyone else, and find nothing of the tests
in those folders. ``conftest.py`` removes every ``MAMLLIB_*`` variable but
``MAMLLIB_DATA`` before each test; the last test here runs a few folder-building tests
in a pytest subprocess with all of them pointing at temporary places and checks that
they pass and wrote nothing there.

Before that fix, with ``MAMLLIB_RESULTS`` set, ``test_miniimagenet.py``'s
``test_a_paper_run_stopped_early_is_labelled_partial`` and
``test_a_call_that_trained_nothing_is_not_evaluated_again`` wrote their run folders
into ``$MAMLLIB_RESULTS/mini/paper/`` (their ``RunFolder(..., root=tmp_path)`` loses to
the variable), and the second failed from the next session on: it found the
``metrics.json`` the previous session had left there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import KEPT_VARIABLES, MAMLLIB_PREFIX, QUIET, REPO_ROOT

from mamllib.data.store import DATA_ENV, cache_dir
from mamllib.presets import make_config, resolve_preset
from mamllib.runs import RUN_RECORD_ENV, RunFolder, repo_root, start_run

# Every variable the library reads (mamllib/runs.py, mamllib/data/store.py,
# mamllib/presets/__init__.py, mamllib/train.py) and the tests' own, with a value that
# would redirect or change a test. MAMLLIB_DATA is not here: tests need it.
FOLDERS = ("MAMLLIB_RESULTS", "MAMLLIB_CACHE", "MAMLLIB_ROOT")
SETTINGS = {
    "MAMLLIB_PRESET": "book",
    "MAMLLIB_PROGRESS": "lines",
    "MAMLLIB_TEST_SLOW": "5",
    "MAMLLIB_SOME_FUTURE_SETTING": "on",
}

# Fast tests that build folders (run folders, manifests, metrics) or read a preset.
SELECTION = (
    "tests/test_environment_isolation.py::"
    "test_no_mamllib_variable_but_the_data_folder_reaches_a_test",
    "tests/test_environment_isolation.py::"
    "test_folders_and_preset_resolve_to_their_defaults",
    "tests/test_environment_isolation.py::"
    "test_a_run_opened_by_a_test_lands_in_its_temporary_folder",
    "tests/test_train.py::"
    "test_run_folder_lives_under_the_repo_root_and_writes_atomically",
    "tests/test_miniimagenet.py::test_a_paper_run_stopped_early_is_labelled_partial",
    "tests/test_miniimagenet.py::"
    "test_a_call_that_trained_nothing_is_not_evaluated_again",
)


def test_the_variables_the_library_reads_are_all_covered():
    """If the library starts reading another MAMLLIB_* variable, add it here."""
    read = set()
    for path in (REPO_ROOT / "mamllib").rglob("*.py"):
        text = path.read_text()
        start = 0
        while (start := text.find(MAMLLIB_PREFIX, start)) != -1:
            end = start + len(MAMLLIB_PREFIX)
            while end < len(text) and (text[end].isupper() or text[end] in "_"):
                end += 1
            read.add(text[start:end])
            start = end
    read.discard(MAMLLIB_PREFIX)
    assert {"MAMLLIB_RESULTS", "MAMLLIB_CACHE", "MAMLLIB_PRESET"} <= read
    covered = set(FOLDERS) | set(SETTINGS) | {RUN_RECORD_ENV, DATA_ENV}
    assert read <= covered, f"not isolated in the tests: {sorted(read - covered)}"


def test_no_mamllib_variable_but_the_data_folder_reaches_a_test():
    present = {k: v for k, v in os.environ.items() if k.startswith(MAMLLIB_PREFIX)}
    assert set(present) <= KEPT_VARIABLES | set(QUIET), present
    for name, value in QUIET.items():
        assert present[name] == value


def test_folders_and_preset_resolve_to_their_defaults(tmp_path):
    assert repo_root() == REPO_ROOT
    assert cache_dir() == Path.home() / ".cache" / "mamllib"
    run = RunFolder("probe", "ci", 2, root=tmp_path, create=False)
    assert run.path == tmp_path / "results" / "probe" / "ci" / "seed-2"
    assert resolve_preset("ci") == "ci"
    config = make_config("sinusoid", "ci")
    assert config["preset"] == "ci"


def test_a_run_opened_by_a_test_lands_in_its_temporary_folder(results_dir):
    """``results_dir`` sets MAMLLIB_RESULTS for this test only; ``start_run`` opens
    the folder there and appends to no run record."""
    run = start_run("probe", make_config("sinusoid", "ci", seed=4))
    assert run.path == results_dir / "probe" / "ci" / "seed-4"
    assert json.loads(run.file("config.json").read_text())["preset"] == "ci"


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_folder_building_tests_ignore_the_users_mamllib_variables(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, **SETTINGS, "OMP_NUM_THREADS": "1"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # none needed; saves seconds
    for name in FOLDERS:
        folder = elsewhere / name.lower()
        folder.mkdir(parents=True)
        # What an earlier real run left there: must stay as it is.
        (folder / "left-by-a-user.txt").write_text(name)
        env[name] = str(folder)
    record = elsewhere / "record" / "runs.txt"
    record.parent.mkdir()
    env[RUN_RECORD_ENV] = str(record)
    before = files_under(elsewhere)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTION],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"{len(SELECTION)} passed" in done.stdout, out
    assert files_under(elsewhere) == before, "a test wrote into a redirected folder"
    assert not record.exists()
