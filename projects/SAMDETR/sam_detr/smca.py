"""SMCA's Gaussian-like spatial prior (Gao et al., ICCV 2021) as SAM-DETR uses it: for
every head, additive cross-attention log-weights that decay with the distance between the
head's salient point and each feature-map cell, scaled per point by predicted factors."""

import torch


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
        ``(B, M, N, H * W)`` log-weights, in the order the flattened map is attended.
    """
    # In map pixels; sizes multiply as numbers, not as a constant tensor (export).
    points = torch.stack((points[..., 0] * width, points[..., 1] * height), dim=-1)
    points = points * valid_ratio[:, None, None, :]
    ys, xs = torch.meshgrid(
        torch.arange(height, device=points.device, dtype=points.dtype),
        torch.arange(width, device=points.device, dtype=points.dtype),
        indexing="ij",
    )
    cells = torch.stack((xs, ys), dim=-1).reshape(-1, 2) + 0.5  # (HW, 2)
    sq_dist = (points[..., None, :] - cells).pow(2)  # (B, N, M, HW, 2)
    dist = (sq_dist * scales.pow(2)[..., None, :]).sum(-1)  # (B, N, M, HW)
    return (-dist / divisor).permute(0, 2, 1, 3)
