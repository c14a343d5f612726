"""Omniglot: the preprocessed cache, the splits of characters, and their episodes.

Introduced in notebook 07 (Omniglot). The data is Lake, Salakhutdinov & Tenenbaum's
(Science, 2015): 1623 handwritten characters from 50 alphabets, each drawn once by 20
people, as 105x105 black-on-white PNGs in two archives of
github.com/brendenlake/omniglot (``python/images_background.zip``: 30 alphabets,
964 characters; ``python/images_evaluation.zip``: 20 alphabets, 659 characters).
Where the archives come from (a local copy, the cache, a download) is
:mod:`mamllib.data.omniglot_fetch`; what they hold and how each drawing becomes 28x28
is :mod:`mamllib.data.omniglot_archive`; the names of theirs that callers use are
importable from here too.

The preprocessed tensor lives in ``<cache>`` (``cache=``, else ``$MAMLLIB_CACHE``,
else ``~/.cache/mamllib``) as ``omniglot-v<N>-28px-lanczos.pt``; ``N``
(:data:`CACHE_VERSION`) changes whenever preprocessing changes, so an old cache is
simply not found. It is written to a temporary name and renamed into place, so an
interrupted build leaves nothing half-written.

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

from dataclasses import dataclass
from pathlib import Path

import torch

from mamllib.data.omniglot_archive import (
    ARCHIVES,
    IMAGE_SIZE,
    N_ALPHABETS,
    N_CHARACTERS,
    N_DRAWINGS,
    URLS,
    OmniglotDataError,
    fix_hint,
    preprocess_image,
    read_archive,
)
from mamllib.data.omniglot_fetch import archive_paths, download_archive
from mamllib.data.store import DATA_ENV, cache_dir, remove_stale_temp_files, save_torch
from mamllib.episodes import EpisodeSampler, SplitSizes

# Bump when preprocessing changes: the cache file name carries it.
CACHE_VERSION = 1
SPLIT_SEED = 1  # cbfinn/maml seeds its split with random.seed(1)
SPLITS = {"paper": (1200, 0, 423), "original": (1100, 100, 423)}

_CACHE_SHAPE = (N_CHARACTERS, N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)


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
            f"{fix_hint()}"
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
        The split's :class:`~mamllib.episodes.SplitSizes` (paper scheme, rotations:
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
        An :class:`~mamllib.episodes.EpisodeSampler` whose ``images`` are uint8
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


__all__ = [
    "ARCHIVES",
    "CACHE_VERSION",
    "DATA_ENV",
    "SPLITS",
    "SPLIT_SEED",
    "URLS",
    "Omniglot",
    "OmniglotDataError",
    "archive_paths",
    "cache_file",
    "download_archive",
    "load_omniglot",
    "preprocess_image",
    "read_archive",
    "split_characters",
    "split_sizes",
    "tasks_for_split",
]
