"""Multi-scale deformable attention (Zhu et al., ICLR 2021, "Deformable DETR"), the
attention of multi-scale SAM-DETR's encoder, in plain PyTorch: every query looks at P
learned points around its reference point on each of L feature levels, per head, and
averages their bilinearly interpolated values with learned weights. No compiled operator:
the sampling is ``F.grid_sample``, which runs on any device."""

import math
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MultiScaleDeformableAttention", "deformable_sampling"]

# Coordinates (x, y) of a sampling location.
_XY = 2


def deformable_sampling(
    value: torch.Tensor,
    sizes: List[Tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinearly sampled values.

    Args:
        value: ``(B, S, M, D)`` values of M heads over the L levels' cells, level after
            level (S = sum of H_l * W_l), each level flattened row by row.
        sizes: ``[(H_l, W_l)]``, the L levels' sizes.
        locations: ``(B, Q, M, L, P, 2)`` sampling points (x, y), 0..1 across each (padded)
            level; outside it a value is zero (``grid_sample``'s zero padding, cell centres at
            ``(i + 0.5) / W``).
        weights: ``(B, Q, M, L, P)`` attention weights.
    Returns:
        ``(B, Q, M * D)``, heads concatenated.
    """
    B, _, M, D = value.shape
    Q, P = locations.shape[1], locations.shape[4]
    grids = 2 * locations - 1  # grid_sample's [-1, 1]
    per_level = value.split([h * w for h, w in sizes], dim=1)
    out = None
    for level, (level_value, (height, width)) in enumerate(zip(per_level, sizes)):
        # (B, HW, M, D) -> (B*M, D, H, W): one image per (image, head).
        level_value = level_value.permute(0, 2, 3, 1).reshape(B * M, D, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(B * M, Q, P, _XY)
        sampled = F.grid_sample(
            level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*M, D, Q, P)
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(B * M, 1, Q, P)
        term = (sampled * level_weights).sum(-1)  # (B*M, D, Q)
        out = term if out is None else out + term
    return out.view(B, M * D, Q).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L levels: M heads, P points per head and level. Parameter
    names as Deformable DETR's ``MSDeformAttn`` (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``)."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * _XY)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: head m's points start on the ray of angle
        2 pi m / M, point p at p + 1 cells (the ray scaled to reach the square's border),
        on every level; uniform attention weights; Xavier projections with zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        rays = torch.stack([angles.cos(), angles.sin()], dim=-1)
        rays = rays / rays.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        offsets = rays[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
        offsets = offsets.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        sizes: List[Tuple[int, int]],
        extents: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: ``(B, Q, d)``.
            reference_points: ``(B, Q, L, 2)`` (x, y), 0..1 across each padded level.
            value: ``(B, S, d)`` the L levels flattened and concatenated.
            sizes: ``[(H_l, W_l)]``.
            extents: ``(L, 2)`` float32 ``(W_l, H_l)``, the same sizes on the device (made
                once per forward by the caller: a host-to-device copy waits for the device).
            padding_mask: ``(B, S)`` True on padding (those values are zeroed).
        Returns:
            ``(B, Q, d)``.
        """
        B, Q, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, value.shape[1], M, -1)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, _XY)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1)
        # Offsets are in cells of each level: divide by its (W, H), in float32 (locations are
        # fractions of up to ~200 cells, too fine for bfloat16).
        locations = reference_points[:, :, None, :, None, :] + offsets / extents[:, None, :]
        out = deformable_sampling(value, sizes, locations, weights.view(B, Q, M, L, P))
        return self.output_proj(out)
