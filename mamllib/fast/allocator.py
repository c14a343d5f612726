"""glibc's allocator told to keep freed memory (what training and the benchmarks use).

Replaces glibc's default, which hands big blocks back to the system on ``free`` so that
every meta-iteration faults and zeroes its activations afresh. Nothing is computed
differently, so no test of equality is needed; ``benchmarks/`` measure both.
"""

from __future__ import annotations

ALLOCATOR_CHOICES = {
    "keep": "keep_freed_memory() (what training does)",
    "default": "glibc's default (big blocks returned to the system on free)",
}


def add_allocator_option(parser) -> None:
    """``--allocator keep|default`` for the cost benchmarks; pass the parsed choice to
    :func:`use_allocator`."""
    parser.add_argument(
        "--allocator",
        choices=list(ALLOCATOR_CHOICES),
        default="keep",
        help="; ".join(f"{k}: {v}" for k, v in ALLOCATOR_CHOICES.items()),
    )


def use_allocator(choice: str) -> None:
    """Apply an ``--allocator`` choice (see :func:`add_allocator_option`)."""
    if choice == "keep":
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory for reuse instead of returning it
    to the system; True if it was applied (Linux with glibc), False elsewhere.

    By default glibc serves every allocation above 32 MB with ``mmap`` and hands it
    back on ``free``, so each meta-iteration that builds big activations pays for
    fresh pages again: the kernel faults and zeroes them. At the locomotion paper
    preset that is a large share of a MAML-TRPO meta-iteration on a CPU
    (``benchmarks/README.md``, ``benchmarks/results/metarl-cost-cpu*.json``). The
    cost: the process keeps its peak memory until it ends. The same as starting
    Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = mallopt(m_mmap_max, 0) == 1
    ok &= mallopt(m_trim_threshold, 2**31 - 1) == 1
    ok &= mallopt(m_top_pad, 256 * 2**20) == 1
    return bool(ok)
