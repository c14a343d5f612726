"""N-way K-shot episodes from any image set: the split's sizes, the batch, the sampler.

Introduced in notebook 07 (Omniglot). The data modules (:mod:`mamllib.data`) read the
files and build one :class:`EpisodeSampler` per split; it hands out support/query
tensors and knows nothing of MAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mamllib.batch import Batch, split_episodes


@dataclass(frozen=True)
class SplitSizes:
    """What one split of an image set offers an episode, in words for error messages.

    Both :class:`EpisodeSampler` and :func:`mamllib.data.check_episode_sizes` check
    episode sizes against it, so the check before training and the one at sampling
    time say the same thing.

    ``n_sources`` classes of their own, each with ``n_images`` images; with
    ``variants`` (Omniglot's rotations), each source class appears as that many
    classes (class ``source * variants + variant``), and a task holds at most one
    of them.
    """

    dataset: str  # "Omniglot", "MiniImageNet"
    split: str  # "train", "val", "test"
    n_sources: int
    n_images: int
    variants: int | None = None
    source_word: str = "class"  # what a source class is called: "character"
    sources_word: str = "classes"  # and in the plural: "characters"
    images_word: str = "images"  # what its images are called: "drawings"
    variants_word: str = "variants"  # "rotations"
    detail: str = ""  # how the split was chosen, e.g. "scheme='paper'"
    images_detail: str = ""  # e.g. "images_per_class=20 of 600"

    @property
    def n_classes(self) -> int:
        return self.n_sources * (self.variants or 1)

    def describe(self) -> str:
        """One line: the split, its classes and its images per class."""
        detail = f", {self.detail}" if self.detail else ""
        classes = f"{self.n_sources} {self.sources_word}"
        if self.variants and self.variants > 1:
            classes += (
                f" x {self.variants} {self.variants_word} = {self.n_classes} classes"
            )
        images = f"{self.n_images} {self.images_word} each"
        if self.images_detail:
            images += f" ({self.images_detail})"
        return f"{self.dataset} {self.split} split{detail}: {classes}, {images}"

    def check(self, n_way: int, k_shot: int, n_query: int, n_tasks: int = 1) -> None:
        """Refuse episodes this split cannot supply.

        Args:
            n_way: N, classes per task (distinct source classes).
            k_shot: K, support images per class.
            n_query: query images per class.
            n_tasks: tasks per batch.

        Raises:
            ValueError: naming the parameter, its value and the split's limit.
        """
        counts = dict(n_tasks=n_tasks, n_way=n_way, k_shot=k_shot, n_query=n_query)
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name}={value} but it must be >= 1")
        where = f"the {self.dataset} {self.split} split"
        if self.detail:
            where += f" ({self.detail})"
        if n_way > self.n_sources:
            note = ""
            if self.variants and self.variants > 1:
                note = (
                    f"; its {self.n_classes} classes are {self.variants} "
                    f"{self.variants_word} of each, and a task never holds two of one"
                )
            raise ValueError(
                f"n_way={n_way} but {where} has {self.n_sources} "
                f"{self.sources_word}{note}. Choose n_way <= {self.n_sources}."
            )
        if k_shot + n_query > self.n_images:
            detail = f" ({self.images_detail})" if self.images_detail else ""
            raise ValueError(
                f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} but "
                f"each {self.source_word} of {where} has {self.n_images} "
                f"{self.images_word}{detail}. Choose k_shot + n_query <= "
                f"{self.n_images}."
            )


@dataclass
class Episodes(Batch):
    """A meta-batch of N-way K-shot classification tasks, stacked on a task axis.

    Shapes: ``x_support`` ``[n_tasks, n_way * k_shot, C, H, W]`` float32 in [0, 1]
    (the uint8 pixels / 255), ``y_support`` ``[n_tasks, n_way * k_shot]`` int64 in
    ``0..n_way-1``, class-major (K examples of label 0, then label 1, ...);
    ``x_query``/``y_query`` likewise with ``n_query`` per class. ``classes``
    ``[n_tasks, n_way]`` is the split's class index behind each label (Omniglot:
    ``character * 4 + quarter_turns`` with rotations) and ``examples``
    ``[n_tasks, n_way, k_shot + n_query]`` the image indices within each class
    (Omniglot: the drawers), support first.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    classes: torch.Tensor
    examples: torch.Tensor


class EpisodeSampler:
    """N-way K-shot episodes over one split of an image set, as cbfinn/maml draws them.

    Each task takes ``n_way`` distinct source classes in random order (the order gives
    the labels), one random variant of each when the split has variants (Omniglot's
    rotations), and ``k_shot + n_query`` distinct images of each class. The random
    draws, in order: one uniform key per source class and task (their top ``n_way``
    pick the classes), one variant per class if any, one uniform key per image and
    class (their order picks the images). A split with ``variants=1`` still draws its
    (always 0) variant, so it meets the same classes and images as with more.

    Args:
        images: uint8 ``[n_classes, n_images, C, H, W]``, a tensor or a numpy array (a
            memory map is read only where episodes need it); class
            ``source * variants + variant``.
        sizes: the split's :class:`SplitSizes`, which must match ``images``.
        sources: ``[n_sources]`` index in the whole data set of each source class
            (Omniglot: character ids); default ``0..n_sources-1``.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        sizes: SplitSizes,
        sources: torch.Tensor | None = None,
    ):
        shape = tuple(images.shape)
        if len(shape) != 5 or images.dtype not in (torch.uint8, np.uint8):
            raise ValueError(
                "images must be uint8 [n_classes, n_images, C, H, W], got "
                f"{images.dtype} {list(shape)}"
            )
        if shape[:2] != (sizes.n_classes, sizes.n_images):
            raise ValueError(
                f"images has {shape[0]} classes of {shape[1]} images but sizes says "
                f"{sizes.describe()}"
            )
        if sources is None:
            sources = torch.arange(sizes.n_sources)
        if len(sources) != sizes.n_sources:
            raise ValueError(
                f"sources has {len(sources)} entries, expected {sizes.n_sources}"
            )
        self.images, self.sizes, self.sources = images, sizes, sources

    def __repr__(self) -> str:
        return f"EpisodeSampler({self.sizes.describe()})"

    @property
    def split(self) -> str:
        return self.sizes.split

    @property
    def n_classes(self) -> int:
        return self.sizes.n_classes

    @property
    def n_sources(self) -> int:
        return self.sizes.n_sources

    def source_of(self, classes: torch.Tensor) -> torch.Tensor:
        """Index in the whole data set of the source class behind each class."""
        return self.sources[classes // (self.sizes.variants or 1)]

    def sample(
        self,
        n_tasks: int,
        n_way: int,
        k_shot: int,
        n_query: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Episodes:
        """Draw ``n_tasks`` N-way K-shot tasks.

        Args:
            n_tasks: tasks in the meta-batch.
            n_way: N, classes per task.
            k_shot: K, support images per class.
            n_query: query images per class; defaults to K, as cbfinn/maml draws 2K
                images per class and splits them K/K.
            generator: the task stream's own generator (separate from model init).

        Returns:
            An :class:`Episodes` batch (CPU, float32 images in [0, 1]).

        Raises:
            ValueError: the split cannot supply such episodes (see
                :meth:`SplitSizes.check`).
        """
        n_query = k_shot if n_query is None else n_query
        sizes, g = self.sizes, generator
        sizes.check(n_way, k_shot, n_query, n_tasks)
        # top-k of uniform keys: n_way distinct source classes in random order, so
        # the labels 0..n_way-1 are a fresh random permutation in every task.
        classes = (
            torch.rand(n_tasks, sizes.n_sources, generator=g).topk(n_way, dim=1).indices
        )
        if sizes.variants is not None:
            variant = torch.randint(sizes.variants, (n_tasks, n_way), generator=g)
            classes = classes * sizes.variants + variant
        examples = torch.rand(n_tasks, n_way, sizes.n_images, generator=g).argsort(-1)
        examples = examples[..., : k_shot + n_query]  # [T, N, K + Q], distinct
        if isinstance(self.images, np.ndarray):  # read only these from a memory map
            pixels = torch.from_numpy(
                self.images[classes[..., None].numpy(), examples.numpy()]
            )
        else:
            pixels = self.images[classes[..., None], examples]
        x = pixels.float().div_(255)  # [T, N, K + Q, C, H, W]
        return Episodes(
            **split_episodes(x, k_shot, n_query), classes=classes, examples=examples
        )
