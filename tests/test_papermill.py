"""One headless run through papermill at the ci preset, then its written metrics."""

import json

import pytest

from mamllib.cli import main, make_artifact, run_notebook
from mamllib.runs import repo_root


@pytest.mark.slow
def test_papermill_run_of_the_sinusoid_chapter_writes_sound_metrics(
    results_dir, monkeypatch
):
    monkeypatch.setenv("CI", "true")
    notebook = repo_root() / "notebooks" / "05-maml-sinusoid.ipynb"
    run, seconds = run_notebook(notebook, "ci", 1, {"n_iterations": 1600})
    assert run.path == results_dir / "05-maml-sinusoid" / "ci" / "seed-1"
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
        run, "test-artifact", "python -m mamllib.cli run ...", seconds, note="how"
    )
    manifest = json.loads((target / "manifest.json").read_text())
    assert "checkpoint-maml.pt" not in manifest["files"]
    assert {"metrics.json", "params-maml.pt"} <= set(manifest["files"])
    assert manifest["training_wall_time_s"] > 0 and manifest["command"]
    assert manifest["note"] == "how"


def test_cli_refuses_bad_input_before_running(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        run_notebook(tmp_path / "missing.ipynb", "ci", 0, {})
    with pytest.raises(ValueError, match="'huge' is not a preset"):
        run_notebook(
            repo_root() / "notebooks" / "05-maml-sinusoid.ipynb", "huge", 0, {}
        )
    with pytest.raises(SystemExit):
        main(["run", "notebooks/05-maml-sinusoid.ipynb", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err
