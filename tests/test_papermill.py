"""One headless run through papermill at the ci preset, then its written metrics."""

import json

import pytest

from mamllib.cli import UsageError, main, run_notebook
from mamllib.report import make_artifact
from mamllib.runs import repo_root


@pytest.mark.slow
def test_papermill_run_of_the_sinusoid_chapter_writes_sound_metrics(
    results_dir, monkeypatch
):
    monkeypatch.setenv("CI", "true")
    notebook = repo_root() / "notebooks" / "05-maml-sinusoid.ipynb"
    run, seconds = run_notebook(notebook, "ci", 1, {"n_iterations": 1600})
    # the folder the notebook opened (named by its experiment), found by the driver
    assert run.path == results_dir / "sinusoid" / "ci" / "seed-1"
    config = json.loads(run.file("config.json").read_text())
    assert (config["preset"], config["seed"], config["n_iterations"]) == ("ci", 1, 1600)
    metrics = json.loads(run.file("metrics.json").read_text())
    assert metrics["training"]["maml"]["iterations"] == 1600
    assert metrics["status"].startswith("partial")
    k5 = metrics["evaluation"]["k5"]
    maml, pretrained = k5["maml"]["steps"], k5["pretrained"]["steps"]
    assert len(maml) == config["n_eval_steps"] + 1
    assert maml[1]["mean"] < 0.7 * pretrained[1]["mean"]  # MAML adapts, pretraining not
    assert 0 < maml[1]["ci95"] < maml[1]["mean"]
    for name in (
        "history.json",
        "reproduction.json",
        "params-maml.pt",
        "executed.ipynb",
        "figures/figure3-mse-vs-steps.png",
        "figures/figure2-fits.png",
    ):
        assert run.file(name).exists(), name
    # The artifact step copies only small files and records how they were made.
    monkeypatch.setenv("MAMLLIB_ROOT", str(results_dir.parent))
    target = make_artifact(
        run.path, "test-artifact", "python -m mamllib run ...", note="how"
    )
    manifest = json.loads((target / "manifest.json").read_text())
    assert "checkpoint-maml.pt" not in manifest["files"]
    assert {"metrics.json", "params-maml.pt"} <= set(manifest["files"])
    assert manifest["training_wall_time_s"] > 0 and manifest["command"]
    assert manifest["note"] == "how"


def test_cli_refuses_bad_input_before_running(tmp_path, capsys):
    with pytest.raises(UsageError, match="no notebook"):
        run_notebook(tmp_path / "missing.ipynb", "ci", 0, {})
    with pytest.raises(UsageError, match="'huge'"):
        run_notebook(
            repo_root() / "notebooks" / "05-maml-sinusoid.ipynb", "huge", 0, {}
        )
    assert main(["run", "notebooks/05-maml-sinusoid.ipynb", "--preset", "huge"]) == 2
    assert "invalid choice" in capsys.readouterr().err
