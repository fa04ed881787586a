"""Sine position embeddings: of every cell of the encoded feature map (from its padding
mask) and of arbitrary points (reference-box centres and salient points). Both follow
the official SAM-DETR numerics; the embedding width per coordinate is ``d / 2``."""

import math

import torch
from torch import nn

# Coordinates are normalised to [0, 1] and multiplied by this before the sine/cosine.
POSITION_SCALE = 2 * math.pi
# Added to the per-row/column extents before normalising the map's cumulative positions.
_NORMALIZE_EPS = 1e-6


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """``(num_feats,)`` divisors ``temperature ** (2 * (i // 2) / num_feats)``."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """``(..., F) -> (..., F)``: sin of even channels and cos of odd ones, interleaved."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


class MapPositionEmbedding(nn.Module):
    """Sine embedding of the valid (unpadded) part of a feature map.

    ``mask (B, H, W)`` bool, True on padding  ->  ``(B, d, H, W)`` float32, y channels first.
    """

    def __init__(self, dim: int, temperature: float) -> None:
        super().__init__()
        self.num_feats = dim // 2
        self.temperature = temperature

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = ~mask
        # Cell centres: the "- 0.5" offset reproduces the official encoding (parity).
        y_embed = not_mask.cumsum(1, dtype=torch.float32) - 0.5
        x_embed = not_mask.cumsum(2, dtype=torch.float32) - 0.5
        y_embed = y_embed / (y_embed[:, -1:, :] + _NORMALIZE_EPS + 0.5) * POSITION_SCALE
        x_embed = x_embed / (x_embed[:, :, -1:] + _NORMALIZE_EPS + 0.5) * POSITION_SCALE
        dim_t = _frequencies(self.num_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


@torch.no_grad()  # no gradient through the points' embedding, as the official code (parity)
def embed_points(points: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """Sine embedding of points ``(..., 2)`` (x, y in [0, 1]) -> ``(..., dim)``, y first."""
    dim_t = _frequencies(dim // 2, temperature, points.device)
    pos_x = _interleave_sin_cos(points[..., 0, None] * POSITION_SCALE / dim_t)
    pos_y = _interleave_sin_cos(points[..., 1, None] * POSITION_SCALE / dim_t)
    return torch.cat((pos_y, pos_x), dim=-1)
