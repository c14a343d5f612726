"""The command line: one-line errors before any training, and what it runs."""

import subprocess
import sys

import pytest
import torch

from mamllib.cli import main
from mamllib.runs import repo_root


def error_of(capsys, *argv):
    """Exit status and stderr of ``python -m mamllib ARGV`` run in this process."""
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["train", "sinusoid", "--methods", "bogus"], "--methods bogus"),
        (["train", "sinusoid", "--threads", "0"], "--threads must be >= 1"),
        (["train", "omniglot-5way-1shot", "--seed", "-1"], "--seed must be >= 0"),
        (["train", "sinusoid", "--time-limit", "soon"], "positive duration"),
        (["train", "sinusoid", "--preset", "huge"], "invalid choice: 'huge'"),
        (["train", "omniglot-7way-1shot"], "unknown experiment 'omniglot-7way-1shot'"),
        (["train", "omniglot-5way-1shot", "--iterations", "0"], "--iterations must"),
        (["train", "sinusoid", "--sim-threads", "2"], "--sim-threads is for"),
        (["paper", "sinusoid-2", "--time-budget", "1h"], "unknown experiment"),
    ],
)
def test_command_line_mistakes_are_one_line_with_exit_2_and_no_run(
    capsys, results_dir, argv, says
):
    status, err = error_of(capsys, *argv)
    assert status == 2, err
    assert says in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not results_dir.exists() or not any(results_dir.rglob("*")), "a run folder"


def test_notebook_driver_refuses_preset_and_seed_as_parameters(capsys, results_dir):
    """``-p preset book`` would run the book preset while the run folder and the
    report say ci: refused, with the flags to use instead."""
    argv = ["run", "notebooks/01-gradient-descent.ipynb", "--preset", "ci"]
    status, err = error_of(capsys, *argv, "-p", "preset", "book", "-p", "seed", "3")
    assert status == 2
    assert "--preset and --seed" in err
    assert not results_dir.exists() or not any(results_dir.rglob("*"))


def test_help_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "mamllib", "--help"],
        cwd=repo_root(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    for command in ("train", "evaluate", "artifact", "paper", "run", "presets"):
        assert command in done.stdout


def test_train_then_evaluate_the_sinusoid_at_ci(capsys, results_dir, monkeypatch):
    """``train sinusoid --preset ci`` trains the three methods, evaluates and writes
    the results; ``evaluate`` then scores the same checkpoints to the same numbers.
    ``--preset`` wins over ``MAMLLIB_PRESET``, which is for notebooks."""
    monkeypatch.setenv("MAMLLIB_PRESET", "book")
    monkeypatch.setenv("MAMLLIB_PROGRESS", "0")
    assert main(["train", "sinusoid", "--preset", "ci", "--iterations", "60"]) == 0
    run = results_dir / "sinusoid" / "ci" / "seed-0"
    metrics = (run / "metrics.json").read_text()
    assert '"status": "partial: ci preset, 60 of 70,000 meta-iterations"' in metrics
    # --iterations stops MAML; the baselines train to the preset's iterations
    for method, iterations in (("maml", 60), ("pretrained", 1500), ("oracle", 1500)):
        state = torch.load(run / f"checkpoint-{method}.pt", weights_only=False)
        assert state["iteration"] == iterations
    capsys.readouterr()
    assert main(["evaluate", "sinusoid", "--preset", "ci", "--iterations", "60"]) == 2
    assert main(["evaluate", "sinusoid", "--preset", "ci"]) == 0
    assert (run / "metrics.json").read_text() == metrics


def test_paper_runner_continues_from_the_artifact_and_refreshes_it(
    capsys, tmp_path, monkeypatch
):
    """``paper sinusoid`` trains for its budget, evaluates and writes a partial
    artifact with checkpoints; on a fresh clone (no run folder) it continues from the
    artifact's checkpoints, and the artifact's other files and history stay."""
    import shutil

    monkeypatch.setenv("MAMLLIB_ROOT", str(tmp_path))
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    argv = ["paper", "sinusoid", "--device", "cpu", "--time-budget", "1.5"]
    assert main(argv) == 0
    artifact = tmp_path / "artifacts" / "sinusoid-paper-partial"
    first = torch.load(artifact / "checkpoint-maml.pt", weights_only=False)["iteration"]
    assert first > 0
    (artifact / "notes.txt").write_text("kept")
    shutil.rmtree(tmp_path / "results")  # a fresh clone: only the artifact is there
    assert main(argv) == 0
    second = torch.load(artifact / "checkpoint-maml.pt", weights_only=False)
    assert second["iteration"] > first
    assert (artifact / "notes.txt").read_text() == "kept"
    manifest = (artifact / "manifest.json").read_text()
    assert '"previous"' in manifest and "notes.txt" in manifest
    assert "partial: paper preset" in (artifact / "metrics.json").read_text()
