"""The two Omniglot archives on disk: a local copy, an earlier download, or a new one.

Where the archives come from, in order:

1. a local copy: ``root=`` or the environment variable ``MAMLLIB_DATA``, a folder that
   holds ``omniglot/images_background.zip`` and ``omniglot/images_evaluation.zip``
   (``root=`` may also name that ``omniglot`` folder itself). When one is named, a
   missing file there is an error, never a silent download;
2. ``<cache>/omniglot/images_*.zip`` from an earlier download;
3. a download from the official repository into ``<cache>/omniglot/``.

``<cache>`` is ``cache=``, else ``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``. A
download is written to a temporary name and renamed into place, so an interrupted one
leaves nothing half-written.

Verification: we know the sha256 of the rebuilt copy this project uses in CI (same
pixels as the originals, different bytes) and the MD5 of the originals (as published
by torchvision); downloaded bytes matching neither are still accepted if their
content is right (:func:`mamllib.data.omniglot_archive.read_archive`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.request import urlopen

from mamllib.data.omniglot_archive import (
    ARCHIVES,
    BASE_URL,
    URLS,
    OmniglotDataError,
    fix_hint,
    read_archive,
)
from mamllib.data.store import DATA_ENV, atomic_path, cache_dir, file_digest

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
                    f"{path} does not exist (download=False). {fix_hint()}"
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
