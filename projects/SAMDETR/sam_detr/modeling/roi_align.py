"""RoIAlign of the Semantics Aligner: torchvision's ``roi_align`` semantics (``aligned=True``,
adaptive sampling: ``ceil(box side / output size)`` samples per bin and axis), computed on the
CPU as matrix products, at every map size.

torchvision's CPU backward scatters every sample into the map on one thread: at COCO sizes
(R50, 300 queries, batch 2) it took a third of a training step. RoIAlign is separable: every
sample is a bilinear interpolation whose weights, clamping and validity test factor into a
row part and a column part, and the sample grid of a bin is a product of row and column
samples. So one box's output is ``A_rows @ features @ A_cols.T`` with two small interpolation
matrices (output size x map side). The forward and backward passes are a few large matrix
products (multi-threaded, and fast in bfloat16), run over chunks of boxes so that memory stays
bounded (``CHUNK_ELEMENTS``; several images per product when they fit) and nothing but the
interpolation matrices is kept for the backward pass. Both paths give the same numbers
(``tests/test_roi_align.py``); on GPUs torchvision's kernel (whose backward uses atomic adds)
is used.
"""

from typing import List, Optional, Tuple

import torch
from torchvision.ops import roi_align as torchvision_roi_align

__all__ = [
    "CHUNK_ELEMENTS",
    "ROI_ALIGN_IMPLEMENTATIONS",
    "interpolation_matrix",
    "roi_align",
    "torchvision_path",
    "traceable_roi_align",
]

# Largest intermediate (boxes x output size x channels x map side) of one chunk of boxes:
# 8M elements, 32 MiB in float32.
CHUNK_ELEMENTS = 1 << 23
# Samples per bin laid out by the traceable path, at least (see traceable_roi_align).
MIN_TRACED_SAMPLES = 2
# aligned=True: a box coordinate x covers the map from pixel centre x - 0.5.
PIXEL_OFFSET = 0.5
# A sample further than one pixel outside the map contributes zero (torchvision's rule).
OUTSIDE_MARGIN = 1.0


def interpolation_matrix(
    start: torch.Tensor,
    end: torch.Tensor,
    size: int,
    bins: int,
    max_samples: Optional[int] = None,
) -> torch.Tensor:
    """Weights of RoIAlign along one axis.

    Args:
        start, end: ``(B, N)`` box extent along the axis, in feature-map pixels.
        size: map length along the axis.
        bins: output size along the axis.
        max_samples: samples per bin to lay out, at least the largest box's (extra ones get
            zero weight); None: exactly the largest box's, read from the data.
    Returns:
        ``(B, N, bins, size)``: output bin ``p`` is the ``[p, :]``-weighted sum of map lines.
    """
    start = start - PIXEL_OFFSET
    bin_size = (end - PIXEL_OFFSET - start) / bins
    samples = torch.ceil(bin_size)  # adaptive sampling ratio, per box
    if max_samples is None:
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


def _finite(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes without gradient, the non-finite ones (a diverged forward pass) made zero-size:
    they sample nothing instead of sending torchvision's sampling loop to infinity; the loss
    is non-finite anyway and the training step skips the update."""
    return boxes.detach().masked_fill(~torch.isfinite(boxes).all(-1, keepdim=True), 0.0)


def torchvision_path(features: torch.Tensor, boxes: torch.Tensor, output_size: int) -> torch.Tensor:
    """torchvision's kernel with the arguments and shapes of :func:`roi_align`."""
    rois: List[torch.Tensor] = list(_finite(boxes).unbind(0))
    return torchvision_roi_align(
        features, rois, output_size=output_size, spatial_scale=1.0, aligned=True
    )


def _chunks(num_images: int, num_boxes: int, per_box: int) -> List[Tuple[int, int, int, int]]:
    """``(first image, last image + 1, first box, last box + 1)`` of every chunk: whole images
    while several fit within ``CHUNK_ELEMENTS``, else ranges of boxes of one image."""
    boxes_per_chunk = max(1, CHUNK_ELEMENTS // max(per_box, 1))
    if boxes_per_chunk >= num_boxes:
        step = boxes_per_chunk // num_boxes
        return [(b, min(b + step, num_images), 0, num_boxes) for b in range(0, num_images, step)]
    return [
        (b, b + 1, n, min(n + boxes_per_chunk, num_boxes))
        for b in range(num_images)
        for n in range(0, num_boxes, boxes_per_chunk)
    ]


def _first_second_layout(region: torch.Tensor, swapped: bool) -> torch.Tensor:
    """View of RoIAlign's ``(B, N, C, R_y, R_x)`` as ``(B, N, R_first, C, R_second)``."""
    return region.permute(0, 1, 4, 2, 3) if swapped else region.permute(0, 1, 3, 2, 4)


class SeparableRoIAlign(torch.autograd.Function):
    """RoIAlign as ``out[b, n, c] = rows[b, n] @ F[b, c] @ cols[b, n].T``, with the map's
    longer axis contracted first (the intermediate then keeps the shorter one). The output is
    in channels-last memory format, which the Semantics Aligner's 1x1 convolution reads as
    one matrix product."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """``features (B, C, H, W)``, ``rows (B, N, R, H)``, ``cols (B, N, R, W)`` ->
        ``(B * N, C, R, R)`` (channels-last)."""
        B, C, H, W = features.shape
        N, R = rows.shape[1:3]
        swapped = W > H
        first, second = (cols, rows) if swapped else (rows, cols)
        by_first = (features.transpose(2, 3) if swapped else features).transpose(1, 2)
        P, Q = first.shape[-1], second.shape[-1]
        by_first = by_first.reshape(B, P, C * Q)  # one matrix product per image and chunk
        out = features.new_empty(B, N, R, R, C)  # (y, x, channel): channels-last
        target = _first_second_layout(out.permute(0, 1, 4, 2, 3), swapped)
        for b0, b1, n0, n1 in _chunks(B, N, R * C * Q):
            g, k = b1 - b0, n1 - n0
            partial = first[b0:b1, n0:n1].reshape(g, k * R, P) @ by_first[b0:b1]
            target[b0:b1, n0:n1] = (
                partial.view(g * k, R * C, Q) @ second[b0:b1, n0:n1].reshape(g * k, R, Q).mT
            ).view(g, k, R, C, R)
        ctx.save_for_backward(first, second)
        ctx.swapped = swapped
        return out.view(B * N, R, R, C).permute(0, 3, 1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor):
        first, second = ctx.saved_tensors
        B, N, R, P = first.shape
        Q, C = second.shape[-1], grad.shape[1]
        grad = grad.to(first.dtype).reshape(B, N, C, R, R)
        grad = _first_second_layout(grad, ctx.swapped).contiguous()
        grad_by_first = grad.new_zeros(B, P, C * Q)
        for b0, b1, n0, n1 in _chunks(B, N, R * C * Q):
            g, k = b1 - b0, n1 - n0
            partial = grad[b0:b1, n0:n1].view(g * k, R * C, R) @ second[b0:b1, n0:n1].reshape(
                g * k, R, Q
            )
            grad_by_first[b0:b1].baddbmm_(
                first[b0:b1, n0:n1].reshape(g, k * R, P).mT, partial.view(g, k * R, C * Q)
            )
        grad_features = grad_by_first.view(B, P, C, Q).transpose(1, 2)
        return (grad_features.transpose(2, 3) if ctx.swapped else grad_features), None, None


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int) -> torch.Tensor:
    """RoIAlign with torchvision's semantics (``spatial_scale=1``, ``aligned=True``, adaptive
    sampling): the matrix-product form on the CPU, torchvision's kernel elsewhere; no gradient
    flows to the boxes.

    Args:
        features: ``(B, C, H, W)``.
        boxes: ``(B, N, 4)`` x1, y1, x2, y2 in feature-map pixels.
        output_size: side R of the output grid.
    Returns:
        ``(B * N, C, R, R)``, boxes of image 0 first.
    """
    if features.device.type != "cpu":
        return torchvision_path(features, boxes, output_size)
    boxes = _finite(boxes)
    rows = interpolation_matrix(boxes[..., 1], boxes[..., 3], features.shape[-2], output_size)
    cols = interpolation_matrix(boxes[..., 0], boxes[..., 2], features.shape[-1], output_size)
    return SeparableRoIAlign.apply(features, rows.to(features.dtype), cols.to(features.dtype))


def traceable_roi_align(
    features: torch.Tensor, boxes: torch.Tensor, output_size: int
) -> torch.Tensor:
    """:func:`roi_align`'s numbers without data-dependent shapes, for export (ONNX,
    ``torch.export``): the samples per bin are laid out up to the most any box inside the map
    can need (``ceil(map side / output size)``; a reference box never exceeds its image), and
    all boxes go through two matrix products at once. Inference only (no chunking).

    Shapes as :func:`roi_align`; the output is contiguous.
    """
    height, width = features.shape[-2:]
    bins = output_size
    boxes = _finite(boxes)
    # ceil(side / bins) on non-negative numbers only (ONNX's integer division truncates), at
    # least 2 so that tracing never takes the sample axis for a broadcast one.
    rows_samples = torch.sym_max(MIN_TRACED_SAMPLES, (height + bins - 1) // bins)
    cols_samples = torch.sym_max(MIN_TRACED_SAMPLES, (width + bins - 1) // bins)
    rows = interpolation_matrix(boxes[..., 1], boxes[..., 3], height, bins, rows_samples)
    cols = interpolation_matrix(boxes[..., 0], boxes[..., 2], width, bins, cols_samples)
    rows, cols = rows.to(features.dtype), cols.to(features.dtype)
    by_rows = torch.einsum("bnph,bchw->bncpw", rows, features)  # (B, N, C, R, W)
    return (by_rows @ cols[:, :, None].transpose(-1, -2)).flatten(0, 1)


# MODEL.SAM_DETR.ROI_ALIGN: "auto" is the matrix-product form on CPUs and torchvision's kernel
# on GPUs; "torchvision" is torchvision's kernel everywhere.
ROI_ALIGN_IMPLEMENTATIONS = {"auto": roi_align, "torchvision": torchvision_path}
