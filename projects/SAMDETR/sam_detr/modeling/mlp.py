"""The one multi-layer perceptron used across SAM-DETR: box heads, positional projections
and the salient-point predictor all are Linear layers with ReLU between them."""

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """Linear layers ``in_dim -> hidden_dims... -> out_dim`` with ReLU after all but the last.

    Operates on the last dimension: ``(..., in_dim) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden_dims, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)
