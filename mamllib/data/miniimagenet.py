"""MiniImageNet: a local copy, verified, decoded once into a memory-mapped cache.

Introduced in notebook 08 (MiniImageNet). The data is Vinyals et al.'s 100 ImageNet
classes with 600 images each, as split by Ravi & Larochelle (ICLR 2017): 64 classes
for meta-training, 16 for validation, 20 for testing, images 84x84 RGB. The MAML paper
(§5.2) says "64 training classes, 12 validation classes, and 24 test classes"; the
split it used (cbfinn/maml's ``data/miniImagenet/proc_images.py`` reads Ravi's CSVs)
is 64/16/20, which is what we check. Where the files come from, how they are laid
out and checked, and how an image decodes is :mod:`mamllib.data.miniimagenet_files`.

The cache: ``<cache>/miniimagenet-v<N>-<split>[-<n>per-class].npy``, uint8
``[n_classes, n_images, 84, 84, 3]`` (RGB, channel-last as decoded), opened
memory-mapped so a 0.8 GB training split never has to fit in RAM, plus a ``.json``
beside it naming the classes and files. ``<cache>`` is ``cache=``, else
``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``. Building decodes straight into a
memory-mapped temporary file (no list of arrays in memory) and renames it into place
only when every image decoded, so a cache is either complete or absent.
``images_per_class=n`` caches only the first ``n`` images of each class (in CSV
order): what tests and the ``ci`` preset use, fast to build.

Pixels: cbfinn/maml's data generator decodes each JPEG and divides by 255
(``tf.cast(image, tf.float32) / 255.0``), no mean subtraction; so do we.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamllib.data.miniimagenet_files import (
    IMAGE_SIZE,
    IMAGES_PER_CLASS,
    N_CLASSES,
    SPLITS,
    ImageSource,
    MiniImagenetDataError,
    check_disjoint,
    csv_path,
    decode_image,
    layout_hint,
    local_dir,
    read_split,
)
from mamllib.data.store import (
    CACHE_ENV,
    CACHE_FIX,
    DATA_ENV,
    atomic_path,
    cache_dir,
    remove_stale_temp_files,
    reserve_space,
    write_json,
)
from mamllib.episodes import Episodes, EpisodeSampler, SplitSizes

# Bump when preprocessing changes: the cache file name carries it.
CACHE_VERSION = 1


@dataclass
class MiniImagenet:
    """One split, decoded: ``images`` uint8 ``[n_classes, n_images, 84, 84, 3]``.

    ``images`` is a read-only memory map of the cache; ``classes[i]`` is class ``i``'s
    WordNet id and ``files[i]`` its file names, in the order of ``images[i]``.
    """

    split: str
    images: np.ndarray
    classes: list[str]
    files: list[list[str]]

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]

    @property
    def images_per_class(self) -> int:
        return self.images.shape[1]


def cache_file(
    split: str, images_per_class: int | None = None, cache: str | Path | None = None
) -> Path:
    """The ``.npy`` cache of one split (its ``.json`` sits beside it)."""
    subset = "" if images_per_class is None else f"-{images_per_class}per-class"
    return cache_dir(cache) / f"miniimagenet-v{CACHE_VERSION}-{split}{subset}.npy"


def _read_cache(path: Path, shape: tuple[int, ...]) -> MiniImagenet | None:
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        images = np.load(path, mmap_mode="r")
        ok = (
            meta.get("version") == CACHE_VERSION
            and images.dtype == np.uint8
            and images.shape == shape
            and len(meta["classes"]) == len(meta["files"]) == shape[0]
        )
    except Exception:  # a damaged cache is derived data: rebuild it
        return None
    if not ok:
        return None
    return MiniImagenet(meta["split"], images, meta["classes"], meta["files"])


def load_miniimagenet(
    split: str = "train",
    root: str | Path | None = None,
    cache: str | Path | None = None,
    images_per_class: int | None = None,
    rebuild: bool = False,
) -> MiniImagenet:
    """One split of MiniImageNet: from the cache at once, else decoded and cached.

    Building checks the split's CSV (classes, 600 rows each), that every listed
    file is there, and decodes the images into the cache (about a minute for the
    training split on one core; seconds with ``images_per_class``).

    Args:
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        root: the local copy (else ``$MAMLLIB_DATA``; see the module doc).
        cache: cache folder (else ``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``).
        images_per_class: cache only the first ``n`` images of each class (a
            subset for tests and quick runs, cached separately); None for all 600.
        rebuild: ignore an existing cache.

    Returns:
        A :class:`MiniImagenet` whose images are memory-mapped from the cache.
    """
    sizes = split_sizes(split, images_per_class)
    n_images = sizes.n_images
    shape = (N_CLASSES[split], n_images, IMAGE_SIZE, IMAGE_SIZE, 3)
    path = cache_file(split, images_per_class, cache)
    remove_stale_temp_files(path)  # left by a build that was killed
    if not rebuild and path.is_file():
        data = _read_cache(path, shape)
        if data is not None:
            return data
    folder = local_dir(root)
    classes = read_split(csv_path(folder, split), split)
    check_disjoint(folder, split, classes)
    source = ImageSource(folder, split)
    try:
        missing = source.missing(classes)
        if missing:
            raise MiniImagenetDataError(
                f"{len(missing)} image(s) listed in {split}.csv are not in "
                f"{source.where}, e.g. {', '.join(missing[:3])}. " + layout_hint()
            )
        labels = list(classes)
        files = [classes[label][:n_images] for label in labels]
        _build_cache(path, shape, source, labels, files)
    finally:
        source.close()
    write_json(
        path.with_suffix(".json"),
        {"version": CACHE_VERSION, "split": split, "classes": labels, "files": files},
    )
    data = _read_cache(path, shape)
    assert data is not None, path
    return data


def _build_cache(path, shape, source, labels, files) -> None:
    """Decode into a memory-mapped temporary ``.npy``; rename it into place at the end.

    The whole file is reserved on disk before the first image is decoded: a disk
    too small fails at once with the size needed, not with a bus error halfway.
    The ``.json`` is written after the rename; a cache whose ``.json`` is missing or
    does not match is rebuilt, so a crash at any point leaves nothing trusted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            reserve_space(tmp, os.path.getsize(tmp), path, CACHE_FIX)
            for i, label in enumerate(labels):
                for j, name in enumerate(files[i]):
                    out[i, j] = decode_image(source.read(label, name), name)
            out.flush()
        finally:
            del out


def split_sizes(
    split: str = "train", images_per_class: int | None = None
) -> SplitSizes:
    """How many classes and images one split offers an episode, without any file.

    Args:
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        images_per_class: the images cached per class (None: all 600).

    Returns:
        The split's :class:`~mamllib.episodes.SplitSizes`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if images_per_class is not None and not 1 <= images_per_class <= IMAGES_PER_CLASS:
        raise ValueError(
            f"images_per_class={images_per_class} must be in 1..{IMAGES_PER_CLASS} "
            "(or None for all)"
        )
    n_images = images_per_class or IMAGES_PER_CLASS
    subset = n_images < IMAGES_PER_CLASS
    return SplitSizes(
        dataset="MiniImageNet",
        split=split,
        n_sources=N_CLASSES[split],
        n_images=n_images,
        images_detail=(
            f"images_per_class={n_images} of {IMAGES_PER_CLASS}" if subset else ""
        ),
    )


def tasks_for_split(data: MiniImagenet) -> EpisodeSampler:
    """Few-shot episodes over one split, as cbfinn/maml's data generator makes them.

    Each task takes ``n_way`` distinct classes of the split in random order (the
    order gives the labels) and ``k_shot + n_query`` distinct images of each; only
    those images are read from the memory-mapped cache.

    Args:
        data: one split, from :func:`load_miniimagenet`.

    Returns:
        An :class:`~mamllib.episodes.EpisodeSampler` over ``data.images`` seen
        channel-first, ``[n_classes, n_images, 3, 84, 84]`` (a view: nothing is
        copied); episodes are float32 in [0, 1] (uint8 / 255, as cbfinn/maml).
    """
    sizes = split_sizes(data.split, data.images_per_class)
    if data.n_classes != sizes.n_sources:
        raise ValueError(
            f"data has {data.n_classes} classes but the {data.split} split has "
            f"{sizes.n_sources}: load it with load_miniimagenet({data.split!r})"
        )
    return EpisodeSampler(data.images.transpose(0, 1, 4, 2, 3), sizes)


__all__ = [
    "CACHE_ENV",
    "CACHE_VERSION",
    "DATA_ENV",
    "Episodes",
    "IMAGES_PER_CLASS",
    "N_CLASSES",
    "SPLITS",
    "MiniImagenet",
    "MiniImagenetDataError",
    "cache_file",
    "decode_image",
    "load_miniimagenet",
    "read_split",
    "split_sizes",
    "tasks_for_split",
]
