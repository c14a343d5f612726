"""Committed artifacts re-evaluate through the current code to their committed numbers.

Runs ``benchmarks/reevaluate_artifacts.py`` on the artifacts whose evaluation takes
seconds (the others take minutes to hours: run the script by hand, see
``benchmarks/README.md``). Each must reproduce every evaluated number of its
``metrics.json`` and every field of its ``reproduction.json``, with its weights
matching the manifest.
"""

import json
import subprocess
import sys

import pytest
from conftest import DATA_SKIPPED, REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "reevaluate_artifacts.py"
# Artifact -> the files it needs (the weights metrics.json was computed from).
QUICK = {
    "sinusoid-paper": (
        "config.json",
        "metrics.json",
        "reproduction.json",
        "manifest.json",
        "params-maml.pt",
        "params-pretrained.pt",
        "params-oracle.pt",
    ),
}


@pytest.mark.parametrize("artifact", sorted(QUICK))
def test_artifact_reevaluates_to_its_committed_numbers(artifact, tmp_path):
    folder = REPO_ROOT / "artifacts" / artifact
    missing = [name for name in QUICK[artifact] if not (folder / name).is_file()]
    if missing:
        pytest.skip(
            f"{DATA_SKIPPED}: {', '.join(missing)} not in {folder}; the committed "
            "artifact is needed to re-evaluate it"
        )
    out = tmp_path / "reevaluation.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), artifact, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())["artifacts"][artifact]
    assert all(check["ok"] for check in record["checks"]), record["checks"]
    assert record["n_numbers"] > 0
    different = [r for r in record["rows"] if not r["equal"]]
    assert record["n_numbers_different"] == 0, different[:5]
    assert not different, different[:5]
    assert record["verdict"] == record["text_verdict"] == "equal"
