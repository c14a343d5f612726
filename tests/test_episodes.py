"""Episodes: one sampler for every image set, bit-identical to the samplers it replaced,
and episode sizes checked against the splits before any file is read.

The pinned digests were drawn with the per-data-set samplers this one replaced (same
generator seed, two batches in a row, the generator's state after them): committed
artifacts, golden notebook outputs and resumed checkpoints depend on that stream.
"""

import hashlib

import pytest
import torch
from conftest import needs_miniimagenet, needs_omniglot

from mamllib.data import check_episode_sizes, miniimagenet, omniglot
from mamllib.tasks import Episodes, EpisodeSampler, SplitSizes

# "split/scheme/rotations/n_tasks,n_way,k_shot,n_query": digests of 2 batches
OMNIGLOT_EPISODES = {
    "train/paper/True/4,5,1,None": "c9aa51fb882cdc90 9a98634fe8bfd2b5",
    "train/paper/True/3,20,5,5": "f048fdbe72e51179 485bc8f53ad52eff",
    "train/paper/True/2,5,1,15": "3d5b132bc42e512e cb9d3e42912b53a8",
    "test/paper/True/4,5,1,None": "0299ee49d5ae2be7 4d4d4b92434c06a9",
    "test/paper/True/3,20,5,5": "0dcdb991c9931b96 478d36fb7b934b48",
    "test/paper/True/2,5,1,15": "bc9500a7ce4d4727 cd12dd8b1674ea7f",
    "val/original/True/4,5,1,None": "40c427652f0914a3 5dae20708e89a57c",
    "val/original/True/3,20,5,5": "0b05bd8e79ff981c 2fad50f69b409092",
    "val/original/True/2,5,1,15": "20583b1a2ba5d336 d1074ccc1dc1ef3e",
    "train/paper/False/4,5,1,None": "ff96d905345e540a 67d435d4beb87d78",
    "train/paper/False/3,20,5,5": "2373d0c8568a5239 936d9de618e18554",
    "train/paper/False/2,5,1,15": "a9476c13ba72287a 562acfa963139199",
}
# "split/n_tasks,n_way,k_shot,n_query", 20 images per class (the ci preset's)
MINIIMAGENET_EPISODES = {
    "train/4,5,1,15": "c7238ebc5cb47637 3874dfb2ecd8cd69",
    "train/2,5,5,15": "d36b1f29ad088ee9 19680539ba3bc732",
    "train/3,1,2,3": "78f751f3945a7f92 f0bf8698dc1953f6",
    "val/4,5,1,15": "df3b14d4ad41e3c3 7a9f0882b24b0f7f",
    "val/2,5,5,15": "04bf6566c87063f6 3428c47e37da1ee8",
    "val/3,1,2,3": "21277993eab25a13 32367feaf1f77b35",
    "test/4,5,1,15": "6eb431af6dd637c9 a2813eb52d67114e",
    "test/2,5,5,15": "86d65b92e5161de5 39ca6f8d7d52f23e",
    "test/3,1,2,3": "6c416f746dc7381e 97f59d5bfcf2c2e1",
}
# (data set, shape): strides of x_support and x_query (convolutions follow them)
STRIDES = {
    ("omniglot", "4,5,1,None"): ((7840, 1568, 784, 28, 1), (7840, 1568, 784, 28, 1)),
    ("omniglot", "3,20,5,5"): ((78400, 784, 784, 28, 1), (78400, 784, 784, 28, 1)),
    ("omniglot", "2,5,1,15"): ((62720, 12544, 784, 28, 1), (58800, 784, 784, 28, 1)),
    ("miniimagenet", "4,5,1,15"): (
        (1693440, 338688, 1, 252, 3),
        (1587600, 21168, 7056, 84, 1),
    ),
    ("miniimagenet", "2,5,5,15"): (
        (529200, 21168, 7056, 84, 1),
        (1587600, 21168, 7056, 84, 1),
    ),
    ("miniimagenet", "3,1,2,3"): (
        (105840, 21168, 1, 252, 3),
        (105840, 21168, 1, 252, 3),
    ),
}


def digest(batch: Episodes, generator: torch.Generator) -> str:
    """A short hash of every tensor of ``batch`` and of ``generator``'s state."""
    h = hashlib.sha256()
    for name in ("x_support", "y_support", "x_query", "y_query", "classes", "examples"):
        t = getattr(batch, name)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(generator.get_state().numpy().tobytes())
    return h.hexdigest()[:16]


def two_batches(tasks: EpisodeSampler, shape: str) -> tuple[str, tuple]:
    """Digests of two batches in a row from one generator (each with the generator's
    state after both), and the strides of the first batch's images."""
    n_tasks, n_way, k_shot, n_query = (
        None if v == "None" else int(v) for v in shape.split(",")
    )
    g = torch.Generator().manual_seed(7)
    batches = [tasks.sample(n_tasks, n_way, k_shot, n_query, generator=g) for _ in "ab"]
    strides = (batches[0].x_support.stride(), batches[0].x_query.stride())
    return " ".join(digest(batch, g) for batch in batches), strides


@needs_omniglot
@pytest.mark.parametrize("case", sorted(OMNIGLOT_EPISODES))
def test_omniglot_episodes_are_the_pinned_stream(omniglot_data, case):
    split, scheme, rotations, shape = case.split("/")
    tasks = omniglot.tasks_for_split(
        omniglot_data, split, scheme=scheme, rotations=rotations == "True"
    )
    digests, strides = two_batches(tasks, shape)
    assert digests == OMNIGLOT_EPISODES[case]
    assert strides == STRIDES[("omniglot", shape)]


@needs_miniimagenet
@pytest.mark.parametrize("case", sorted(MINIIMAGENET_EPISODES))
def test_miniimagenet_episodes_are_the_pinned_stream(load_miniimagenet_subset, case):
    split, shape = case.split("/")
    tasks = miniimagenet.tasks_for_split(load_miniimagenet_subset(split, 20))
    digests, strides = two_batches(tasks, shape)
    assert digests == MINIIMAGENET_EPISODES[case]
    assert strides == STRIDES[("miniimagenet", shape)]


# ------------------------------------------------------------------------------------
# Episode sizes against the splits, before any file is read
# ------------------------------------------------------------------------------------


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Data and cache folders that do not exist: a check that read files would fail."""
    monkeypatch.setenv("MAMLLIB_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("MAMLLIB_CACHE", str(tmp_path / "no-cache"))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (
            ("omniglot", "test", 500, 1, 1),
            {},
            "n_way=500 but the Omniglot test split (scheme='paper') has 423 characters;"
            " its 1692 classes are 4 rotations of each",
        ),
        (
            ("omniglot", "train", 5, 10, 15),
            {},
            "k_shot + n_query = 10 + 15 = 25 but each character of the Omniglot train "
            "split (scheme='paper') has 20 drawings. Choose k_shot + n_query <= 20.",
        ),
        (
            ("omniglot", "train", 5, 11),  # n_query defaults to k_shot
            {},
            "k_shot + n_query = 11 + 11 = 22",
        ),
        (
            ("omniglot", "val", 101, 1, 1),
            {"scheme": "original"},
            "n_way=101 but the Omniglot val split (scheme='original') has 100 "
            "characters",
        ),
        (
            ("omniglot", "train", 1201, 1, 1),
            {"rotations": False},
            "n_way=1201 but the Omniglot train split (scheme='paper', no rotations) "
            "has 1200 characters. Choose n_way <= 1200.",
        ),
        (
            ("miniimagenet", "val", 17, 1, 15),
            {},
            "n_way=17 but the MiniImageNet val split has 16 classes. Choose n_way <= "
            "16.",
        ),
        (
            ("miniimagenet", "test", 5, 5, 596),
            {},
            "k_shot + n_query = 5 + 596 = 601 but each class of the MiniImageNet test "
            "split has 600 images",
        ),
        (
            ("miniimagenet", "train", 5, 1, 15),
            {"images_per_class": 10},
            "= 16 but each class of the MiniImageNet train split has 10 images "
            "(images_per_class=10 of 600)",
        ),
        (("omniglot", "val", 5, 1, 1), {}, "use scheme='original' for 'val'"),
        (("miniimagenet", "valid", 5, 1, 1), {}, "unknown split 'valid'"),
        (("omniglot", "train", 5, 0, 1), {}, "k_shot=0 but it must be >= 1"),
        (("cifar", "train", 5, 1, 1), {}, "unknown dataset 'cifar'"),
        (
            ("omniglot", "train", 5, 1, 1),
            {"images_per_class": 20},
            "images_per_class=20 applies to MiniImageNet only",
        ),
        (
            ("miniimagenet", "train", 5, 1, 1),
            {"rotations": True},
            "apply to Omniglot only",
        ),
    ],
)
def test_bad_episode_sizes_are_refused_without_data(no_data, args, kwargs, message):
    with pytest.raises(ValueError) as error:
        check_episode_sizes(*args, **kwargs)
    assert message in str(error.value)


def test_the_largest_episodes_each_split_allows_pass(no_data):
    for split, n_characters in (("train", 1200), ("test", 423)):
        check_episode_sizes("omniglot", split, n_characters, 10, 10)
    check_episode_sizes("omniglot", "val", 100, 19, 1, scheme="original")
    for split, n_classes in (("train", 64), ("val", 16), ("test", 20)):
        check_episode_sizes("miniimagenet", split, n_classes, 5, 595)
    check_episode_sizes("miniimagenet", "train", 5, 5, 15, images_per_class=20)


def test_the_sampler_refuses_with_the_same_message():
    """The check at start-up and the one at sampling time say the same thing."""
    sizes = omniglot.split_sizes("test")
    tasks = EpisodeSampler(torch.zeros(1692, 20, 1, 1, 1, dtype=torch.uint8), sizes)
    for n_way, k_shot, n_query in ((424, 1, 1), (5, 10, 11), (5, 1, 0)):
        with pytest.raises(ValueError) as at_start:
            check_episode_sizes("omniglot", "test", n_way, k_shot, n_query)
        with pytest.raises(ValueError) as at_sampling:
            tasks.sample(2, n_way, k_shot, n_query)
        assert str(at_sampling.value) == str(at_start.value)
    with pytest.raises(ValueError, match="n_tasks=0 but it must be >= 1"):
        tasks.sample(0, 5, 1, 1)


# ------------------------------------------------------------------------------------
# The sampler on any image array
# ------------------------------------------------------------------------------------


def toy(n_sources=6, n_images=8, variants=None, shape=(3, 5, 4)) -> EpisodeSampler:
    g = torch.Generator().manual_seed(0)
    n_classes = n_sources * (variants or 1)
    images = torch.randint(0, 256, (n_classes, n_images, *shape), generator=g)
    sizes = SplitSizes("Toy", "train", n_sources, n_images, variants)
    return EpisodeSampler(images.to(torch.uint8), sizes)


def test_episodes_hold_the_pixels_their_indices_name():
    tasks = toy()
    batch = tasks.sample(4, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    assert batch.x_support.shape == (4, 6, 3, 5, 4)
    assert batch.x_query.shape == (4, 9, 3, 5, 4)
    assert batch.x_support.dtype == torch.float32
    assert batch.y_support[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.y_query[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.classes.shape == (4, 3) and batch.examples.shape == (4, 3, 5)
    for t in range(4):
        assert len(set(batch.classes[t].tolist())) == 3
        for n in range(3):
            assert len(set(batch.examples[t, n].tolist())) == 5
            pixels = tasks.images[batch.classes[t, n], batch.examples[t, n]] / 255
            torch.testing.assert_close(
                batch.x_support[t, 2 * n : 2 * n + 2], pixels[:2]
            )
            torch.testing.assert_close(batch.x_query[t, 3 * n : 3 * n + 3], pixels[2:])


def test_a_numpy_array_gives_the_same_episodes_as_a_tensor():
    tasks = toy()
    as_numpy = EpisodeSampler(tasks.images.numpy(), tasks.sizes)
    a, b = (
        t.sample(3, 4, 1, 2, generator=torch.Generator().manual_seed(2))
        for t in (tasks, as_numpy)
    )
    for name in vars(a):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_variants_never_share_a_task_and_do_not_shift_the_stream():
    """Omniglot's rotations: one variant per source class and task; with a single
    variant the same sources and images come up as with four."""
    four, one = toy(variants=4), toy(variants=1)
    a = four.sample(50, 6, 1, 1, generator=torch.Generator().manual_seed(3))
    b = one.sample(50, 6, 1, 1, generator=torch.Generator().manual_seed(3))
    sources = four.source_of(a.classes)
    assert all(len(set(row.tolist())) == 6 for row in sources)
    assert set(a.classes.remainder(4).unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(sources, one.source_of(b.classes))
    assert torch.equal(a.examples, b.examples)
    with pytest.raises(ValueError, match="n_way=7 but the Toy train split has 6"):
        four.sample(1, 7, 1, 1)


def test_a_mismatched_array_is_refused():
    sizes = SplitSizes("Toy", "train", 6, 8)
    with pytest.raises(ValueError, match="uint8"):
        EpisodeSampler(torch.zeros(6, 8, 1, 2, 2), sizes)
    with pytest.raises(ValueError, match=r"\[6, 8, 2, 2\]"):
        EpisodeSampler(torch.zeros(6, 8, 2, 2, dtype=torch.uint8), sizes)
    with pytest.raises(ValueError, match="5 classes of 8 images but"):
        EpisodeSampler(torch.zeros(5, 8, 1, 2, 2, dtype=torch.uint8), sizes)
