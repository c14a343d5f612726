"""The Omniglot archives' content: layout, counts, and each drawing preprocessed.

Each archive of github.com/brendenlake/omniglot holds
``<images_x>/<Alphabet>/<characterNN>/<IIII_DD>.png``: 105x105 black-on-white PNGs,
20 drawings per character. :func:`read_archive` checks the content, not the bytes:
the expected alphabets, characters and 20 drawings each, every PNG decodable and
105x105; anything else raises :class:`OmniglotDataError` saying which file, what was
expected and found, and how to fix it. Where the archives come from is
:mod:`mamllib.data.omniglot_fetch`.

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
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mamllib.data.store import DATA_ENV

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")
URLS = {name: BASE_URL + name for name in ARCHIVES}
# (alphabets, characters) per archive; every character has N_DRAWINGS drawings.
EXPECTED = {"images_background.zip": (30, 964), "images_evaluation.zip": (20, 659)}
N_ALPHABETS, N_CHARACTERS, N_DRAWINGS = 50, 1623, 20
SOURCE_SIZE, IMAGE_SIZE = 105, 28
_ENTRY = re.compile(r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>[^/]+)/[^/]+$")


class OmniglotDataError(RuntimeError):
    """Omniglot is missing, partial or corrupt; the message says how to fix it."""


def fix_hint() -> str:
    """The fix that error messages end with: where to put the archives."""
    return (
        "Put a copy of both archives in <folder>/omniglot/ and set "
        f"{DATA_ENV}=<folder> (or pass root=<folder>), or let mamllib download "
        f"them from {BASE_URL}."
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
        f"of {URLS.get(path.name, BASE_URL)} in its place. {fix_hint()}"
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
        raise OmniglotDataError(f"Omniglot archive {path} does not exist. {fix_hint()}")
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
