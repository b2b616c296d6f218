"""The book's loss convention, in one place (chapter "A first network"; every measure and the training loop use it).

* ``"mse"``: ℓ_i = ½ Σ_k (f_k(x_i) − y_ik)²  (SUM over outputs, factor ½), with ``y_i`` a target of the output's
  width (one-hot for classification). Dropping the ½ doubles every Hessian trace and eigenvalue.
* ``"cross_entropy"``: ℓ_i = −log softmax(f(x_i))_{c_i}, with ``c_i`` the integer label (or ``argmax`` of a one-hot
  float target).

The loss of a data set is the MEAN over its samples, L = (1/n) Σ_i ℓ_i.

Symbols: Appendix "Notation and conventions", entries "The loss" and "Cross-entropy variant".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "cross_entropy")


def check_loss(loss: str) -> None:
    """Raise ``ValueError`` unless ``loss`` is one of :data:`LOSSES`."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def class_labels(y: torch.Tensor) -> torch.Tensor:
    """Integer labels from one-hot float targets ``(n, N)`` (their argmax); labels ``(n,)`` pass unchanged."""
    return y.argmax(dim=1) if y.dim() == 2 else y


def per_sample_loss(out: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """ℓ_i for every sample, shape ``(n,)``: ½‖f(x_i) − y_i‖² (``"mse"``) or −log softmax(f(x_i))_{c_i}."""
    check_loss(loss)
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum(-1)
    return F.cross_entropy(out, class_labels(y), reduction="none")


def mean_loss(out: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """L = (1/n) Σ_i ℓ_i (the training loss; same value as ``per_sample_loss(out, y, loss).mean()``)."""
    check_loss(loss)
    if loss == "mse":
        return 0.5 * (out - y).pow(2).sum(dim=1).mean()
    return F.cross_entropy(out, class_labels(y))
