"""SMCA's Gaussian-like spatial prior (Gao et al., ICCV 2021) as SAM-DETR uses it: for
every head, additive cross-attention log-weights that decay with the distance between the
head's salient point and each feature-map cell, scaled per point by predicted factors."""

from typing import Optional, Tuple

import torch
from torch import nn

from .semantics_aligner import AlignedQueries

__all__ = ["NoSpatialPrior", "SMCAPrior", "SPATIAL_PRIORS", "smca_log_weights"]


def smca_log_weights(
    points: torch.Tensor,
    scales: torch.Tensor,
    valid_ratio: torch.Tensor,
    height: int,
    width: int,
    divisor: float,
) -> torch.Tensor:
    """Log-weights to add to the cross-attention logits.

    Args:
        points: ``(B, N, M, 2)`` salient points (x, y) in [0, 1] of each unpadded image.
        scales: ``(B, N, M, 2)`` raw predicted scales (squared here, so sign-free).
        valid_ratio: ``(B, 2)`` unpadded fraction (w, h) of the feature map.
        height, width: feature-map size; cells are at ``(i + 0.5, j + 0.5)``.
        divisor: the log-weights are ``-sum_c s_c^2 (p_c - g_c)^2 / divisor``.

    Returns:
        ``(B, M, N, H * W)`` log-weights, in the order the flattened map is attended, in
        float32 (float64 for float64 inputs) whatever the inputs' precision: ``s^2`` is
        infinite in float16 from ``|s| = 256`` and the squared distances times ``s^2`` far
        sooner, which made whole attention rows NaN.
    """
    dtype = torch.promote_types(points.dtype, torch.float32)
    points, scales, valid_ratio = points.to(dtype), scales.to(dtype), valid_ratio.to(dtype)
    # In map pixels; sizes multiply as numbers, not as a constant tensor (export).
    points = torch.stack((points[..., 0] * width, points[..., 1] * height), dim=-1)
    points = (points * valid_ratio[:, None, None, :]).transpose(1, 2)  # (B, M, N, 2)
    weights = scales.pow(2).transpose(1, 2)
    # The distance is separable: s_x^2 (p_x - g_x)^2 over columns plus s_y^2 (p_y - g_y)^2
    # over rows, so only the final sum is (H, W)-sized.
    xs = torch.arange(width, device=points.device, dtype=points.dtype) + 0.5
    ys = torch.arange(height, device=points.device, dtype=points.dtype) + 0.5
    dist_x = (points[..., 0, None] - xs).pow(2) * weights[..., 0, None]  # (B, M, N, W)
    dist_y = (points[..., 1, None] - ys).pow(2) * weights[..., 1, None]  # (B, M, N, H)
    dist = dist_x[..., None, :] + dist_y[..., :, None]  # (B, M, N, H, W)
    return (-dist / divisor).flatten(-2)


class SMCAPrior(nn.Module):
    """Adds SMCA's log-weights around each head's salient point to the attention bias."""

    def __init__(self, divisor: float) -> None:
        super().__init__()
        self.divisor = divisor

    def forward(
        self,
        bias: Optional[torch.Tensor],
        aligned: AlignedQueries,
        valid_ratio: torch.Tensor,
        size: Tuple[int, int],
    ) -> torch.Tensor:
        """Padding ``bias (B, 1, 1, HW)`` or None, the aligner's points and scales,
        ``valid_ratio (B, 2)``, map size (H, W) -> ``(B, M, N, HW)``."""
        height, width = size
        log_weights = smca_log_weights(
            aligned.points, aligned.scales, valid_ratio, height, width, self.divisor
        )
        return log_weights if bias is None else bias + log_weights


class NoSpatialPrior(nn.Module):
    """Without SMCA: the attention bias as it is (padding only, or None)."""

    def __init__(self, divisor: float) -> None:
        super().__init__()

    def forward(self, bias: Optional[torch.Tensor], *_: object) -> Optional[torch.Tensor]:
        """:meth:`SMCAPrior.forward`'s arguments -> ``bias``."""
        return bias


# MODEL.SAM_DETR.SMCA -> the spatial prior of the cross-attention.
SPATIAL_PRIORS = {True: SMCAPrior, False: NoSpatialPrior}
