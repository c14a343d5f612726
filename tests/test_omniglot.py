"""Omniglot: counts, splits, rotations, episodes, preprocessing, and every way to fail.

Uses the data folder's copy (``$MAMLLIB_DATA``, else ``../shared/data`` beside the
repository; see conftest.py), and builds the preprocessed cache once per session in a
temporary folder. No network: the download path is exercised with a stand-in URL
opener.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, needs_omniglot
from torch import nn

from mamllib.data import omniglot as om
from mamllib.data import omniglot_fetch
from mamllib.data.store import CACHE_ENV
from mamllib.maml import cross_entropy_loss, meta_loss_loop, meta_loss_vmap

ARCHIVE_DIR = DATA_ROOT / "omniglot"

pytestmark = needs_omniglot


@pytest.fixture(autouse=True)
def shared_data(monkeypatch):
    """Every test sees the data folder via MAMLLIB_DATA and no stray cache setting."""
    monkeypatch.setenv(om.DATA_ENV, str(DATA_ROOT))
    monkeypatch.delenv(CACHE_ENV, raising=False)


@pytest.fixture(scope="session")
def cache(omniglot_cache):
    return omniglot_cache


@pytest.fixture(scope="session")
def data(omniglot_data):
    return omniglot_data


@pytest.fixture(scope="session")
def train_tasks(data):
    return om.tasks_for_split(data, "train")


@pytest.fixture(scope="session")
def test_tasks(data):
    return om.tasks_for_split(data, "test")


def rezip(src: Path, dst: Path, drop=lambda name: False, replace=None) -> Path:
    """A copy of ``src`` without the entries ``drop`` selects, some bytes replaced."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if not drop(info.filename):
                data = replace.get(info.filename) or zin.read(info)
                # Stored, not deflated: fast, and new bytes for the same content.
                zout.writestr(info, data, compress_type=zipfile.ZIP_STORED)
    return dst


def first_png(archive: Path) -> str:
    with zipfile.ZipFile(archive) as z:
        return next(n for n in z.namelist() if n.endswith(".png"))


def leftovers(folder: Path) -> list[str]:
    """Anything in ``folder`` that a failed build or download could have left."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------
# Content, preprocessing, cache
# ------------------------------------------------------------------------------------


def test_counts_50_alphabets_1623_characters_20_drawings(data):
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.n_alphabets == 50 and data.n_characters == 1623
    assert len({data.name(i) for i in range(1623)}) == 1623
    assert int(data.background.sum()) == 964
    assert len(set(a for a, b in zip(data.alphabets, data.background) if b)) == 30
    # Every drawing has some ink, and ink is the bright value (cbfinn/maml inverts).
    ink = data.images.flatten(2).float().mean(-1) / 255
    assert ink.min() > 0 and ink.mean() < 0.2


def test_lanczos_is_really_applied(data):
    sample = data.images[::10]
    assert len(sample.unique()) > 100  # grey anti-aliased edges, not only 0 and 255
    grey = ((sample > 0) & (sample < 255)).float().mean()
    assert grey > 0.05
    # The Pillow trap: a 1-bit image resized "with Lanczos" stays binary.
    from PIL import Image

    with zipfile.ZipFile(ARCHIVE_DIR / om.ARCHIVES[0]) as z:
        with Image.open(
            io.BytesIO(z.read(first_png(ARCHIVE_DIR / om.ARCHIVES[0])))
        ) as im:
            assert im.mode == "1"
            trap = im.resize((28, 28), resample=Image.Resampling.LANCZOS)
            assert len(np.unique(np.asarray(trap))) == 2
            assert len(set(om.preprocess_image(im).flatten().tolist())) > 2


def test_cache_reloads_fast_and_identically(data, cache):
    path = om.cache_file(cache)
    assert path.is_file() and f"v{om.CACHE_VERSION}" in path.name
    assert leftovers(cache) == [path.name]  # no temporary files
    again = om.load_omniglot(root=Path("/nonexistent"), cache=cache)  # cache wins
    assert torch.equal(again.images, data.images) and again.alphabets == data.alphabets


# ------------------------------------------------------------------------------------
# Splits and rotations
# ------------------------------------------------------------------------------------


def test_paper_and_original_splits_sizes_and_disjointness():
    paper = om.split_characters("paper")
    original = om.split_characters("original")
    assert {k: len(v) for k, v in paper.items()} == {"train": 1200, "test": 423}
    assert {k: len(v) for k, v in original.items()} == {
        "train": 1100,
        "val": 100,
        "test": 423,
    }
    for split in (paper, original):
        ids = torch.cat(list(split.values()))
        assert sorted(ids.tolist()) == list(range(1623))  # a partition
    assert torch.equal(paper["test"], original["test"])
    merged = torch.cat([original["train"], original["val"]]).sort().values
    assert torch.equal(merged, paper["train"])
    assert torch.equal(paper["train"], om.split_characters("paper")["train"])
    assert not torch.equal(
        paper["train"], om.split_characters("paper", seed=2)["train"]
    )


def test_split_ignores_alphabets(data):
    split = om.split_characters("paper")
    for part in ("train", "test"):
        # Both archives and most alphabets appear on both sides.
        assert 0 < data.background[split[part]].float().mean() < 1
        assert len({data.alphabets[i] for i in split[part].tolist()}) >= 45


def test_rotations_are_new_classes_within_each_split(data, train_tasks, test_tasks):
    assert (train_tasks.n_classes, test_tasks.n_classes) == (4800, 1692)
    assert train_tasks.images.shape == (4800, 20, 1, 28, 28)
    c = 7 * 4  # character 7 of the split, no rotation
    for r in range(4):
        expected = torch.rot90(train_tasks.images[c], r, dims=(-2, -1))
        assert torch.equal(train_tasks.images[c + r], expected)
    char = int(train_tasks.sources[7])
    assert torch.equal(train_tasks.images[c, :, 0], data.images[char])
    train_chars = set(train_tasks.source_of(torch.arange(4800)).tolist())
    test_chars = set(test_tasks.source_of(torch.arange(1692)).tolist())
    assert len(train_chars) == 1200 and len(test_chars) == 423
    assert train_chars.isdisjoint(test_chars)
    plain = om.tasks_for_split(data, "test", rotations=False)
    assert plain.n_classes == 423
    assert repr(train_tasks) == (
        "EpisodeSampler(Omniglot train split, scheme='paper': 1200 characters x 4 "
        "rotations = 4800 classes, 20 drawings each)"
    )


def test_the_default_split_is_the_papers_with_rotations(data, train_tasks):
    """tasks_for_split(data, split) is the paper scheme with rotations as classes."""
    tasks = om.tasks_for_split(data, "train", scheme="paper", rotations=True)
    assert type(tasks) is type(train_tasks) and torch.equal(
        tasks.images, train_tasks.images
    )


def test_no_test_character_is_ever_sampled_in_training(train_tasks):
    test_ids = set(om.split_characters("paper")["test"].tolist())
    batch = train_tasks.sample(200, 20, 1, generator=torch.Generator().manual_seed(0))
    seen = set(train_tasks.source_of(batch.classes).flatten().tolist())
    assert seen.isdisjoint(test_ids)
    assert batch.classes.remainder(4).unique().tolist() == [0, 1, 2, 3]


def test_val_split_needs_the_original_scheme(data):
    with pytest.raises(ValueError, match="original"):
        om.tasks_for_split(data, "val")
    assert om.tasks_for_split(data, "val", scheme="original").n_classes == 400


# ------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------


def test_episode_shapes_labels_and_distinct_drawings(train_tasks):
    g = torch.Generator().manual_seed(0)
    b = train_tasks.sample(32, 5, 1, n_query=3, generator=g)
    assert len(b) == 32
    assert b.x_support.shape == (32, 5, 1, 28, 28) and b.x_query.shape == (
        32,
        15,
        1,
        28,
        28,
    )
    assert b.x_support.dtype == torch.float32 and b.y_support.dtype == torch.int64
    assert 0 <= b.x_query.min() and b.x_query.max() <= 1
    assert torch.equal(b.y_support, torch.arange(5).expand(32, 5))
    assert torch.equal(b.y_query, torch.arange(5).repeat_interleave(3).expand(32, 15))
    for labels, k in ((b.y_support, 1), (b.y_query, 3)):
        assert (torch.stack([(labels == c).sum(1) for c in range(5)]) == k).all()
    # Distinct characters per task, distinct drawings per class (support vs query).
    chars = train_tasks.source_of(b.classes)
    assert all(len(set(row.tolist())) == 5 for row in chars)
    assert all(len(set(d.tolist())) == 4 for d in b.examples.flatten(0, 1))
    # The images are those the indices name.
    t, n = 3, 2
    expected = train_tasks.images[b.classes[t, n], b.examples[t, n]].float() / 255
    torch.testing.assert_close(b.x_support[t, n], expected[0])
    torch.testing.assert_close(b.x_query[t, 3 * n : 3 * n + 3], expected[1:])


def test_labels_are_a_fresh_permutation_per_task(train_tasks):
    b = train_tasks.sample(500, 5, 1, generator=torch.Generator().manual_seed(1))
    # If labels followed class order, label 0 would always hold the smallest class.
    smallest = b.classes.argmin(1)
    counts = torch.bincount(smallest, minlength=5)
    assert (counts > 60).all()


def test_sampling_is_reproducible_per_seed(train_tasks):
    def draw(seed):
        return train_tasks.sample(
            4, 5, 5, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = draw(3), draw(3), draw(4)
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert torch.equal(a.classes, b.classes)
    assert not torch.equal(a.classes, c.classes)


def test_bad_episode_sizes_are_refused(train_tasks):
    with pytest.raises(ValueError, match="= 21 but each character .* 20 drawings"):
        train_tasks.sample(2, 5, 10, n_query=11)
    with pytest.raises(ValueError, match="n_way=1201 but .* 1200 characters"):
        train_tasks.sample(2, 1201, 1)


def test_episodes_feed_the_meta_objective(train_tasks):
    b = train_tasks.sample(3, 5, 1, generator=torch.Generator().manual_seed(0))
    b = b.to("cpu", torch.float64)
    assert b.x_support.dtype == torch.float64 and b.y_support.dtype == torch.int64
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5)).double()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    args = (cross_entropy_loss, 0.4, 1)
    loop = meta_loss_loop(model, params, b, *args)
    fast = meta_loss_vmap(model, params, b, *args)
    torch.testing.assert_close(loop, fast)


# ------------------------------------------------------------------------------------
# Missing, partial and corrupt archives
# ------------------------------------------------------------------------------------


def test_missing_local_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(om.DATA_ENV, str(tmp_path / "data"))
    with pytest.raises(om.OmniglotDataError) as err:
        om.load_omniglot(cache=tmp_path / "cache")
    message = str(err.value)
    assert "images_background.zip" in message and str(tmp_path / "data") in message
    assert om.DATA_ENV in message and "omniglot/" in message
    assert leftovers(tmp_path) == []


def test_no_local_copy_and_no_download_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv(om.DATA_ENV)
    with pytest.raises(om.OmniglotDataError, match=om.DATA_ENV):
        om.load_omniglot(cache=tmp_path, download=False)


def _local(tmp_path, background: Path) -> Path:
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    (folder / om.ARCHIVES[0]).write_bytes(background.read_bytes())
    (folder / om.ARCHIVES[1]).write_bytes((ARCHIVE_DIR / om.ARCHIVES[1]).read_bytes())
    return tmp_path / "data"


def test_truncated_archive_is_reported_and_nothing_is_cached(tmp_path):
    src = ARCHIVE_DIR / om.ARCHIVES[0]
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    root = _local(tmp_path, truncated)
    with pytest.raises(om.OmniglotDataError) as err:
        om.load_omniglot(root=root, cache=tmp_path / "cache")
    message = str(err.value)
    assert "images_background.zip" in message and "truncated" in message
    assert om.URLS[om.ARCHIVES[0]] in message
    assert leftovers(tmp_path / "cache") == []


def test_missing_character_is_reported_with_expected_and_found(tmp_path):
    src = ARCHIVE_DIR / om.ARCHIVES[0]
    short = rezip(
        src, tmp_path / "short.zip", drop=lambda n: "/Latin/character07/" in n
    )
    with pytest.raises(
        om.OmniglotDataError, match="964 characters.*found 30 alphabets and 963"
    ):
        om.read_archive(short, om.ARCHIVES[0])


def test_missing_drawing_is_reported(tmp_path):
    src = ARCHIVE_DIR / om.ARCHIVES[0]
    short = rezip(src, tmp_path / "short.zip", drop=lambda n: n.endswith("0689_20.png"))
    with pytest.raises(
        om.OmniglotDataError, match="found 19 in images_background/Latin/character07"
    ):
        om.read_archive(short, om.ARCHIVES[0])


def test_bad_png_is_named(tmp_path):
    src = ARCHIVE_DIR / om.ARCHIVES[0]
    bad = first_png(src)
    broken = rezip(src, tmp_path / "bad.zip", replace={bad: b"\x89PNG not really"})
    with pytest.raises(om.OmniglotDataError, match=f"{bad} is not a valid PNG"):
        om.read_archive(broken, om.ARCHIVES[0])


def test_failure_after_the_first_archive_leaves_no_cache(tmp_path, monkeypatch, data):
    def fail_on_second(path, name=None):
        if Path(path).name == om.ARCHIVES[1]:
            raise om.OmniglotDataError("simulated: evaluation archive is corrupt")
        return data.images[:964], data.alphabets[:964], data.characters[:964]

    monkeypatch.setattr(om, "read_archive", fail_on_second)
    with pytest.raises(om.OmniglotDataError, match="simulated"):
        om.load_omniglot(cache=tmp_path)
    assert leftovers(tmp_path) == []


def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, data):
    om.cache_file(tmp_path).write_bytes(b"not a torch file")
    calls = []

    def fake_read(path, name=None):
        calls.append(name)
        n = 964 if name == om.ARCHIVES[0] else 659
        s = slice(0, 964) if n == 964 else slice(964, None)
        return data.images[s], data.alphabets[s], data.characters[s]

    monkeypatch.setattr(om, "read_archive", fake_read)
    rebuilt = om.load_omniglot(cache=tmp_path)
    assert calls == list(om.ARCHIVES) and torch.equal(rebuilt.images, data.images)
    assert leftovers(tmp_path) == [om.cache_file(tmp_path).name]


# ------------------------------------------------------------------------------------
# Download (no network: a stand-in for urlopen)
# ------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, length: int | None = None):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body) if length is None else length)}


def serve(monkeypatch, bodies: dict[str, bytes], lengths: dict[str, int] | None = None):
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        name = url.rsplit("/", 1)[-1]
        return FakeResponse(bodies[name], (lengths or {}).get(name))

    monkeypatch.setattr(omniglot_fetch, "urlopen", fake_urlopen)
    return requested


def test_download_goes_to_the_cache_and_is_verified(tmp_path, monkeypatch):
    monkeypatch.delenv(om.DATA_ENV)
    bodies = {name: (ARCHIVE_DIR / name).read_bytes() for name in om.ARCHIVES}
    requested = serve(monkeypatch, bodies)
    paths = om.archive_paths(cache=tmp_path)
    assert requested == [om.URLS[name] for name in om.ARCHIVES]
    assert requested[0] == (
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
        "images_background.zip"
    )
    for name, path in paths.items():
        assert (
            path == tmp_path / "omniglot" / name and path.read_bytes() == bodies[name]
        )
    assert leftovers(tmp_path) == sorted(om.ARCHIVES)
    om.archive_paths(cache=tmp_path)  # already there: no second download
    assert len(requested) == 2


def test_download_with_unknown_bytes_is_accepted_on_content(tmp_path, monkeypatch):
    # A re-encoded copy (stored, not deflated): new bytes, same content.
    src = ARCHIVE_DIR / om.ARCHIVES[1]
    body = rezip(src, tmp_path / "stored.zip").read_bytes()
    assert body != src.read_bytes()
    serve(monkeypatch, {om.ARCHIVES[1]: body})
    path = om.download_archive(om.ARCHIVES[1], tmp_path / "cache")
    assert path.read_bytes() == body


def test_download_with_wrong_content_is_refused_and_removed(tmp_path, monkeypatch):
    src = ARCHIVE_DIR / om.ARCHIVES[1]
    body = rezip(
        src, tmp_path / "short.zip", drop=lambda n: "/Angelic/character01/" in n
    )
    serve(monkeypatch, {om.ARCHIVES[1]: body.read_bytes()})
    with pytest.raises(om.OmniglotDataError) as err:
        om.download_archive(om.ARCHIVES[1], tmp_path / "cache")
    message = str(err.value)
    assert om.URLS[om.ARCHIVES[1]] in message and "failed verification" in message
    assert "659 characters" in message and om.DATA_ENV in message
    assert leftovers(tmp_path / "cache") == []


def test_partial_download_is_refused_and_removed(tmp_path, monkeypatch):
    full = (ARCHIVE_DIR / om.ARCHIVES[0]).read_bytes()
    serve(monkeypatch, {om.ARCHIVES[0]: full[:1000]}, {om.ARCHIVES[0]: len(full)})
    with pytest.raises(om.OmniglotDataError, match="partial: 1,000 of"):
        om.download_archive(om.ARCHIVES[0], tmp_path)
    assert leftovers(tmp_path) == []


def test_truncated_download_without_length_fails_checksum_and_content(
    tmp_path, monkeypatch
):
    full = (ARCHIVE_DIR / om.ARCHIVES[0]).read_bytes()
    monkeypatch.setattr(
        omniglot_fetch,
        "urlopen",
        lambda url, timeout=None: io.BytesIO(full[: len(full) // 3]),
    )
    with pytest.raises(
        om.OmniglotDataError, match="failed verification.*not a complete zip"
    ):
        om.download_archive(om.ARCHIVES[0], tmp_path)
    assert leftovers(tmp_path) == []


def test_network_error_names_the_url_and_the_local_alternative(tmp_path, monkeypatch):
    from urllib.error import URLError

    def offline(url, timeout=None):
        raise URLError("no route to host")

    monkeypatch.setattr(omniglot_fetch, "urlopen", offline)
    with pytest.raises(om.OmniglotDataError) as err:
        om.download_archive(om.ARCHIVES[0], tmp_path)
    message = str(err.value)
    assert om.URLS[om.ARCHIVES[0]] in message and "no route to host" in message
    assert om.DATA_ENV in message
    assert leftovers(tmp_path) == []


def test_maml_on_omniglot_learns_well_above_chance_in_a_short_run(
    train_tasks, test_tasks, monkeypatch
):
    """ci preset (60 meta-iterations of 4 tasks): far from the paper, far above 1/5."""
    from mamllib.experiments.fewshot import evaluate_maml, train_maml
    from mamllib.presets import make_config

    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    config = make_config("omniglot-5way-1shot", "ci")
    result = train_maml(config, train_tasks)
    assert result.history["loss"][-1] < result.history["loss"][0]
    evaluation = evaluate_maml(result.params, test_tasks, config)
    at_test = evaluation["at_test_steps"]  # after 3 inner steps, as the paper tests
    assert at_test["n"] == config["n_eval_tasks"]
    assert at_test["mean"] - at_test["ci95"] > 1 / config["n_way"] + 0.1, at_test
    # Adaptation is what does it: before any inner step the net is near chance.
    assert evaluation["steps"][0]["mean"] < at_test["mean"] - 0.15, evaluation["steps"]


def test_run_name_is_the_folder_the_command_line_and_chapters_share():
    from mamllib.experiments import run_name
    from mamllib.presets import make_config

    config = make_config("omniglot-20way-5shot", "ci")
    assert run_name(config) == "omniglot-20way-5shot"
    config = make_config("miniimagenet-5way-1shot", "ci", first_order=True)
    assert run_name(config) == "miniimagenet-5way-1shot-first-order"


def test_the_command_resumes_a_finished_run_without_evaluating_it_again(
    data, cache, tmp_path
):
    """``python -m mamllib train omniglot-5way-1shot`` at the ci preset: a second call
    on a finished run trains nothing and leaves metrics.json alone (GPU minutes go to
    training);
    --reevaluate evaluates the same weights again and gets the same numbers, which is
    why skipping is safe; a run retrained from scratch is evaluated again."""
    import os
    import subprocess
    import sys

    from mamllib.runs import read_json, repo_root

    env = {
        **os.environ,
        "MAMLLIB_RESULTS": str(tmp_path),
        CACHE_ENV: str(cache),
        "MAMLLIB_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MAMLLIB_PRESET", None)

    def script(*extra):
        proc = subprocess.run(
            [sys.executable, "-m", "mamllib", "train", "omniglot-5way-1shot"]
            + ["--preset", "ci", *extra],
            cwd=repo_root(),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    metrics = tmp_path / "omniglot-5way-1shot/ci/seed-0/metrics.json"
    first = script()
    assert "accuracy after 3 steps" in first, first
    before = (metrics.stat().st_mtime_ns, read_json(metrics))
    second = script()
    assert "not evaluated again" in second and "accuracy after" not in second, second
    assert (metrics.stat().st_mtime_ns, read_json(metrics)) == before
    third = script("--reevaluate")
    assert "accuracy after 3 steps" in third, third
    again = read_json(metrics)
    assert again["test_accuracy"] == before[1]["test_accuracy"]
    assert again["steps"] == before[1]["steps"]
    # Retrained from scratch (checkpoint deleted) to the same iterations: new weights,
    # so it is evaluated even though metrics.json holds those iterations.
    (metrics.parent / "checkpoint-maml.pt").unlink()
    fourth = script()
    assert "accuracy after 3 steps" in fourth, fourth
