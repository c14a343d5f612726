"""Models as stateless skeletons plus a plain dict of parameters.

A model here is an ``nn.Module`` used only for its structure: the numbers live in a
``params`` dict ``{name: tensor}`` that we pass to :func:`forward`, which calls
``torch.func.functional_call``. That keeps adaptation explicit (``adapted_params`` is
just another dict) and lets ``vmap`` batch over tasks.

The MLP and the parameter helpers live here; the conv-4 of the image experiments in
:mod:`mamllib.conv4`, its names importable from here too.

Introduced in notebook 02 (few-shot regression).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from mamllib.conv4 import (
    BatchNormBatchStats,
    Conv4,
    batch_norm_batch_stats,
    init_conv4_params,
    tf_same_padding,
)

Params = dict[str, torch.Tensor]

__all__ = [
    "MLP",
    "BatchNormBatchStats",
    "Conv4",
    "Params",
    "batch_norm_batch_stats",
    "count_params",
    "detach_params",
    "forward",
    "init_conv4_params",
    "init_params",
    "tf_same_padding",
]


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. 1-40-40-1 for the sinusoid (paper §5.1)."""

    def __init__(self, sizes: tuple[int, ...] = (1, 40, 40, 1)):
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(
                f"sizes must list at least two positive widths, got {sizes}"
            )
        self.sizes = tuple(int(s) for s in sizes)
        # Built on the meta device: the module holds structure only, never numbers.
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            layers.append(nn.Linear(n_in, n_out, device="meta"))
            if i < len(self.sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_params(
    model: nn.Module,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Params:
    """Fresh parameters for ``model`` drawn from ``generator``.

    A :class:`Conv4` gets :func:`init_conv4_params`. Otherwise weights: PyTorch's
    ``nn.Linear`` default (Kaiming-uniform, bound 1/sqrt(fan_in)).
    cbfinn/maml draws them from ``tf.truncated_normal(stddev=0.01)``; the paper does not
    say. Biases start at 0, as in cbfinn/maml.

    Args:
        model: the skeleton whose ``named_parameters`` give names and shapes.
        generator: a CPU ``torch.Generator`` used only for initialisation.
        dtype, device: where the parameters live.

    Returns:
        A dict ``{name: tensor}`` with ``requires_grad=True`` leaves.
    """
    if isinstance(model, Conv4):  # its own scheme, cbfinn/maml's
        return init_conv4_params(model, generator, dtype, device)
    params: Params = {}
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            value = torch.zeros(p.shape, dtype=dtype)
        else:
            fan_in = p.shape[1] if p.dim() > 1 else p.shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            # Kaiming-uniform with a = sqrt(5), PyTorch's nn.Linear default.
            value = (
                torch.rand(p.shape, generator=generator, dtype=dtype) * 2 - 1
            ) * bound
        params[name] = value.to(device).requires_grad_(True)
    return params


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` with the numbers in ``params`` (``torch.func.functional_call``)."""
    return functional_call(model, params, (x,))


def detach_params(params: Params, requires_grad: bool = True) -> Params:
    """A copy of ``params`` cut from any graph (leaves again if ``requires_grad``)."""
    return {
        k: v.detach().clone().requires_grad_(requires_grad) for k, v in params.items()
    }


def count_params(params: Params) -> int:
    """Total number of scalars in ``params``."""
    return sum(v.numel() for v in params.values())
