"""Omniglot: download or local copy, verify, preprocess once, cache; splits; episodes.

Introduced in notebook 07 (Omniglot). The data is Lake, Salakhutdinov & Tenenbaum's
(Science, 2015): 1623 handwritten characters from 50 alphabets, each drawn once by 20
people, as 105x105 black-on-white PNGs in two archives of
github.com/brendenlake/omniglot (``python/images_background.zip``: 30 alphabets,
964 characters; ``python/images_evaluation.zip``: 20 alphabets, 659 characters).

Where the archives come from, in order:

1. a local copy: ``root=`` or the environment variable ``MAMLLIB_DATA``, a folder that
   holds ``omniglot/images_background.zip`` and ``omniglot/images_evaluation.zip``
   (``root=`` may also name that ``omniglot`` folder itself). When one is named, a
   missing file there is an error, never a silent download;
2. ``<cache>/omniglot/images_*.zip`` from an earlier download;
3. a download from the official repository into ``<cache>/omniglot/``.

``<cache>`` is ``cache=``, else ``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``. The
preprocessed tensor lives there too, as ``omniglot-v<N>-28px-lanczos.pt``; ``N``
(:data:`CACHE_VERSION`) changes whenever preprocessing changes, so an old cache is
simply not found. Every file is written to a temporary name and renamed into place,
so an interrupted build or download leaves nothing half-written.

Verification checks content, not only bytes. We know the sha256 of the rebuilt copy
this project uses in CI (same pixels as the originals, different bytes) and the MD5 of
the originals (as published by torchvision); an archive matching neither is still
accepted if its content is right: the expected alphabets, characters and 20 drawings
each, every PNG decodable and 105x105. Anything else raises :class:`OmniglotDataError`
saying which file, what was expected and found, and how to fix it.

Preprocessing follows cbfinn/maml (``data/omniglot_resized/resize_images.py``): each
105x105 image is resized to 28x28 with Lanczos. Pillow trap: the PNGs are 1-bit (mode
``"1"``), and ``Image.resize`` silently switches to nearest neighbour for modes ``"1"``
and ``"P"`` whatever filter is asked for (the same line exists from PIL 1.1.x to Pillow
13). We convert to 8-bit grey (``"L"``) first, so Lanczos really is applied and strokes
get grey, anti-aliased edges. cbfinn/maml's script opened the PNGs with
``Image.open`` and called ``resize((28, 28), resample=Image.LANCZOS)`` without
converting, so it most likely trained on nearest-neighbour, still binary 28x28 images
(0/255 after TensorFlow's ``decode_png``). We cannot be sure: we do not know their
Pillow version or whether their PNGs were the 1-bit originals, and the exact pixels a
nearest-neighbour resize keeps depend on the Pillow version. We follow the stated
intent (Lanczos), as the paper's "downsampled to 28x28" allows.

Pixels: ink is 1 and background 0. cbfinn/maml reads the PNG, scales to [0, 1] and
computes ``1.0 - image  # invert``; the cache stores ``255 - grey`` as uint8 for the
same reason: zero padding of the convolutions then matches the background.

Splits (paper §5.2): 1200 characters chosen at random irrespective of alphabet for
meta-training, the remaining 423 for testing (``scheme="paper"``, what the presets use
for the Table 1 numbers). cbfinn/maml further holds out 100 of the 1200 for validation
(``scheme="original"``: 1100/100/423); use it to pick checkpoints. Both schemes come
from one fixed permutation, so their test characters are the same. The original
split (Python ``random.seed(1)`` over ``os.listdir`` order) depends on the file system
and cannot be reproduced; ours is fixed by :data:`SPLIT_SEED` and a sorted order.

Augmentation: rotations by 90, 180 and 270 degrees make new classes (1200 -> 4800
training classes), within each split, so a rotated test character stays in test.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch

from mamllib.data.store import (
    DATA_ENV,
    atomic_path,
    cache_dir,
    file_digest,
    remove_stale_temp_files,
    save_torch,
)
from mamllib.tasks import EpisodeSampler, SplitSizes

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")
URLS = {name: BASE_URL + name for name in ARCHIVES}
# (alphabets, characters) per archive; every character has N_DRAWINGS drawings.
EXPECTED = {"images_background.zip": (30, 964), "images_evaluation.zip": (20, 659)}
N_ALPHABETS, N_CHARACTERS, N_DRAWINGS = 50, 1623, 20
SOURCE_SIZE, IMAGE_SIZE = 105, 28
# Bytes we recognise. sha256: the rebuilt copy in ../shared/data/omniglot (SOURCE.md);
# MD5: the originals, as torchvision's datasets.Omniglot checks them. An archive
# matching neither is accepted on content alone.
KNOWN_SHA256 = {
    "images_background.zip": {
        "c4cbb7d04e6d197ee5ce04104b7cec6b14e8f5eb7676564664d534166c3166ff"
    },
    "images_evaluation.zip": {
        "04211999853d2644fe4aa050edb737727dff7d5754b0a083918b2ad221ad164b"
    },
}
KNOWN_MD5 = {
    "images_background.zip": {"68d2efa1b9178cc56df9314c21c6e718"},
    "images_evaluation.zip": {"6b91aef0f799c5bb55b94e3f2daec811"},
}
# Bump when preprocessing changes: the cache file name carries it.
CACHE_VERSION = 1
SPLIT_SEED = 1  # cbfinn/maml seeds its split with random.seed(1)
SPLITS = {"paper": (1200, 0, 423), "original": (1100, 100, 423)}

_CACHE_SHAPE = (N_CHARACTERS, N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
_ENTRY = re.compile(r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>[^/]+)/[^/]+$")


class OmniglotDataError(RuntimeError):
    """Omniglot is missing, partial or corrupt; the message says how to fix it."""


def _fix_hint() -> str:
    return (
        "Put a copy of both archives in <folder>/omniglot/ and set "
        f"{DATA_ENV}=<folder> (or pass root=<folder>), or let mamllib download "
        f"them from {BASE_URL}."
    )


def local_dir(root: str | Path | None = None) -> Path | None:
    """The folder holding a local copy of the archives, or None if none is named.

    Args:
        root: a folder with ``omniglot/images_*.zip`` (or the ``omniglot`` folder
            itself); else ``$MAMLLIB_DATA``.
    """
    if root is None and not os.environ.get(DATA_ENV):
        return None
    base = Path(root if root is not None else os.environ[DATA_ENV]).expanduser()
    if (base / ARCHIVES[0]).exists() and not (base / "omniglot").is_dir():
        return base
    return base / "omniglot"


def archive_paths(
    root: str | Path | None = None,
    cache: str | Path | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """The two archives on disk: the local copy, an earlier download, or a new one.

    Args:
        root: local copy (see :func:`local_dir`); a named copy must be complete.
        cache: cache folder (see :func:`cache_dir`).
        download: fetch what is missing from the official repository.

    Returns:
        ``{"images_background.zip": path, "images_evaluation.zip": path}``.
    """
    local = local_dir(root)
    if local is not None:
        missing = [name for name in ARCHIVES if not (local / name).is_file()]
        if missing:
            source = "root=" if root is not None else f"{DATA_ENV}="
            raise OmniglotDataError(
                f"Omniglot archive(s) {', '.join(missing)} not found in {local} "
                f"({source}{root if root is not None else os.environ[DATA_ENV]}). "
                f"Copy them there from {BASE_URL} (the folder must hold "
                f"omniglot/{ARCHIVES[0]} and omniglot/{ARCHIVES[1]}), or unset "
                f"{DATA_ENV} to use the cache and download."
            )
        return {name: local / name for name in ARCHIVES}
    folder = cache_dir(cache) / "omniglot"
    paths = {}
    for name in ARCHIVES:
        path = folder / name
        if not path.is_file():
            if not download:
                raise OmniglotDataError(
                    f"Omniglot archive {name} not found: no local copy is named and "
                    f"{path} does not exist (download=False). {_fix_hint()}"
                )
            download_archive(name, folder)
        paths[name] = path
    return paths


def download_archive(name: str, folder: str | Path, timeout: float = 60.0) -> Path:
    """Download one official archive into ``folder``, verified, renamed into place.

    The bytes go to a temporary file in ``folder``; they are accepted if their sha256
    or MD5 is known, else if :func:`read_archive` finds the expected content. Only then
    are they renamed to ``folder/name``; on any failure nothing is left behind.

    Args:
        name: ``"images_background.zip"`` or ``"images_evaluation.zip"``.
        folder: destination folder (created if needed).
        timeout: seconds to wait for the server.

    Returns:
        The path of the verified archive.
    """
    if name not in URLS:
        raise ValueError(f"unknown Omniglot archive {name!r}; choose one of {ARCHIVES}")
    url, folder = URLS[name], Path(folder)
    alternative = (
        f"If this machine cannot reach GitHub, download {url} elsewhere and put both "
        f"archives in <folder>/omniglot/, then set {DATA_ENV}=<folder>."
    )
    with atomic_path(folder / name) as tmp:
        try:
            with open(tmp, "wb") as f, urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, f, 1 << 20)
                f.flush()
                os.fsync(f.fileno())
                headers = getattr(response, "headers", None)
                expected = headers.get("Content-Length") if headers else None
        except OSError as exc:  # URLError, HTTPError, timeouts and resets
            raise OmniglotDataError(
                f"Could not download Omniglot {name} from {url}: {exc}. {alternative}"
            ) from exc
        size = os.path.getsize(tmp)
        if expected is not None and int(expected) != size:
            raise OmniglotDataError(
                f"Download of {url} is partial: {size:,} of {int(expected):,} bytes. "
                f"Try again. {alternative}"
            )
        if not _known_bytes(tmp, name):
            # Unknown bytes (a re-encoded mirror, or the originals if their MD5 here
            # were wrong): accept them only if the content is exactly right.
            try:
                read_archive(tmp, name)
            except OmniglotDataError as exc:
                raise OmniglotDataError(
                    f"Downloaded {url} ({size:,} bytes, sha256 "
                    f"{file_digest(tmp, 'sha256')}) failed verification: {exc} "
                    f"{alternative}"
                ) from exc
    return folder / name


def _known_bytes(path: Path, name: str) -> bool:
    return (
        file_digest(path, "sha256") in KNOWN_SHA256[name]
        or file_digest(path, "md5") in KNOWN_MD5[name]
    )


def preprocess_image(image) -> np.ndarray:
    """One Omniglot drawing as 28x28 uint8, ink 255, background 0.

    Args:
        image: a PIL image, 105x105, any mode (the archives hold mode ``"1"``).

    Returns:
        ``[28, 28]`` uint8 array: Lanczos-resized grey, inverted.
    """
    from PIL import Image

    # Pillow resizes "1" (and "P") images with nearest neighbour whatever filter is
    # passed; in "L" the Lanczos filter is really applied.
    grey = image.convert("L").resize(
        (IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.LANCZOS
    )
    return 255 - np.asarray(grey, dtype=np.uint8)


def _corrupt(path: Path, what: str) -> OmniglotDataError:
    return OmniglotDataError(
        f"Omniglot archive {path} is corrupt: {what}. Delete it and put a fresh copy "
        f"of {URLS.get(path.name, BASE_URL)} in its place. {_fix_hint()}"
    )


def read_archive(
    path: str | Path, name: str | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Verify one archive's content and preprocess every drawing.

    Checks the layout ``<images_x>/<Alphabet>/<characterNN>/<IIII_DD>.png``, the
    counts of alphabets, characters and drawings, and that every PNG decodes to
    105x105, before returning anything.

    Args:
        path: the zip file.
        name: which archive it should be (defaults to the file name).

    Returns:
        ``(images, alphabets, characters)``: uint8 ``[n_characters, 20, 28, 28]``
        (ink 255), and per character its alphabet and folder name, sorted by
        (alphabet, character); drawings sorted by file name.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = name or path.name
    if name not in EXPECTED:
        raise ValueError(f"unknown Omniglot archive {name!r}; choose one of {ARCHIVES}")
    top = name.removesuffix(".zip")
    if not path.is_file():
        raise OmniglotDataError(
            f"Omniglot archive {path} does not exist. {_fix_hint()}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _corrupt(
            path,
            f"not a complete zip file ({exc}; {path.stat().st_size:,} bytes: a "
            "truncated download or copy?)",
        ) from exc
    with archive:
        characters: dict[tuple[str, str], list[zipfile.ZipInfo]] = {}
        for info in archive.infolist():
            match = _ENTRY.match(info.filename)
            if info.is_dir() or not info.filename.endswith(".png") or not match:
                continue
            if match["top"] == top:
                key = (match["alphabet"], match["character"])
                characters.setdefault(key, []).append(info)
        n_alphabets, n_characters = EXPECTED[name]
        found_alphabets = len({alphabet for alphabet, _ in characters})
        if (found_alphabets, len(characters)) != (n_alphabets, n_characters):
            raise _corrupt(
                path,
                f"expected {n_alphabets} alphabets and {n_characters} characters "
                f"under {top}/<alphabet>/<character>/*.png, found {found_alphabets} "
                f"alphabets and {len(characters)} characters",
            )
        short = {k: len(v) for k, v in characters.items() if len(v) != N_DRAWINGS}
        if short:
            (alphabet, character), count = next(iter(sorted(short.items())))
            raise _corrupt(
                path,
                f"expected {N_DRAWINGS} drawings per character, found {count} in "
                f"{top}/{alphabet}/{character} ({len(short)} characters affected)",
            )
        keys = sorted(characters)
        images = np.empty(
            (len(keys), N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8
        )
        for i, key in enumerate(keys):
            for j, info in enumerate(sorted(characters[key], key=lambda e: e.filename)):
                try:
                    data = archive.read(info)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    raise _corrupt(
                        path, f"cannot read {info.filename} ({exc})"
                    ) from exc
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        image.load()
                        if image.size != (SOURCE_SIZE, SOURCE_SIZE):
                            raise _corrupt(
                                path,
                                f"{info.filename} is {image.size[0]}x{image.size[1]}, "
                                f"expected {SOURCE_SIZE}x{SOURCE_SIZE}",
                            )
                        images[i, j] = preprocess_image(image)
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    raise _corrupt(
                        path, f"{info.filename} is not a valid PNG ({e})"
                    ) from e
    return (
        torch.from_numpy(images),
        [alphabet for alphabet, _ in keys],
        [character for _, character in keys],
    )


@dataclass
class Omniglot:
    """All 1623 characters, preprocessed.

    ``images`` is uint8 ``[1623, 20, 28, 28]``, ink 255 and background 0; characters
    are ordered background archive first, then by (alphabet, character folder).
    ``alphabets[i]`` and ``characters[i]`` name character ``i``; ``background[i]``
    says which archive it came from.
    """

    images: torch.Tensor
    alphabets: list[str]
    characters: list[str]
    background: torch.Tensor

    @property
    def n_characters(self) -> int:
        return self.images.shape[0]

    @property
    def n_alphabets(self) -> int:
        return len(set(self.alphabets))

    def name(self, i: int) -> str:
        """``"<Alphabet>/<characterNN>"`` of character ``i``."""
        return f"{self.alphabets[i]}/{self.characters[i]}"


def cache_file(cache: str | Path | None = None) -> Path:
    """The preprocessed tensor's path; its name carries :data:`CACHE_VERSION`."""
    name = f"omniglot-v{CACHE_VERSION}-{IMAGE_SIZE}px-lanczos.pt"
    return cache_dir(cache) / name


def _read_cache(path: Path) -> Omniglot | None:
    try:
        blob = torch.load(path, weights_only=True)
        images = blob["images"]
        ok = (
            blob.get("version") == CACHE_VERSION
            and images.dtype == torch.uint8
            and tuple(images.shape) == _CACHE_SHAPE
            and len(blob["alphabets"]) == len(blob["characters"]) == N_CHARACTERS
        )
    except Exception:  # a damaged cache is derived data: rebuild it
        return None
    if not ok:
        return None
    return Omniglot(images, blob["alphabets"], blob["characters"], blob["background"])


def load_omniglot(
    root: str | Path | None = None,
    cache: str | Path | None = None,
    download: bool = True,
    rebuild: bool = False,
) -> Omniglot:
    """Omniglot as a tensor: from the cache in a second, else built from the archives.

    Building (seconds to a minute) verifies both archives and writes the cache
    atomically; a cache that cannot be read or has the wrong shape is rebuilt.

    Args:
        root: local copy of the archives (else ``$MAMLLIB_DATA``; see module doc).
        cache: cache folder (else ``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``).
        download: fetch missing archives from the official repository.
        rebuild: ignore an existing cache.

    Returns:
        An :class:`Omniglot` with all 1623 characters.
    """
    path = cache_file(cache)
    remove_stale_temp_files(path)  # left by a build that was killed
    if not rebuild and path.is_file():
        data = _read_cache(path)
        if data is not None:
            return data
    parts = [
        read_archive(archive, name)
        for name, archive in archive_paths(root, cache, download).items()
    ]
    images = torch.cat([p[0] for p in parts])
    alphabets = [a for p in parts for a in p[1]]
    characters = [c for p in parts for c in p[2]]
    background = torch.zeros(len(characters), dtype=torch.bool)
    background[: parts[0][0].shape[0]] = True
    if len(set(alphabets)) != N_ALPHABETS:
        raise OmniglotDataError(
            f"expected {N_ALPHABETS} distinct alphabets over both archives, found "
            f"{len(set(alphabets))}: are the two archives swapped or duplicated? "
            f"{_fix_hint()}"
        )
    save_torch(
        path,
        {
            "version": CACHE_VERSION,
            "images": images,
            "alphabets": alphabets,
            "characters": characters,
            "background": background,
        },
    )
    return Omniglot(images, alphabets, characters, background)


def split_characters(
    scheme: str = "paper", seed: int = SPLIT_SEED, n_characters: int = N_CHARACTERS
) -> dict[str, torch.Tensor]:
    """Character indices of each split, chosen at random irrespective of alphabet.

    Args:
        scheme: ``"paper"`` (1200 train / 423 test, what the presets use) or
            ``"original"`` (cbfinn/maml's 1100 train / 100 val / 423 test; the val
            characters come out of the paper's 1200, the test ones are the same).
        seed: the split's seed; keep the default to compare with published runs.
        n_characters: 1623 for Omniglot.

    Returns:
        ``{"train": ..., "test": ...}`` plus ``"val"`` for ``"original"``; sorted
        int64 index tensors.
    """
    if scheme not in SPLITS:
        raise ValueError(
            f"unknown split scheme {scheme!r}; choose one of {list(SPLITS)}"
        )
    n_train, n_val, n_test = SPLITS[scheme]
    if n_characters != n_train + n_val + n_test:
        raise ValueError(
            f"split {scheme!r} needs {n_train + n_val + n_test} characters, "
            f"got {n_characters}"
        )
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_characters, generator=g)
    splits = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {k: v.sort().values for k, v in splits.items() if len(v) > 0}


def split_sizes(
    split: str = "train", scheme: str = "paper", rotations: bool = True
) -> SplitSizes:
    """How many characters, classes and drawings a split offers, without any file.

    Args:
        split: ``"train"``, ``"test"``, or ``"val"`` (``scheme="original"`` only).
        scheme: see :func:`split_characters`; presets use ``"paper"``.
        rotations: the 90/180/270 degree rotations count as classes.

    Returns:
        The split's :class:`~mamllib.tasks.SplitSizes` (paper scheme, rotations:
        4800 training classes of 1200 characters, 1692 test classes of 423).
    """
    if scheme not in SPLITS:
        raise ValueError(
            f"unknown split scheme {scheme!r}; choose one of {list(SPLITS)}"
        )
    counts = dict(zip(("train", "val", "test"), SPLITS[scheme]))
    if not counts.get(split):
        hint = " (use scheme='original' for 'val')" if split == "val" else ""
        present = [k for k, v in counts.items() if v]
        raise ValueError(
            f"split {split!r} is not in scheme {scheme!r}; choose one of "
            f"{present}{hint}"
        )
    return SplitSizes(
        dataset="Omniglot",
        split=split,
        n_sources=counts[split],
        n_images=N_DRAWINGS,
        variants=4 if rotations else 1,
        source_word="character",
        sources_word="characters",
        images_word="drawings",
        variants_word="rotations",
        detail=f"scheme={scheme!r}" + ("" if rotations else ", no rotations"),
    )


def tasks_for_split(
    data: Omniglot,
    split: str = "train",
    scheme: str = "paper",
    rotations: bool = True,
    seed: int = SPLIT_SEED,
) -> EpisodeSampler:
    """Few-shot episodes over one split of Omniglot, as cbfinn/maml samples them.

    Each task takes ``n_way`` distinct characters of the split in random order (the
    order gives the labels), a rotation by 0, 90, 180 or 270 degrees per character,
    and ``k_shot + n_query`` distinct drawings per character. With rotations on, the
    split has 4x as many classes (1200 -> 4800 for meta-training), and a task is
    ``n_way`` of them, never two rotations of one character. Without rotations the
    turn is still drawn (always 0), so the same characters and drawings come up.

    Args:
        data: from :func:`load_omniglot`.
        split: ``"train"``, ``"test"``, or ``"val"`` (``scheme="original"`` only).
        scheme: see :func:`split_characters`; presets use ``"paper"``.
        rotations: add the 90/180/270 degree rotations as classes.
        seed: the split's seed (not the task stream's: pass a generator to sample).

    Returns:
        An :class:`~mamllib.tasks.EpisodeSampler` whose ``images`` are uint8
        ``[n_classes, 20, 1, 28, 28]``, class ``c = character * 4 + quarter turns``
        (counter-clockwise, as tf ``rot90``), and whose ``source_of(classes)`` is the
        index into :class:`Omniglot` of the character behind each class.
    """
    sizes = split_sizes(split, scheme, rotations)
    character_ids = split_characters(scheme, seed, data.n_characters)[split]
    n_rotations = sizes.variants
    base = data.images[character_ids]  # [n_chars, 20, 28, 28]
    # [n_chars, n_rot, 20, 28, 28] -> [n_chars * n_rot, 20, 1, 28, 28]
    images = torch.stack(
        [torch.rot90(base, r, dims=(-2, -1)) for r in range(n_rotations)], 1
    ).flatten(0, 1)
    return EpisodeSampler(images.unsqueeze(2), sizes, sources=character_ids)


OmniglotTasks = tasks_for_split  # the name the chapter and the scripts call
