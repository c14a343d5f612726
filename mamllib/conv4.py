"""Conv-4: the image model of the paper's Omniglot and MiniImagenet experiments.

A stateless skeleton like every model here (:mod:`mamllib.models`): the numbers live
in a ``params`` dict, from :func:`init_conv4_params`. TF's 'SAME' padding and batch
norm with the batch's own statistics follow cbfinn/maml. The batched forward of a
whole meta-batch (:meth:`Conv4.forward_tasks`) is speed-only code in
:mod:`mamllib.fast.batched_conv4`.

Introduced in notebook 07 (Omniglot).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mamllib.fast import batched_conv4


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``padding='SAME'`` as (before, after) zeros on one spatial axis.

    TF makes the output ``ceil(size / stride)`` long and, when the padding needed is
    odd, puts the extra zero after (bottom/right). For a 3x3 stride-2 convolution on
    an even size (28, 14, 4) that is (0, 1): PyTorch's symmetric ``padding=1`` gives
    the same output size but windows shifted by one pixel, so we pad explicitly.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def batch_norm_batch_stats(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Batch norm with the statistics of ``x`` itself, written from elementary ops.

    Normalises each channel (axis 1) over all other axes with the biased variance, as
    TF's batch norm does in training mode, then applies ``weight`` (gamma) and ``bias``
    (beta) if given. Why not ``F.batch_norm``: with torch 2.13, ``torch.func.vmap``
    gives a second-order meta-gradient through it that is 0.1-0.3% off (also in
    float64); this formulation is exact under vmap (``tests/test_conv4.py``).

    Args:
        x: ``[N, C, ...]``.
        weight, bias: ``[C]`` or None.
        eps: added to the variance (TF's default is 1e-3).

    Returns:
        A tensor shaped like ``x``.
    """
    dims = [0, *range(2, x.dim())]
    centred = x - x.mean(dims, keepdim=True)
    var = (centred * centred).mean(dims, keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


class BatchNormBatchStats(nn.Module):
    """Transductive batch norm: always the current batch's mean and variance.

    No running statistics, at meta-train and meta-test alike, as cbfinn/maml (its
    ``tf_layers.batch_norm`` stays in training mode). Holds beta (``bias``) and, if
    ``scale``, gamma (``weight``).
    """

    def __init__(self, n_channels: int, scale: bool = False, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.empty(n_channels, device="meta"))
        self.weight = (
            nn.Parameter(torch.empty(n_channels, device="meta")) if scale else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm_batch_stats(x, self.weight, self.bias, self.eps)


class Conv4(nn.Module):
    """The paper's conv-4 (App. A.1): 4 x [3x3 conv, batch norm, ReLU], a linear head.

    Follows cbfinn/maml (``maml.py:forward_conv``, ``utils.py:conv_block``) where the
    paper is silent:

    * Omniglot (``max_pool=False``): 3x3 convolutions with stride 2 and TF ``'SAME'``
      padding (28 -> 14 -> 7 -> 4 -> 2), then the mean over the remaining 2x2
      positions (``tf.reduce_mean(hidden4, [1, 2])``), so the head sees
      ``n_filters`` features.
    * MiniImagenet (``max_pool=True``, ``n_filters=32``, ``in_channels=3``,
      ``image_size=84``): stride-1 convolutions, each block followed by a 2x2
      max-pool (84 -> 42 -> 21 -> 10 -> 5); the head sees the flattened
      ``n_filters * 5 * 5`` map (channel-major; TF flattens channel-last).
    * Batch norm uses the batch's own statistics (:class:`BatchNormBatchStats`), with
      eps 1e-3 and, like TF's ``tf_layers.batch_norm`` defaults (``center=True,
      scale=False``), a learned offset beta and no scale gamma; ``bn_scale=True``
      adds gamma. The conv bias is kept, as in the original, although batch norm
      cancels it (its gradient is zero); :meth:`forward_tasks` leaves it out. One
      difference: cbfinn/maml meta-learns beta but leaves it out of the inner loop
      (it is not in ``weights``); here it is in ``params`` and adapted like every
      other parameter.

    Inputs are ``[N, in_channels, image_size, image_size]``; outputs are logits
    ``[N, n_way]``. The module holds structure only (meta device); parameters come
    from :func:`init_conv4_params`. :meth:`forward_tasks` runs a whole meta-batch
    with one parameter set per task.

    Introduced in notebook 07 (Omniglot).
    """

    def __init__(
        self,
        n_way: int,
        in_channels: int = 1,
        n_filters: int = 64,
        image_size: int = 28,
        max_pool: bool = False,
        bn_scale: bool = False,
        bn_eps: float = 1e-3,
    ):
        super().__init__()
        if min(n_way, in_channels, n_filters, image_size) < 1:
            raise ValueError(
                "n_way, in_channels, n_filters and image_size must be >= 1, got "
                f"{n_way}, {in_channels}, {n_filters}, {image_size}"
            )
        self.n_way, self.in_channels, self.n_filters = n_way, in_channels, n_filters
        self.image_size, self.max_pool = image_size, max_pool
        self.stride = 1 if max_pool else 2
        # (top/left, bottom/right) zeros before each conv, and the sizes they give.
        self.paddings: list[tuple[int, int]] = []
        size = image_size
        for _ in range(4):
            self.paddings.append(tf_same_padding(size, 3, self.stride))
            size = -(-size // self.stride)
            if max_pool:
                size //= 2  # 2x2 max-pool, stride 2, TF 'VALID'
            if size < 1:
                raise ValueError(
                    f"image_size {image_size} is too small for four conv blocks"
                )
        self.final_size = size
        # The batched forward's symmetric padding on mirrored maps, where it exists.
        self.mirrored_padding = batched_conv4.mirrored_padding(
            image_size, self.paddings, self.stride, max_pool
        )
        channels = [in_channels] + [n_filters] * 4
        for i in range(4):
            conv = nn.Conv2d(channels[i], channels[i + 1], 3, device="meta")
            setattr(self, f"conv{i + 1}", conv)
            setattr(
                self, f"norm{i + 1}", BatchNormBatchStats(n_filters, bn_scale, bn_eps)
            )
        n_features = n_filters * size * size if max_pool else n_filters
        self.head = nn.Linear(n_features, n_way, device="meta")

    def _conv(self, i: int, h: torch.Tensor, weight, bias, groups: int = 1):
        before, after = self.paddings[i]
        if before == after:
            return F.conv2d(h, weight, bias, self.stride, before, groups=groups)
        # TF 'SAME' with an odd total: the extra zero row/column goes bottom/right.
        h = F.pad(h, (before, after, before, after))
        return F.conv2d(h, weight, bias, self.stride, 0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (
            self.in_channels,
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"expected images [N, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}], got {list(x.shape)}"
            )
        h = x
        for i in range(4):
            conv = getattr(self, f"conv{i + 1}")
            h = self._conv(i, h, conv.weight, conv.bias)
            h = torch.relu(getattr(self, f"norm{i + 1}")(h))
            if self.max_pool:
                h = F.max_pool2d(h, 2)
        # [N, C, s, s] -> [N, C * s * s] (MiniImagenet) or mean over s x s (Omniglot)
        h = h.flatten(1) if self.max_pool else h.mean((2, 3))
        return self.head(h)

    def forward_tasks(
        self, params: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` for a meta-batch, each task with its own parameters, in
        one pass (:func:`mamllib.fast.batched_conv4.forward_tasks`: why, and how it is
        held equal to :meth:`forward`).

        Args:
            params: the names of ``named_parameters``, each with a leading task axis
                ``[T, ...]`` (``expand`` a shared set to get one).
            x: ``[T, N, in_channels, image_size, image_size]``.

        Returns:
            Logits ``[T, N, n_way]``.
        """
        return batched_conv4.forward_tasks(self, params, x)


def init_conv4_params(
    model: Conv4,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Fresh parameters for a :class:`Conv4`, initialised as cbfinn/maml.

    Conv weights: Glorot (Xavier) uniform over fan_in = 9 x in_channels and
    fan_out = 9 x out_channels (``xavier_initializer_conv2d``). Head weight: a
    standard normal, stddev 1, for Omniglot (``tf.random_normal``, cbfinn/maml's
    ``w5`` when the features are averaged), Glorot uniform for MiniImagenet
    (``xavier_initializer``). Biases, beta: 0; gamma (if any): 1, TF's defaults.

    Args:
        model: the skeleton.
        generator: a CPU ``torch.Generator`` used only for initialisation.
        dtype, device: where the parameters live.

    Returns:
        A dict ``{name: tensor}`` with ``requires_grad=True`` leaves.
    """
    params: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if name.startswith("norm") and name.endswith("weight"):
            value = torch.ones(p.shape, dtype=dtype)
        elif name.endswith("bias"):
            value = torch.zeros(p.shape, dtype=dtype)
        elif name == "head.weight" and not model.max_pool:
            value = torch.randn(p.shape, generator=generator, dtype=dtype)
        else:
            receptive = p[0, 0].numel()  # 9 for a 3x3 conv, 1 for the head
            fan_in, fan_out = p.shape[1] * receptive, p.shape[0] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            value = (
                torch.rand(p.shape, generator=generator, dtype=dtype) * 2 - 1
            ) * bound
        params[name] = value.to(device).requires_grad_(True)
    return params
