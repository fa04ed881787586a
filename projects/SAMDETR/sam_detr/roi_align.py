"""RoIAlign of the Semantics Aligner: torchvision's ``roi_align`` (``aligned=True``, adaptive
sampling: ``ceil(box side / output size)`` samples per bin and axis), with a faster path for
small feature maps on the CPU.

torchvision's CPU backward scatters every sample into the map on one thread; it took 42% of a
demo training step. RoIAlign is separable: every sample is a bilinear interpolation whose
weights, clamping and validity test factor into a row part and a column part, and the sample
grid of a bin is a product of row and column samples. So one box's output is
``A_rows @ features @ A_cols.T`` with two small interpolation matrices (output size x map side),
and autograd differentiates it with matrix products too. Both paths give the same numbers
(``tests/test_roi_align.py``); the separable one runs where its intermediate tensor is small.
"""

from typing import List

import torch
from torchvision.ops import roi_align as torchvision_roi_align

__all__ = ["SEPARABLE_MAX_ELEMENTS", "interpolation_matrix", "roi_align", "torchvision_path"]

# Largest (B, N, C, output size, W) intermediate of the separable path (float32: 128 MiB); a
# bigger problem (COCO-sized maps with 300 queries) goes to torchvision's kernel.
SEPARABLE_MAX_ELEMENTS = 1 << 25
# aligned=True: a box coordinate x covers the map from pixel centre x - 0.5.
PIXEL_OFFSET = 0.5
# A sample further than one pixel outside the map contributes zero (torchvision's rule).
OUTSIDE_MARGIN = 1.0


def interpolation_matrix(
    start: torch.Tensor, end: torch.Tensor, size: int, bins: int
) -> torch.Tensor:
    """Weights of RoIAlign along one axis.

    Args:
        start, end: ``(B, N)`` box extent along the axis, in feature-map pixels.
        size: map length along the axis.
        bins: output size along the axis.
    Returns:
        ``(B, N, bins, size)``: output bin ``p`` is the ``[p, :]``-weighted sum of map lines.
    """
    start = start - PIXEL_OFFSET
    bin_size = (end - PIXEL_OFFSET - start) / bins
    samples = torch.ceil(bin_size)  # adaptive sampling ratio, per box
    max_samples = max(int(samples.max().item()), 1) if samples.numel() else 1
    dtype, device = start.dtype, start.device
    bin_index = torch.arange(bins, dtype=dtype, device=device)[:, None]
    sample_index = torch.arange(max_samples, dtype=dtype, device=device)
    divisor = samples.clamp(min=1)  # a zero-size box has no sample: its weights stay 0
    step = bin_size / divisor
    pos = (
        start[..., None, None]
        + bin_index * bin_size[..., None, None]
        + (sample_index + 0.5) * step[..., None, None]
    )  # (B, N, bins, max_samples)
    used = (sample_index < samples[..., None, None]) & (pos >= -OUTSIDE_MARGIN)
    used &= pos <= size
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    frac = torch.where(low >= size - 1, torch.zeros_like(pos), pos - low)
    high = (low + 1).clamp(max=size - 1)
    scale = used.to(dtype) / divisor[..., None, None]
    weights = torch.zeros(*pos.shape[:-1], size, dtype=dtype, device=device)
    weights.scatter_add_(-1, low.long(), (1 - frac) * scale)
    weights.scatter_add_(-1, high.long(), frac * scale)
    return weights


def torchvision_path(features: torch.Tensor, boxes: torch.Tensor, output_size: int) -> torch.Tensor:
    """torchvision's kernel with the arguments and shapes of :func:`roi_align`."""
    rois: List[torch.Tensor] = list(boxes.unbind(0))
    return torchvision_roi_align(
        features, rois, output_size=output_size, spatial_scale=1.0, aligned=True
    )


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int) -> torch.Tensor:
    """RoIAlign with torchvision's semantics (``spatial_scale=1``, ``aligned=True``, adaptive
    sampling); no gradient flows to the boxes.

    Args:
        features: ``(B, C, H, W)``.
        boxes: ``(B, N, 4)`` x1, y1, x2, y2 in feature-map pixels.
        output_size: side R of the output grid.
    Returns:
        ``(B * N, C, R, R)``, boxes of image 0 first.
    """
    B, C, H, W = features.shape
    N = boxes.shape[1]
    # A diverged forward pass gives non-finite boxes: they sample nothing (zero-size boxes)
    # instead of sending torchvision's sampling loop to infinity; the loss is non-finite
    # anyway and the training step skips the update.
    boxes = boxes.detach().masked_fill(~torch.isfinite(boxes).all(-1, keepdim=True), 0.0)
    separable = (
        features.device.type == "cpu" and B * N * C * output_size * W <= SEPARABLE_MAX_ELEMENTS
    )
    if not separable:
        return torchvision_path(features, boxes, output_size)
    rows = interpolation_matrix(boxes[..., 1], boxes[..., 3], H, output_size).to(features.dtype)
    cols = interpolation_matrix(boxes[..., 0], boxes[..., 2], W, output_size).to(features.dtype)
    R = output_size
    # Rows first, one matrix product per image: (B, N*R, H) @ (B, H, C*W).
    by_rows = features.permute(0, 2, 1, 3).reshape(B, H, C * W)
    sampled_rows = torch.matmul(rows.reshape(B, N * R, H), by_rows).view(B * N, R * C, W)
    # Then columns, one product per box: (B*N, R*C, W) @ (B*N, W, R).
    region = torch.matmul(sampled_rows, cols.reshape(B * N, R, W).transpose(1, 2))
    return region.view(B * N, R, C, R).transpose(1, 2).contiguous()
