"""The files of a MiniImageNet copy: the split lists, the images, their decoding.

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

Verification: each split has its number of classes (64/16/20), 600 rows per class,
no class in two splits, every listed file present, and every image decodes to 84x84
(:func:`decode_image`, as it goes into the cache of :mod:`mamllib.data.miniimagenet`).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mamllib.data.store import DATA_ENV

SPLITS = ("train", "val", "test")
N_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
IMAGE_SIZE = 84
SOURCE_HINT = (
    "MiniImageNet has no official download. The split CSVs (filename,label) are in "
    "github.com/twitter-research/meta-learning-lstm (data/miniImagenet/); the 84x84 "
    "images are made from ImageNet (ILSVRC-2012 train, non-commercial research terms) "
    "with that repository's or cbfinn/maml's proc_images.py."
)


class MiniImagenetDataError(RuntimeError):
    """MiniImageNet is missing, partial or corrupt; the message says how to fix it."""


def layout_hint() -> str:
    """The fix that error messages end with: the layout and where to get the files."""
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
            + layout_hint()
        )
    base = Path(root if root is not None else os.environ[DATA_ENV]).expanduser()
    return base / "miniimagenet" if (base / "miniimagenet").is_dir() else base


def csv_path(folder: Path, split: str) -> Path:
    """The split's CSV in ``folder/splits/`` or ``folder/``; an error naming both."""
    for path in (folder / "splits" / f"{split}.csv", folder / f"{split}.csv"):
        if path.is_file():
            return path
    raise MiniImagenetDataError(
        f"MiniImageNet split list {split}.csv not found in {folder}/splits/ nor in "
        f"{folder}/. {layout_hint()}"
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
                + layout_hint()
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


def check_disjoint(folder: Path, split: str, classes: dict[str, list[str]]) -> None:
    """Refuse ``classes`` of ``split`` that another split's CSV in ``folder`` lists."""
    for other in SPLITS:
        if other == split:
            continue
        try:
            path = csv_path(folder, other)
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


class ImageSource:
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
            + layout_hint()
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
