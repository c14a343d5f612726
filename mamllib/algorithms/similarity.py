"""How alike two representations of the same examples are: linear CKA.

Raghu et al. (ICLR 2020, "Rapid Learning or Feature Reuse?") ask whether MAML's inner
loop changes what a network's layers compute, by comparing each layer's activations on
the same inputs before and after adaptation. They use CCA and CKA; this module has
linear CKA, centred kernel alignment with a linear kernel (Kornblith, Norouzi, Lee,
Hinton, ICML 2019, "Similarity of Neural Network Representations Revisited"):

    CKA(X, Y) = <K, L>_F / (||K||_F ||L||_F),   K = X_c X_c^T,  L = Y_c Y_c^T,

with ``X_c``, ``Y_c`` the activations with each feature's mean over the examples
removed (so ``K`` and ``L`` are centred Gram matrices). It is 1 for identical
representations, and stays 1 under an orthogonal transform or an isotropic scaling of
either (a rotated copy of a layer's features carries the same information), but not
under an arbitrary invertible linear map; two independent random representations
score near 0 when there are many more examples than features, but not when the
features outnumber the examples (Kornblith et al. discuss both). The Gram form costs
``n^2 (p + q)`` for ``n`` examples of ``p`` and ``q`` features, so wide convolutional
layers are cheap to compare on a few hundred examples.

Introduced in notebook 13 (ANIL and feature reuse). Tests:
``tests/test_similarity_and_classifier.py``. Only torch is imported.
"""

from __future__ import annotations

import torch


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0, keepdim=True)  # remove each feature's mean over examples
    return centred @ centred.T  # [n, n]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same ``n`` examples, in [0, 1].

    Args:
        x: ``[n, ...]`` activations of ``n`` examples (axes after the first are
            flattened into features, e.g. a conv layer's ``[n, C, H, W]``).
        y: ``[n, ...]`` activations of the same examples, in the same order.

    Returns:
        A scalar tensor (the dtype of ``x`` and ``y``).

    Raises:
        ValueError: the two do not hold the same number of examples, there are fewer
            than two, or one representation is the same for every example (CKA is
            then 0/0).
    """
    if x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "linear_cka compares two representations of the same examples: the first "
            f"axes must match, got shapes {list(x.shape)} and {list(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 examples, got {x.shape[0]}")
    k = _centred_gram(x.reshape(len(x), -1))
    l_ = _centred_gram(y.reshape(len(y), -1))
    norms = k.norm() * l_.norm()
    if norms == 0:
        raise ValueError(
            "a representation is the same for every example (zero variance): CKA is "
            "undefined; compare a layer whose activations vary over the examples"
        )
    return (k * l_).sum() / norms
