"""MiniImageNet: a local copy, verified, decoded once into a memory-mapped cache.

Introduced in notebook 08 (MiniImageNet). The data is Vinyals et al.'s 100 ImageNet
classes with 600 images each, as split by Ravi & Larochelle (ICLR 2017): 64 classes
for meta-training, 16 for validation, 20 for testing, images 84x84 RGB. The MAML paper
(§5.2) says "64 training classes, 12 validation classes, and 24 test classes"; the
split it used (cbfinn/maml's ``data/miniImagenet/proc_images.py`` reads Ravi's CSVs)
is 64/16/20, which is what we check.

There is no official download. Where the files come from: ``root=`` or the
environment variable ``MAMLLIB_DATA``, a folder holding ``miniimagenet/`` (``root=``
may also name that folder itself) laid out as one of

* ``splits/{train,val,test}.csv`` (or the three CSVs at the top) with the header
  ``filename,label``, one row per image, as published with Ravi & Larochelle's code
  (github.com/twitter-research/meta-learning-lstm, ``data/miniImagenet/``);
* the images as ``images/{train,val,test}.zip``, or one ``images.zip``, or a folder
  ``images/`` (files found as ``images/<split>/<label>/<file>``,
  ``images/<label>/<file>`` or ``images/<file>``; inside a zip only the file's base
  name matters). The images themselves are ImageNet's (ILSVRC-2012 train) under its
  non-commercial research terms; ``python proc_images.py`` of cbfinn/maml or of
  Ravi's repository makes them from an ImageNet copy.

The cache: ``<cache>/miniimagenet-v<N>-<split>[-<n>per-class].npy``, uint8
``[n_classes, n_images, 84, 84, 3]`` (RGB, channel-last as decoded), opened
memory-mapped so a 0.8 GB training split never has to fit in RAM, plus a ``.json``
beside it naming the classes and files. ``<cache>`` is ``cache=``, else
``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``. Building decodes straight into a
memory-mapped temporary file (no list of arrays in memory) and renames it into place
only when every image decoded, so a cache is either complete or absent.

Verification: each split has its number of classes (64/16/20), 600 rows per class,
no class in two splits, every listed file present, and every image that goes into
the cache decodes to 84x84. ``images_per_class=n`` caches only the first ``n`` images
of each class (in CSV order): what tests and the ``ci`` preset use, fast to build.

Pixels: cbfinn/maml's data generator decodes each JPEG and divides by 255
(``tf.cast(image, tf.float32) / 255.0``), no mean subtraction; so do we.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from mamllib.tasks import Episodes, EpisodeSampler, SplitSizes

SPLITS = ("train", "val", "test")
N_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
IMAGE_SIZE = 84
# Bump when preprocessing changes: the cache file name carries it.
CACHE_VERSION = 1
SOURCE_HINT = (
    "MiniImageNet has no official download. The split CSVs (filename,label) are in "
    "github.com/twitter-research/meta-learning-lstm (data/miniImagenet/); the 84x84 "
    "images are made from ImageNet (ILSVRC-2012 train, non-commercial research terms) "
    "with that repository's or cbfinn/maml's proc_images.py."
)


class MiniImagenetDataError(RuntimeError):
    """MiniImageNet is missing, partial or corrupt; the message says how to fix it."""


def _layout_hint() -> str:
    return (
        f"Put <folder>/miniimagenet/splits/{{train,val,test}}.csv and "
        f"<folder>/miniimagenet/images/{{train,val,test}}.zip (or an images/ folder) "
        f"there and set {DATA_ENV}=<folder> (or pass root=<folder>). {SOURCE_HINT}"
    )


def local_dir(root: str | Path | None = None) -> Path:
    """The dataset folder: ``root`` or ``$MAMLLIB_DATA``, or its ``miniimagenet/``.

    Raises:
        MiniImagenetDataError: neither is given.
    """
    if root is None and not os.environ.get(DATA_ENV):
        raise MiniImagenetDataError(
            f"No MiniImageNet copy is named: pass root= or set {DATA_ENV}. "
            + _layout_hint()
        )
    base = Path(root if root is not None else os.environ[DATA_ENV]).expanduser()
    return base / "miniimagenet" if (base / "miniimagenet").is_dir() else base


def _csv_path(folder: Path, split: str) -> Path:
    for path in (folder / "splits" / f"{split}.csv", folder / f"{split}.csv"):
        if path.is_file():
            return path
    raise MiniImagenetDataError(
        f"MiniImageNet split list {split}.csv not found in {folder}/splits/ nor in "
        f"{folder}/. {_layout_hint()}"
    )


def read_split(path: str | Path, split: str) -> dict[str, list[str]]:
    """One split's CSV as ``{label: [filenames]}``, checked: classes and rows.

    Args:
        path: the CSV, header ``filename,label``.
        split: ``"train"``, ``"val"`` or ``"test"`` (sets the expected class count).

    Returns:
        Labels in order of first appearance, each with its 600 filenames in CSV order.
    """
    path = Path(path)
    classes: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["filename", "label"]:
            raise MiniImagenetDataError(
                f"{path}: expected the header 'filename,label', found {header}. "
                + _layout_hint()
            )
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise MiniImagenetDataError(
                    f"{path}, line {line}: expected 'filename,label', found {row}"
                )
            classes.setdefault(row[1], []).append(row[0])
    if len(classes) != N_CLASSES[split]:
        raise MiniImagenetDataError(
            f"{path}: expected {N_CLASSES[split]} classes in the {split} split, "
            f"found {len(classes)}. Is this the Ravi & Larochelle split? {SOURCE_HINT}"
        )
    wrong = {k: len(v) for k, v in classes.items() if len(v) != IMAGES_PER_CLASS}
    if wrong:
        label, count = next(iter(wrong.items()))
        raise MiniImagenetDataError(
            f"{path}: expected {IMAGES_PER_CLASS} images per class, found {count} "
            f"for {label} ({len(wrong)} classes affected)"
        )
    names = [name for files in classes.values() for name in files]
    if len(set(names)) != len(names):
        raise MiniImagenetDataError(f"{path}: some filenames are listed twice")
    return classes


class _ImageSource:
    """Bytes of each image by (label, filename), from a zip or a folder."""

    def __init__(self, folder: Path, split: str):
        self.zip, self.members, self.folder = None, {}, None
        for path in (folder / "images" / f"{split}.zip", folder / "images.zip"):
            if path.is_file():
                try:
                    self.zip = zipfile.ZipFile(path)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise MiniImagenetDataError(
                        f"{path} is not a complete zip file ({exc}; "
                        f"{path.stat().st_size:,} bytes: a truncated copy?). Replace "
                        "it with a fresh copy. " + SOURCE_HINT
                    ) from exc
                self.where = path
                for info in self.zip.infolist():
                    if not info.is_dir():
                        self.members[info.filename.rsplit("/", 1)[-1]] = info
                return
        # A folder of images, unless it holds split zips (then this split's is missing).
        images = folder / "images"
        if images.is_dir() and not any(images.glob("*.zip")):
            self.folder = self.where = images
            self.split = split
            return
        raise MiniImagenetDataError(
            f"MiniImageNet images for the {split} split not found: none of "
            f"{folder}/images/{split}.zip, {folder}/images.zip, {folder}/images/. "
            + _layout_hint()
        )

    def _file(self, label: str, name: str) -> Path | None:
        for path in (
            self.folder / self.split / label / name,
            self.folder / label / name,
            self.folder / name,
        ):
            if path.is_file():
                return path
        return None

    def missing(self, classes: dict[str, list[str]]) -> list[str]:
        if self.zip is not None:
            return [n for f in classes.values() for n in f if n not in self.members]
        return [n for k, f in classes.items() for n in f if self._file(k, n) is None]

    def read(self, label: str, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.members[name])
            return self._file(label, name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise MiniImagenetDataError(
                f"cannot read {name} from {self.where} ({exc}). Replace the file with "
                "a fresh copy. " + SOURCE_HINT
            ) from exc

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """One JPEG (or PNG) as uint8 ``[84, 84, 3]`` RGB; a clear error otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise MiniImagenetDataError(
                    f"{name} is {image.size[0]}x{image.size[1]}, expected "
                    f"{IMAGE_SIZE}x{IMAGE_SIZE} (MiniImageNet images are resized "
                    "to 84x84 once, by proc_images.py)"
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MiniImagenetDataError(
            f"{name} does not decode as an image ({exc}). Replace it with a fresh "
            "copy. " + SOURCE_HINT
        ) from exc


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
    classes = read_split(_csv_path(folder, split), split)
    _check_disjoint(folder, split, classes)
    source = _ImageSource(folder, split)
    try:
        missing = source.missing(classes)
        if missing:
            raise MiniImagenetDataError(
                f"{len(missing)} image(s) listed in {split}.csv are not in "
                f"{source.where}, e.g. {', '.join(missing[:3])}. " + _layout_hint()
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


def _check_disjoint(folder: Path, split: str, classes: dict[str, list[str]]) -> None:
    for other in SPLITS:
        if other == split:
            continue
        try:
            path = _csv_path(folder, other)
        except MiniImagenetDataError:
            continue  # a copy with one split only is fine; nothing to compare
        with open(path, newline="") as f:
            labels = {row[1] for row in csv.reader(f) if len(row) == 2}
        shared = sorted(set(classes) & labels)
        if shared:
            raise MiniImagenetDataError(
                f"classes {shared[:3]} are in both {split}.csv and {other}.csv "
                f"({len(shared)} shared): splits must be disjoint. {SOURCE_HINT}"
            )


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
        The split's :class:`~mamllib.tasks.SplitSizes`.
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
        An :class:`~mamllib.tasks.EpisodeSampler` over ``data.images`` seen
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


MiniImagenetTasks = tasks_for_split  # the name the chapter and the scripts call


__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "Episodes",
    "MiniImagenet",
    "MiniImagenetDataError",
    "MiniImagenetTasks",
    "load_miniimagenet",
    "split_sizes",
    "tasks_for_split",
]
