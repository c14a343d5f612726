"""MiniImageNet: loader, cache, episodes, every way to fail; the 32-filter max-pool
conv-4's meta-gradient (finite differences, first vs second order, fast paths);
training glue (gradient clipping, checkpoint selection on validation classes).

Counts and episodes use a small subset of the data folder's copy (``$MAMLLIB_DATA``,
else ``../shared/data`` beside the repository; skipped, loudly, if it is absent); the
failure cases use tiny fake copies built in ``tmp_path`` (a few classes of 4 images,
the expected counts patched to match).
"""

import errno
import io
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, needs_miniimagenet
from gradcheck import assert_matches_finite_differences, flat
from PIL import Image

from mamllib.data import miniimagenet as mi
from mamllib.data import miniimagenet_files as mi_files
from mamllib.data import store
from mamllib.maml import adapt, cross_entropy_loss, meta_gradient, task_loss
from mamllib.models import Conv4, init_params

SHARED_DATA = DATA_ROOT
shared = needs_miniimagenet
SUBSET = 5  # images per class cached from the shared copy (seconds to build)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(mi.DATA_ENV, raising=False)
    monkeypatch.delenv(mi.CACHE_ENV, raising=False)


@pytest.fixture(scope="session")
def cache(miniimagenet_cache):
    return miniimagenet_cache


@pytest.fixture(scope="session")
def splits(load_miniimagenet_subset):
    return {s: load_miniimagenet_subset(s, SUBSET) for s in mi.SPLITS}


# ------------------------------------------------------------------------------------
# The shared copy: counts, labels, disjoint splits, cache, episodes
# ------------------------------------------------------------------------------------


@shared
def test_counts_labels_and_disjoint_splits(splits):
    for split, data in splits.items():
        assert data.images.shape == (mi.N_CLASSES[split], SUBSET, 84, 84, 3)
        assert data.images.dtype == np.uint8
        assert len(set(data.classes)) == mi.N_CLASSES[split]
        for label, files in zip(data.classes, data.files):
            assert len(files) == SUBSET and all(f.startswith(label) for f in files)
    train, val, test = (set(splits[s].classes) for s in mi.SPLITS)
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 100


@shared
def test_csv_has_600_images_per_class():
    for split in mi.SPLITS:
        path = SHARED_DATA / "miniimagenet" / "splits" / f"{split}.csv"
        classes = mi.read_split(path, split)
        assert len(classes) == mi.N_CLASSES[split]
        assert {len(v) for v in classes.values()} == {600}


@shared
def test_cache_is_a_memory_map_reloaded_identically(splits, cache):
    again = mi.load_miniimagenet("val", SHARED_DATA, cache, images_per_class=SUBSET)
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, splits["val"].images)
    assert again.classes == splits["val"].classes
    # The cached pixels are the decoded JPEG's.
    name = splits["val"].files[0][0]
    with zipfile.ZipFile(SHARED_DATA / "miniimagenet/images/val.zip") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith(name)))
    assert np.array_equal(mi.decode_image(data), again.images[0, 0])


@shared
def test_episodes_shapes_labels_pixels(splits):
    tasks = mi.tasks_for_split(splits["train"])
    g = torch.Generator().manual_seed(0)
    batch = tasks.sample(3, 5, 1, 4, generator=g)
    assert batch.x_support.shape == (3, 5, 3, 84, 84)
    assert batch.x_query.shape == (3, 20, 3, 84, 84)
    assert batch.y_support.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert batch.y_query[0].tolist() == [c for c in range(5) for _ in range(4)]
    assert len(batch) == 3
    for t in range(3):
        assert len(set(batch.classes[t].tolist())) == 5
        for j in range(5):
            assert len(set(batch.examples[t, j].tolist())) == 5
    # Pixels: the cache's uint8 / 255 (cbfinn/maml), channel-first.
    c, e = batch.classes[1, 2].item(), batch.examples[1, 2, 0].item()
    expected = torch.from_numpy(np.array(splits["train"].images[c, e])).permute(2, 0, 1)
    torch.testing.assert_close(batch.x_support[1, 2], expected.float() / 255)
    again = tasks.sample(3, 5, 1, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x_query, batch.x_query)


@shared
def test_bad_episode_sizes_are_refused(splits):
    tasks = mi.tasks_for_split(splits["val"])
    with pytest.raises(ValueError, match="n_way=17 but the MiniImageNet val split"):
        tasks.sample(1, 17, 1, 1)
    with pytest.raises(ValueError, match=r"= 16 but .* 5 images \(images_per_class"):
        tasks.sample(1, 5, 1, 15)  # 16 > the 5 cached per class
    with pytest.raises(ValueError, match=">= 1"):
        tasks.sample(1, 5, 0, 1)


@shared
def test_the_sampler_is_a_channel_first_view_of_the_cache(splits):
    tasks = mi.tasks_for_split(splits["test"])
    assert repr(tasks) == (
        "EpisodeSampler(MiniImageNet test split: 20 classes, 5 images each "
        "(images_per_class=5 of 600))"
    )
    # A channel-first view of the memory map, not a copy.
    assert np.shares_memory(tasks.images, splits["test"].images)
    assert tasks.images.shape == (20, SUBSET, 3, 84, 84)


# ------------------------------------------------------------------------------------
# Tiny fake copies: layouts and failures
# ------------------------------------------------------------------------------------

FAKE_CLASSES = {"train": 3, "val": 2, "test": 2}
FAKE_PER_CLASS = 4


def jpeg(seed: int, size: int = 84) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def fake_counts(monkeypatch) -> None:
    """The fake copy's counts, where the CSVs are checked and where caches are sized."""
    for module in (mi, mi_files):
        monkeypatch.setattr(module, "N_CLASSES", FAKE_CLASSES)
        monkeypatch.setattr(module, "IMAGES_PER_CLASS", FAKE_PER_CLASS)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A tiny MiniImageNet in ``tmp_path/data/miniimagenet`` (zips), counts patched."""
    fake_counts(monkeypatch)
    return make_fake(tmp_path / "data" / "miniimagenet")


def make_fake(folder: Path, layout: str = "zip", replace=None, drop=()) -> Path:
    replace = replace or {}
    (folder / "splits").mkdir(parents=True)
    (folder / "images").mkdir()
    seed = 0
    for split, n_classes in FAKE_CLASSES.items():
        rows = ["filename,label"]
        members = {}
        for c in range(n_classes):
            label = f"n{split}{c:04d}"
            for i in range(FAKE_PER_CLASS):
                name = f"{label}{i:08d}.jpg"
                rows.append(f"{name},{label}")
                seed += 1
                if name not in drop:
                    members[f"{split}/{label}/{name}"] = replace.get(name) or jpeg(seed)
        (folder / "splits" / f"{split}.csv").write_text("\n".join(rows) + "\n")
        if layout == "zip":
            with zipfile.ZipFile(folder / "images" / f"{split}.zip", "w") as z:
                for member, data in members.items():
                    z.writestr(member, data)
        else:
            for member, data in members.items():
                path = folder / "images" / member
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_fake_copy_loads_from_zips_and_folders(tmp_path, monkeypatch, layout):
    fake_counts(monkeypatch)
    make_fake(tmp_path / "data" / "miniimagenet", layout)
    monkeypatch.setenv(mi.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(mi.CACHE_ENV, str(tmp_path / "cache"))
    data = mi.load_miniimagenet("train")
    assert data.images.shape == (3, FAKE_PER_CLASS, 84, 84, 3)
    assert data.classes == ["ntrain0000", "ntrain0001", "ntrain0002"]
    subset = mi.load_miniimagenet("train", images_per_class=2)
    assert np.array_equal(subset.images, data.images[:, :2])
    assert mi.cache_file("train", 2, tmp_path / "cache").is_file()


def test_no_copy_named_says_where_to_get_one():
    with pytest.raises(mi.MiniImagenetDataError) as error:
        mi.load_miniimagenet("val", cache="/nonexistent-cache")
    message = str(error.value)
    assert mi.DATA_ENV in message and "meta-learning-lstm" in message
    assert "ImageNet" in message


def test_missing_csv_and_missing_images_are_named(tmp_path, fake):
    (fake / "splits" / "val.csv").unlink()
    with pytest.raises(mi.MiniImagenetDataError, match=r"val\.csv not found"):
        mi.load_miniimagenet("val", tmp_path / "data", tmp_path / "cache")
    (fake / "images" / "test.zip").unlink()
    with pytest.raises(mi.MiniImagenetDataError, match="images for the test split"):
        mi.load_miniimagenet("test", tmp_path / "data", tmp_path / "cache")


def test_missing_image_is_named_and_nothing_is_cached(tmp_path, monkeypatch):
    fake_counts(monkeypatch)
    make_fake(tmp_path / "mini", drop={"ntrain000100000003.jpg"})
    with pytest.raises(mi.MiniImagenetDataError, match="ntrain000100000003.jpg"):
        mi.load_miniimagenet("train", tmp_path / "mini", tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "payload, message",
    [(b"not a jpeg", "does not decode"), (jpeg(0, size=80), "80x80, expected 84x84")],
)
def test_bad_image_is_named_and_no_cache_is_left(
    tmp_path, monkeypatch, payload, message
):
    fake_counts(monkeypatch)
    make_fake(tmp_path / "mini", replace={"nval000100000002.jpg": payload})
    with pytest.raises(mi.MiniImagenetDataError, match=message) as error:
        mi.load_miniimagenet("val", tmp_path / "mini", tmp_path / "cache")
    assert "nval000100000002.jpg" in str(error.value)
    assert leftovers(tmp_path / "cache") == []  # no half-written cache, no temp file
    # A subset that does not include the bad image builds fine.
    data = mi.load_miniimagenet("val", tmp_path / "mini", tmp_path / "cache", 2)
    assert data.images.shape[:2] == (2, 2)


def test_wrong_counts_and_shared_classes_are_refused(tmp_path, fake):
    csv = fake / "splits" / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one image fewer in the last class
    with pytest.raises(mi.MiniImagenetDataError, match="expected 4 images per class"):
        mi.load_miniimagenet("train", tmp_path / "data", tmp_path / "cache")
    csv.write_text("\n".join(lines[: 1 + 2 * FAKE_PER_CLASS]) + "\n")  # 2 classes
    with pytest.raises(mi.MiniImagenetDataError, match="expected 3 classes"):
        mi.load_miniimagenet("train", tmp_path / "data", tmp_path / "cache")
    # A val class that is also a test class.
    test_csv = fake / "splits" / "test.csv"
    val_rows = (fake / "splits" / "val.csv").read_text().splitlines()[1:]
    test_csv.write_text("\n".join(["filename,label", *val_rows[:FAKE_PER_CLASS]]))
    with pytest.raises(mi.MiniImagenetDataError, match="splits must be disjoint"):
        mi.load_miniimagenet("val", tmp_path / "data", tmp_path / "cache")
    csv.write_text("file,class\n")
    with pytest.raises(mi.MiniImagenetDataError, match="header"):
        mi.load_miniimagenet("train", tmp_path / "data", tmp_path / "cache")


def test_damaged_cache_is_rebuilt_and_bad_arguments_refused(tmp_path, fake):
    args = ("test", tmp_path / "data", tmp_path / "cache")
    expected = np.array(mi.load_miniimagenet(*args).images)
    path = mi.cache_file("test", cache=tmp_path / "cache")
    # Truncated (a new file: truncating a memory-mapped one in place is a SIGBUS).
    damaged = path.with_name("damaged")
    damaged.write_bytes(path.read_bytes()[:1000])
    damaged.replace(path)
    assert np.array_equal(mi.load_miniimagenet(*args).images, expected)
    with pytest.raises(ValueError, match="unknown split"):
        mi.load_miniimagenet("validation", tmp_path / "data")
    with pytest.raises(ValueError, match="images_per_class"):
        mi.load_miniimagenet("test", tmp_path / "data", images_per_class=0)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_cache_files_get_open_permissions(tmp_path, fake, umask_022):
    mi.load_miniimagenet("val", tmp_path / "data", tmp_path / "cache")
    path = mi.cache_file("val", cache=tmp_path / "cache")
    for file in (path, path.with_suffix(".json")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_full_disk_is_a_clear_error_before_decoding(tmp_path, fake, monkeypatch):
    """posix_fallocate reserves the whole cache first: no bus error from the memory
    map halfway, an error naming the file, the bytes and MAMLLIB_CACHE."""
    decoded = []
    monkeypatch.setattr(mi, "decode_image", lambda *a: decoded.append(a))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "posix_fallocate", full, raising=False)
    with pytest.raises(store.OutOfSpaceError) as error:
        mi.load_miniimagenet("train", tmp_path / "data", tmp_path / "cache")
    message = str(error.value)
    path = mi.cache_file("train", cache=tmp_path / "cache")
    size = 128 + 3 * FAKE_PER_CLASS * 84 * 84 * 3  # .npy header + pixels
    assert str(path) in message and f"{size:,} bytes" in message
    assert "MAMLLIB_CACHE" in message and isinstance(error.value, OSError)
    assert error.value.errno == errno.ENOSPC
    assert decoded == [] and leftovers(tmp_path / "cache") == []


def test_a_killed_build_leaves_a_temp_file_the_next_start_removes(tmp_path, fake):
    """A build killed halfway (SIGKILL: no cleanup runs) leaves its temporary file;
    the next load removes it, whether it builds the cache or finds one."""
    cache = tmp_path / "cache"
    path = mi.cache_file("test", cache=cache)
    code = (
        "import sys, time\n"
        "from mamllib.data import miniimagenet as mi, miniimagenet_files as files\n"
        "mi.N_CLASSES = files.N_CLASSES = {'train': 3, 'val': 2, 'test': 2}\n"
        "mi.IMAGES_PER_CLASS = files.IMAGES_PER_CLASS = 4\n"
        "def hang(data, name):\n"
        "    print('decoding', flush=True)\n"
        "    time.sleep(120)\n"
        "mi.decode_image = hang\n"
        f"mi.load_miniimagenet('test', {str(tmp_path / 'data')!r}, {str(cache)!r})\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "decoding"
    finally:
        writer.kill()
        writer.wait()
    (stale,) = [p for p in cache.iterdir() if p.name.startswith(f".{path.name}.")]
    assert stale.name.startswith(f".{path.name}.{writer.pid}.")
    mi.load_miniimagenet("test", tmp_path / "data", cache)
    assert leftovers(cache) == sorted([path.name, path.with_suffix(".json").name])
    # With the cache in place, a stale file is still removed at the next load.
    stale.write_bytes(b"left by a killed rebuild")
    mi.load_miniimagenet("test", tmp_path / "data", cache)
    assert not stale.exists()


# ------------------------------------------------------------------------------------
# The 32-filter max-pool conv-4: meta-gradients
# ------------------------------------------------------------------------------------


def pool_problem(dtype=torch.float64, n_tasks=2, n_way=3, k_shot=1, size=12, seed=0):
    """The MiniImageNet conv-4 (32 filters, max-pool, RGB) on tiny random images:
    12x12 -> 6 -> 3 -> 1 -> 0 would vanish, so 16x16 (16 -> 8 -> 4 -> 2 -> 1)."""
    size = max(size, 16)
    model = Conv4(n_way, in_channels=3, n_filters=32, image_size=size, max_pool=True)
    params = init_params(model, torch.Generator().manual_seed(1), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    shape = (n_tasks, n_way * k_shot, 3, size, size)
    labels = torch.arange(n_way).repeat_interleave(k_shot).expand(n_tasks, -1)
    batch = mi.Episodes(
        x_support=torch.rand(shape, generator=g, dtype=dtype),
        y_support=labels.contiguous(),
        x_query=torch.rand(shape, generator=g, dtype=dtype),
        y_query=labels.contiguous(),
        classes=torch.zeros(n_tasks, n_way, dtype=torch.long),
        examples=torch.zeros(n_tasks, n_way, 2, dtype=torch.long),
    )
    return model, params, batch


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_pool_net_meta_gradient_matches_finite_differences(strategy):
    model, params, tasks = pool_problem()
    inner_lr, steps = 0.5, 2  # a large step so second-order terms matter
    _, g = meta_gradient(
        model, params, tasks, cross_entropy_loss, inner_lr, steps, strategy=strategy
    )
    assert_matches_finite_differences(
        g, model, params, tasks, cross_entropy_loss, inner_lr, steps
    )


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_pool_net_first_order_is_second_order_minus_hessian_term(strategy):
    """One inner step: g_2nd - g_1st = -alpha H_support(theta) g_query(theta')."""
    model, params, tasks = pool_problem(n_tasks=1)
    inner_lr, loss_fn = 0.5, cross_entropy_loss
    _, g2 = meta_gradient(model, params, tasks, loss_fn, inner_lr, 1, False, strategy)
    _, g1 = meta_gradient(model, params, tasks, loss_fn, inner_lr, 1, True, strategy)
    xs, ys, xq, yq = (
        tasks.x_support[0],
        tasks.y_support[0],
        tasks.x_query[0],
        tasks.y_query[0],
    )
    adapted = adapt(model, params, xs, ys, loss_fn, inner_lr, 1)
    g_query = torch.autograd.grad(
        task_loss(model, adapted, xq, yq, loss_fn), tuple(adapted.values())
    )
    support_grad = torch.autograd.grad(
        task_loss(model, params, xs, ys, loss_fn),
        tuple(params.values()),
        create_graph=True,
    )
    hvp = torch.autograd.grad(
        support_grad, tuple(params.values()), grad_outputs=g_query
    )
    scale = flat(dict(zip(params, hvp))).abs().max()
    assert scale > 1e-3  # the second-derivative term is not negligible
    for k, gq, h in zip(params, g_query, hvp):
        torch.testing.assert_close(g1[k], gq, rtol=1e-9, atol=1e-12 * scale)
        torch.testing.assert_close(
            g2[k] - g1[k], -inner_lr * h, rtol=1e-7, atol=1e-10 * scale
        )


@pytest.mark.parametrize("first_order", [False, True])
def test_pool_net_fast_paths_equal_loop(first_order):
    model, params, tasks = pool_problem(n_tasks=3, k_shot=2)
    results = {
        p: meta_gradient(
            model, params, tasks, cross_entropy_loss, 0.1, 2, first_order, strategy=p
        )
        for p in ("loop", "vmap", "batched")
    }
    loss_loop, g_loop = results["loop"]
    scale = flat(g_loop).abs().max()
    for p in ("vmap", "batched"):
        loss, g = results[p]
        torch.testing.assert_close(loss, loss_loop, rtol=1e-10, atol=0)
        for k in g_loop:  # conv biases: zero up to rounding (batch norm cancels them)
            torch.testing.assert_close(g[k], g_loop[k], rtol=1e-8, atol=1e-10 * scale)


# ------------------------------------------------------------------------------------
# Presets and training glue
# ------------------------------------------------------------------------------------


def test_presets_follow_the_paper(monkeypatch):
    from mamllib.experiments.fewshot import model_for
    from mamllib.presets import make_config

    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    for k_shot, meta_batch in ((1, 4), (5, 2)):
        config = make_config(f"miniimagenet-5way-{k_shot}shot", "paper")
        assert (config["k_shot"], config["meta_batch_size"]) == (k_shot, meta_batch)
        assert config["inner_lr"] == 0.01 and config["outer_lr"] == 1e-3
        assert (config["n_inner_steps"], config["n_test_inner_steps"]) == (5, 10)
        assert config["n_query"] == 15 and config["clip_grad"] == 10.0
        assert config["n_iterations"] == 60_000 and config["n_filters"] == 32
        model = model_for(config)
        assert model.max_pool and model.n_filters == 32 and model.final_size == 5
        for preset in ("ci", "book"):
            small = make_config(config["experiment"], preset)
            assert small["n_iterations"] % small["checkpoint_every"] == 0
    omniglot = model_for(make_config("omniglot-5way-1shot", "paper"))
    assert not omniglot.max_pool and omniglot.image_size == 28
    with pytest.raises(ValueError, match="images_per_class"):
        make_config("miniimagenet-5way-1shot", "ci", images_per_class=601)


def test_fit_clips_the_meta_gradient_elementwise(monkeypatch):
    from mamllib.train import fit

    seen = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        grads = [p.grad.abs().max().item() for p in self.param_groups[0]["params"]]
        seen.append(max(grads))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    params = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}

    def objective(p, batch):
        return 1000.0 * (p["w"] ** 2).sum()  # gradient 2000 w

    fit(objective, params, lambda g: None, torch.Generator(), 2, 1e-3, clip_grad=10.0)
    assert seen == [10.0, 10.0]


@shared
def test_train_selects_on_validation_and_resumes(splits, tmp_path, monkeypatch):
    """A few iterations at tiny shapes: the selection record, the best params, and a
    resumed run that selects exactly as the uninterrupted one."""
    from mamllib.experiments.fewshot import evaluate_maml, train_maml
    from mamllib.presets import make_config
    from mamllib.runs import RunFolder

    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    config = make_config(
        "miniimagenet-5way-1shot",
        "ci",
        n_iterations=4,
        checkpoint_every=2,
        meta_batch_size=1,
        n_query=1,
        n_inner_steps=1,
        n_test_inner_steps=1,
        n_val_tasks=2,
        n_eval_tasks=2,
        n_eval_steps=1,
        log_every=1,
        outer_lr=0.01,
    )
    train, val = (mi.tasks_for_split(splits[s]) for s in ("train", "val"))
    whole = train_maml(config, train, val_tasks=val)
    assert whole.selection["iteration"] == [2, 4]
    best = whole.selection["best_iteration"]
    record = whole.selection
    accuracies = dict(zip(record["iteration"], record["val_accuracy"]))
    assert accuracies[best] == max(accuracies.values())
    run = RunFolder("mini", "ci", 0, root=tmp_path)
    first = train_maml({**config, "n_iterations": 2}, train, run, val_tasks=val)
    assert first.selection["iteration"] == [2]
    resumed = train_maml(config, train, run, val_tasks=val)
    assert resumed.resumed_from == 2
    assert resumed.selection == whole.selection
    for k in whole.params:
        torch.testing.assert_close(resumed.params[k], whole.params[k])
    # The selected params score as recorded on the same validation tasks.
    from mamllib.evaluate import VAL_SEED

    check = evaluate_maml(
        whole.params,
        val,
        {**config, "n_eval_tasks": 2, "n_eval_steps": 1},
        seed=VAL_SEED,
    )
    assert check["at_test_steps"]["mean"] == pytest.approx(accuracies[best])


def test_a_paper_run_stopped_early_is_labelled_partial(tmp_path):
    """--iterations N lowers n_iterations: reaching it is not reaching the paper's."""
    from mamllib.experiments.fewshot import save_results
    from mamllib.presets import make_config
    from mamllib.runs import RunFolder, read_json
    from mamllib.train import FitResult

    evaluation = {
        "at_test_steps": {"mean": 0.4, "ci95": 0.02, "n": 600},
        "steps": {"mean": [0.2, 0.4], "ci95": [0.01, 0.02]},
    }
    params = {"w": torch.zeros(1)}
    for n_iterations, reached, expected in (
        (300, 300, "partial: paper preset, 300 of 60,000 meta-iterations"),
        (60_000, 1_234, "partial: paper preset, 1,234 of 60,000 meta-iterations"),
        (60_000, 60_000, "complete"),
    ):
        config = make_config(
            "miniimagenet-5way-1shot", "paper", n_iterations=n_iterations
        )
        run = RunFolder("mini", "paper", reached, root=tmp_path)
        result = FitResult(params, {"iteration": [], "loss": []}, reached, 1.0, None)
        status = save_results(run, config, result, evaluation, 1.0)
        assert status == expected
        assert read_json(run.file("metrics.json"))["status"] == expected


def test_a_call_that_trained_nothing_is_not_evaluated_again(tmp_path):
    """already_evaluated: a note only when the call resumed where it ended and
    metrics.json scores the same iterations, tasks, test steps and selected
    iteration; every other case must evaluate (None)."""
    import dataclasses

    from mamllib.experiments.fewshot import already_evaluated, save_results
    from mamllib.presets import make_config
    from mamllib.runs import RunFolder
    from mamllib.train import FitResult

    config = make_config("miniimagenet-5way-1shot", "paper")
    run = RunFolder("mini", "paper", 0, root=tmp_path)
    selection = {"best_iteration": 2000}
    scored = FitResult({"w": torch.zeros(1)}, {}, 3000, 1.0, 2500, selection)
    resumed = dataclasses.replace(scored, resumed_from=3000)
    assert already_evaluated(run, config, resumed) is None  # no metrics.json yet
    evaluation = {
        "at_test_steps": {"step": 10, "mean": 0.4, "ci95": 0.02, "n": 600},
        "steps": [],
    }
    save_results(run, config, scored, evaluation, 1.0, selected_iteration=2000)
    note = already_evaluated(run, config, resumed)
    assert note and "3,000 iterations" in note and "--reevaluate" in note
    for other_result, other_config in (
        (scored, config),  # trained 2,500 -> 3,000 in this call: new weights
        (dataclasses.replace(resumed, resumed_from=None), config),  # from scratch
        (dataclasses.replace(resumed, iterations=3001, resumed_from=3001), config),
        (dataclasses.replace(resumed, selection={"best_iteration": 3000}), config),
        (resumed, {**config, "n_eval_tasks": 100}),
        (resumed, {**config, "n_test_inner_steps": 5}),
    ):
        assert already_evaluated(run, other_config, other_result) is None


def test_loop_evaluation_equals_the_vmap_curve():
    """evaluate_maml scores 84x84 tasks one at a time (faster on a CPU): the same
    curve as the vmap adaptation_curve."""
    from mamllib.evaluate import adaptation_curve
    from mamllib.experiments.fewshot import adaptation_curve_loop
    from mamllib.maml import accuracy

    model, params, tasks = pool_problem(n_tasks=3, k_shot=2)
    args = (model, params, tasks, cross_entropy_loss, 0.5, 3)
    loop = adaptation_curve_loop(*args, metric_fn=cross_entropy_loss)
    vmapped = adaptation_curve(*args, metric_fn=cross_entropy_loss)
    torch.testing.assert_close(loop, vmapped, rtol=1e-10, atol=1e-12)
    assert torch.equal(
        adaptation_curve_loop(*args, metric_fn=accuracy),
        adaptation_curve(*args, metric_fn=accuracy),
    )


def test_artifact_command_copies_a_first_order_run(tmp_path, monkeypatch, capsys):
    """``python -m mamllib artifact ... --first-order`` on a made-up MiniImageNet
    first-order run folder: the files, the manifest, the checkpoints on request;
    without --first-order it looks for the second-order run, which is not there."""
    from mamllib.cli import main
    from mamllib.runs import RunFolder, read_json, sha256

    monkeypatch.setenv("MAMLLIB_ROOT", str(tmp_path))
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path / "results"))
    run = RunFolder("miniimagenet-5way-1shot-first-order", "paper", 0)
    status = "partial: paper preset, 300 of 60,000 meta-iterations"
    metrics = {
        "status": status,
        "iterations": 300,
        "training_wall_time_s": 1500.0,
        "evaluation_wall_time_s": 600.0,
        "device": "cpu",
        "test_accuracy": {"mean": 0.3, "ci95": 0.015, "n": 600},
    }
    run.write_json("metrics.json", metrics)
    run.write_json("config.json", {"n_way": 5, "k_shot": 1, "n_test_inner_steps": 10})
    run.write_json("reproduction.json", [])
    run.write_json("history.json", {"iteration": [50], "loss": [1.5]})
    torch.save({"w": torch.zeros(1)}, run.file("params-maml.pt"))
    torch.save({"iteration": [300]}, run.file("selection-maml.pt"))
    argv = ["artifact", "miniimagenet-5way-1shot", "--name", "fo"]
    assert main(argv) == 1
    assert "has no metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "artifacts" / "fo").exists()
    assert main([*argv, "--first-order", "--checkpoints", "--note", "a test"]) == 0
    target = tmp_path / "artifacts" / "fo"
    assert read_json(target / "metrics.json") == metrics
    assert (target / "selection-maml.pt").exists()
    manifest = read_json(target / "manifest.json")
    assert manifest["status"] == status and manifest["note"] == "a test"
    assert manifest["command"].startswith("python -m mamllib artifact")
    for name, digest in manifest["files"].items():
        assert sha256(target / name) == digest
