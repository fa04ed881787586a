"""The position-wise feed-forward block that every encoder and decoder layer ends with."""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["feed_forward"]


def feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The post-norm FFN block of a layer with ``linear1``, ``linear2``, ``dropout`` and the
    given norm applied by the caller: ``linear2(dropout(relu(linear1(x))))``."""
    return layer.linear2(layer.dropout(F.relu(layer.linear1(x))))
