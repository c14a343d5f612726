"""Shared test set-up: one thread per process (CI has 2 cores), quiet progress bars,
a clean ``MAMLLIB_*`` environment, where the data sets are, and a loud line at the end
when data tests were skipped.

Every test (and every session fixture) starts without the ``MAMLLIB_*`` variables of
the user's shell, ``MAMLLIB_DATA`` excepted (:func:`clean_mamllib_environment`): a
``MAMLLIB_RESULTS``, ``MAMLLIB_CACHE``, ``MAMLLIB_ROOT``, ``MAMLLIB_PRESET``... set for
real runs must neither redirect what a test writes nor change what it computes. A test
that needs one sets it with ``monkeypatch`` (e.g. :func:`results_dir`).

The data folder is ``$MAMLLIB_DATA`` if set (a relative path is taken from the
working directory pytest starts in), else ``<repository>/../shared/data``, found from
this file so that it does not depend on the working directory. Data tests that cannot
find their files are skipped with a reason saying where they looked and how to point
them at a copy; :func:`pytest_terminal_summary` repeats it after the results.
"""

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from mamllib.data.store import DATA_ENV

torch.set_num_threads(1)

MAMLLIB_PREFIX = "MAMLLIB_"
KEPT_VARIABLES = frozenset({DATA_ENV})  # where the data sets are: tests need it
QUIET = {"MAMLLIB_PROGRESS": "0"}  # what every test starts with


def clean_environment(patch: pytest.MonkeyPatch) -> None:
    """Remove every ``MAMLLIB_*`` variable but :data:`KEPT_VARIABLES` through
    ``patch`` (restored when it is undone), then set :data:`QUIET`."""
    for name in list(os.environ):
        if name.startswith(MAMLLIB_PREFIX) and name not in KEPT_VARIABLES:
            patch.delenv(name)
    for name, value in QUIET.items():
        patch.setenv(name, value)


@pytest.fixture(scope="session", autouse=True)
def clean_session_environment():
    """The clean environment for session fixtures too (they start before a test's
    own fixtures), restored after the session."""
    with pytest.MonkeyPatch.context() as patch:
        clean_environment(patch)
        yield


@pytest.fixture(autouse=True)
def clean_mamllib_environment(monkeypatch):
    """Each test starts from the clean environment, whatever an earlier test (or code
    it called, e.g. ``python -m mamllib run``) left in ``os.environ``."""
    clean_environment(monkeypatch)


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SKIPPED = "data not found"  # how every data skip reason starts


def data_root(environ=os.environ) -> tuple[Path, str]:
    """The data folder and how it was chosen (for skip reasons)."""
    if environ.get(DATA_ENV):
        root = Path(environ[DATA_ENV]).expanduser().resolve()
        return root, f"{DATA_ENV}={environ[DATA_ENV]}"
    return (
        REPO_ROOT.parent / "shared" / "data",
        f"{DATA_ENV} unset, so the shared data folder beside the repository",
    )


DATA_ROOT, DATA_FROM = data_root()


def missing_data(folder: str, files: tuple[str, ...]) -> str | None:
    """Why tests of ``DATA_ROOT/folder`` cannot run (a skip reason), or None."""
    missing = [name for name in files if not (DATA_ROOT / folder / name).is_file()]
    if not missing:
        return None
    return (
        f"{DATA_SKIPPED}: looked for {folder}/{', '.join(missing)} in {DATA_ROOT} "
        f"({DATA_FROM}). Set {DATA_ENV}=<folder holding {folder}/> to run these "
        f"tests (see {folder}/SOURCE.md in the shared data folder)"
    )


OMNIGLOT_MISSING = missing_data(
    "omniglot", ("images_background.zip", "images_evaluation.zip")
)
MINIIMAGENET_MISSING = missing_data(
    "miniimagenet",
    (
        "splits/train.csv",
        "splits/val.csv",
        "splits/test.csv",
        "images/train.zip",
        "images/val.zip",
        "images/test.zip",
    ),
)
needs_omniglot = pytest.mark.skipif(
    OMNIGLOT_MISSING is not None, reason=OMNIGLOT_MISSING or ""
)
needs_miniimagenet = pytest.mark.skipif(
    MINIIMAGENET_MISSING is not None, reason=MINIIMAGENET_MISSING or ""
)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """Send run folders to a temporary directory."""
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory):
    """A session's Omniglot cache folder (built once, shared by every test file)."""
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="session")
def omniglot_data(omniglot_cache):
    """Omniglot built once per session (~20 s on one core) from the data folder."""
    if OMNIGLOT_MISSING:
        pytest.skip(OMNIGLOT_MISSING)
    from mamllib.data.omniglot import load_omniglot

    return load_omniglot(root=DATA_ROOT, cache=omniglot_cache)


@pytest.fixture(scope="session")
def miniimagenet_cache(tmp_path_factory):
    """A session's MiniImageNet cache folder, shared by every test file."""
    return tmp_path_factory.mktemp("miniimagenet-cache")


@pytest.fixture(scope="session")
def load_miniimagenet_subset(miniimagenet_cache):
    """``load(split, images_per_class)``: a subset of the data folder's copy, cached
    once per session (seconds for a few images per class)."""
    if MINIIMAGENET_MISSING:
        pytest.skip(MINIIMAGENET_MISSING)
    from mamllib.data.miniimagenet import load_miniimagenet

    def load(split: str, images_per_class: int):
        return load_miniimagenet(split, DATA_ROOT, miniimagenet_cache, images_per_class)

    return load


def pytest_terminal_summary(terminalreporter):
    """After the results: one visible line per reason data tests were skipped."""
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            reason = report.longrepr[2].removeprefix("Skipped: ")
            if reason.startswith(DATA_SKIPPED):
                reasons[reason] += 1
    if reasons:
        terminalreporter.section("data tests skipped", sep="!", yellow=True)
        for reason, count in reasons.items():
            terminalreporter.write_line(f"{count} skipped, {reason}", yellow=True)
