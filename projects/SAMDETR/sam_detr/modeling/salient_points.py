"""Salient points (paper Sec. 3.2): a ConvNet + MLP searches M points in each reference box's
RoI features, and the new query of head m is the feature sampled bilinearly at point m.
Variants of the ablations: one point shared by all heads (SP x1, ``NUM_SALIENT_POINTS 1``),
and points searched anywhere in the image (Table 3, ``SEARCH_RANGE image``)."""

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .layer_spec import SAMLayerSpec
from .mlp import MLP
from .semantics_aligner import POINT_DIMS, SemanticsAligner

__all__ = ["ImageRangeSalientPointAligner", "SalientPointAligner", "sample_region"]


def sample_region(region: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of RoI features, as ``F.grid_sample(region, offsets[:, None],
    align_corners=False, padding_mode="zeros")`` computes them, with the same gradients.

    Bilinear weights are separable, so each point's weights over the ``R x R`` grid are an
    outer product of two ``R``-vectors, and the samples of all points one matrix product per
    box (on the CPU, forward and backward of R50's 600 boxes x 8 points x 256 channels: 16-18
    ms, against 28-31 ms with ``grid_sample``).

    Args:
        region: ``(K, d, R, R)`` RoI features (channels-last in memory on the CPU).
        offsets: ``(K, P, 2)`` points (x, y) in [-1, 1] across the grid's outer edges.
    Returns:
        ``(K, P, d)``.
    """
    K, d, R, _ = region.shape
    # Positions in float32 at least (bfloat16 cannot place a point within a cell).
    dtype = torch.promote_types(offsets.dtype, torch.float32)
    cells = torch.arange(R, device=region.device, dtype=dtype)
    # Grid units (cell centres at 0 .. R - 1) and the lower neighbour; no gradient through it.
    pixel = ((offsets.to(dtype) + 1) * R - 1) / 2
    lower = pixel.floor().detach()
    frac = (pixel - lower)[..., None]  # (K, P, 2, 1)
    lower = lower[..., None]
    # Weight of cell j: 1 - frac at the lower neighbour, frac at the upper one; neighbours
    # outside the grid are not cells (zero padding).
    axis_weights = (1 - frac) * (cells == lower) + frac * (cells == lower + 1)  # (K, P, 2, R)
    weights = axis_weights[:, :, 1, :, None] * axis_weights[:, :, 0, None, :]  # (K, P, R, R)
    by_cell = region.permute(0, 2, 3, 1).reshape(K, R * R, d)
    return weights.view(K, -1, R * R).to(by_cell.dtype) @ by_cell


class SalientPointAligner(SemanticsAligner):
    """Searches salient points inside the reference boxes (the paper's model) and samples the
    RoI features there: one point per head (SP x8) or one shared by all heads (SP x1)."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        """P = ``spec.num_salient_points`` points per query (0: one per head, M); with SMCA
        (``spec.smca``) also 2 scales per point."""
        super().__init__(spec)
        self.num_points = spec.num_salient_points or spec.num_heads
        self.predict_scales = spec.smca
        self.outputs_per_point = POINT_DIMS * (2 if spec.smca else 1)
        # A 1x1 convolution (its state_dict keys as in the official model); forward applies
        # its weights as one F.linear on the channels-last region instead of calling it.
        self.point_conv = nn.Conv2d(self.dim, spec.point_conv_dim, kernel_size=1)
        self.point_mlp = MLP(
            spec.point_conv_dim * self.roi_size * self.roi_size,
            spec.point_mlp_dims,
            self.num_points * self.outputs_per_point,
        )
        # Zero bias of the last layer (official init). The official layer zeroes its weight
        # too, but the transformer's Xavier pass then overwrites it; so does ours (parity).
        nn.init.zeros_(self.point_mlp.layers[-1].bias)
        self.add_reweighting(spec.reweighting)

    def search(self, region: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``region (B*N, d, R, R)`` -> offsets ``(B*N, P, 2)`` in [-1, 1] and raw SMCA
        scales ``(B*N, P, 2)`` (None without SMCA)."""
        # The 1x1 convolution is a linear map over channels: on the channels-last RoI features
        # (the CPU RoIAlign's layout) one matrix product, much faster than a convolution's
        # backward on 7x7 maps. The MLP reads the result in (channel, y, x) order.
        compressed = F.linear(
            region.permute(0, 2, 3, 1), self.point_conv.weight.flatten(1), self.point_conv.bias
        )
        raw = self.point_mlp(F.relu(compressed).permute(0, 3, 1, 2).flatten(1))
        raw = raw.view(len(region), self.outputs_per_point // POINT_DIMS, -1, POINT_DIMS)
        return raw[:, 0].tanh(), (raw[:, 1] if self.predict_scales else None)

    def sample(
        self,
        offsets: torch.Tensor,
        region: torch.Tensor,
        memory: torch.Tensor,
        reference_boxes: torch.Tensor,
        valid_ratio: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Offsets ``(B, N, P, 2)`` in units of half the box -> features ``(B, N, P, d)``
        bilinearly sampled from the RoI grid, and the points ``(B, N, P, 2)`` in the image."""
        B, N, P, _ = offsets.shape
        content = sample_region(region, offsets.view(B * N, P, POINT_DIMS)).view(B, N, P, -1)
        centers, sizes = reference_boxes[..., None, :2], reference_boxes[..., None, 2:]
        return content, centers + 0.5 * sizes * offsets

    def resample(self, region, memory, reference_boxes, valid_ratio):
        B, N, _ = reference_boxes.shape
        offsets, scales = self.search(region)
        offsets = offsets.view(B, N, self.num_points, POINT_DIMS)
        content, points = self.sample(offsets, region, memory, reference_boxes, valid_ratio)
        if scales is not None:
            scales = scales.reshape(B, N, self.num_points, POINT_DIMS)
        return content, points, scales


class ImageRangeSalientPointAligner(SalientPointAligner):
    """Table 3's "search range within image": a salient point is the box centre plus an offset
    in units of the image (so from any centre it can reach any point of the image, inside its
    box or not), and its features are sampled bilinearly from the encoded map itself."""

    def sample(self, offsets, region, memory, reference_boxes, valid_ratio):
        points = reference_boxes[..., None, :2] + offsets  # (B, N, P, 2)
        # grid_sample's [-1, 1] spans the padded map; the image covers valid_ratio of it.
        grid = 2 * points * valid_ratio[:, None, None, :] - 1
        sampled = F.grid_sample(memory, grid, padding_mode="zeros", align_corners=False)
        return sampled.permute(0, 2, 3, 1), points  # (B, d, N, P) -> (B, N, P, d)
