"""Shared test set-up: one thread per process (CI has 2 cores), quiet progress bars."""

import os

import pytest
import torch

os.environ.setdefault("MAMLLIB_PROGRESS", "0")
torch.set_num_threads(1)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """Send run folders to a temporary directory."""
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"
