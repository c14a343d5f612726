"""Data sets: archives on disk -> verified uint8 arrays in a cache. Nothing here knows
of MAML or of training; :class:`mamllib.episodes.EpisodeSampler` hands out
support/query tensors from the arrays."""

from __future__ import annotations

DATASETS = ("omniglot", "miniimagenet")


def check_episode_sizes(
    dataset: str,
    split: str,
    n_way: int,
    k_shot: int,
    n_query: int | None = None,
    *,
    scheme: str | None = None,
    rotations: bool | None = None,
    images_per_class: int | None = None,
) -> None:
    """Refuse N-way K-shot episodes a split cannot supply, before any file is read.

    The same check runs when episodes are sampled; calling it at start-up turns a
    wrong configuration into an error before the data is loaded or a model trained.

    Args:
        dataset: ``"omniglot"`` or ``"miniimagenet"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        n_way: N, classes per task.
        k_shot: K, support images per class.
        n_query: query images per class; None means K (as the samplers default).
        scheme: Omniglot only: ``"paper"`` (1200 train / 423 test characters, the
            default) or ``"original"`` (1100 / 100 val / 423).
        rotations: Omniglot only: rotations as classes (default True: 4800 / 1692
            classes; a task still holds distinct characters).
        images_per_class: MiniImageNet only: images cached per class (default all
            600; the 64 / 16 / 20 classes are fixed).

    Raises:
        ValueError: naming the parameter, its value and the split's limit, e.g.
            ``k_shot + n_query = 10 + 15 = 25 but each character of the Omniglot
            train split (scheme='paper') has 20 drawings``.
    """
    n_query = k_shot if n_query is None else n_query
    if dataset == "omniglot":
        if images_per_class is not None:
            raise ValueError(
                f"images_per_class={images_per_class} applies to MiniImageNet only; "
                "pass None for Omniglot (every character has 20 drawings)"
            )
        from mamllib.data import omniglot

        sizes = omniglot.split_sizes(
            split,
            "paper" if scheme is None else scheme,
            True if rotations is None else rotations,
        )
    elif dataset == "miniimagenet":
        if scheme is not None or rotations is not None:
            raise ValueError(
                f"scheme={scheme!r} and rotations={rotations!r} apply to Omniglot "
                "only; pass None for MiniImageNet"
            )
        from mamllib.data import miniimagenet

        sizes = miniimagenet.split_sizes(split, images_per_class)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    sizes.check(n_way, k_shot, n_query)
