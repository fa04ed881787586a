"""The Semantics Aligner (paper Sec. 3.2): re-samples each object query from the encoded
image features, so that queries and keys live in the same embedding space. Per query:
RoIAlign inside its reference box, a ConvNet + MLP searching M salient points in the box,
bilinear sampling of the features at those points (one per attention head), their sine
position embeddings, and the reweighting of both by the previous query.

The paper's ablations (Tables 2 and 3) are variants of this module, each its own class chosen
once by :func:`build_semantics_aligner`: average / max pooling of the RoI instead of salient
points, one salient point shared by all heads, no reweighting, and salient points searched
anywhere in the image instead of inside the box."""

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert

from .mlp import MLP
from .position_encoding import embed_points
from .roi_align import ROI_ALIGN_IMPLEMENTATIONS

__all__ = [
    "AlignedQueries",
    "QUERY_RESAMPLING",
    "SEARCH_RANGES",
    "SemanticsAligner",
    "build_semantics_aligner",
]

# Coordinates per salient point (x, y); SMCA adds one predicted scale per coordinate.
POINT_DIMS = 2
# MODEL.SAM_DETR.SEARCH_RANGE: where salient points may lie.
SEARCH_RANGES = ("box", "image")


class AlignedQueries(NamedTuple):
    """Output of the Semantics Aligner; B images, N queries, M heads, d channels."""

    content: torch.Tensor  # (B, N, M, d) features at the salient points, reweighted
    position: torch.Tensor  # (B, N, M, d) sine embeddings of the salient points, reweighted
    points: torch.Tensor  # (B, N, M, 2) salient points (x, y) in [0, 1] of the image
    scales: Optional[torch.Tensor]  # (B, N, M, 2) SMCA scales; None when SMCA is off


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


class QueryReweighting(nn.Linear):
    """Reweighting by previous query embeddings (paper Eq. 7-8): ``x * sigmoid(W q)``, one
    d-dim coefficient vector per head. A ``Linear(d, M * d)`` (the official state_dict keys)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, dim * num_heads)

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``x (B, N, M, d)``, previous ``queries (B, N, d)`` -> ``(B, N, M, d)``."""
        return x * super().forward(queries).view(x.shape).sigmoid()


class NoReweighting(nn.Module):
    """Ablation "without RW": the re-sampled queries are used as they are (no parameters)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return x


class SemanticsAligner(nn.Module):
    """RoIAlign of each reference box, query re-sampling (``resample``, one subclass per
    strategy), sine embedding of the sampled points, reweighting by the previous queries."""

    def __init__(
        self, *, dim: int, num_heads: int, roi_size: int, temperature: float, roi_align: str
    ) -> None:
        """
        Args:
            dim: channels d of queries and of the encoded map.
            num_heads: M attention heads; each gets one re-sampled query.
            roi_size: side of the RoIAlign grid.
            temperature: of the points' sine embedding.
            roi_align: implementation of RoIAlign (``ROI_ALIGN_IMPLEMENTATIONS``).
        """
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.roi_size = roi_size
        self.temperature = temperature
        self.roi_align = ROI_ALIGN_IMPLEMENTATIONS[roi_align]

    def add_reweighting(self, reweighting: bool) -> None:
        """Create the reweighting layers, last (the official order of initialisation)."""
        layer = QueryReweighting if reweighting else NoReweighting
        self.content_reweight = layer(self.dim, self.num_heads)
        self.position_reweight = layer(self.dim, self.num_heads)

    def resample(
        self,
        region: torch.Tensor,
        memory: torch.Tensor,
        reference_boxes: torch.Tensor,
        valid_ratio: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """New queries from the RoI features ``region (B*N, d, R, R)``: content
        ``(B, N, P, d)``, points ``(B, N, P, 2)`` (x, y in [0, 1] of the image) and SMCA scales
        ``(B, N, P, 2)`` or None, with P = 1 (shared by all heads) or M."""
        raise NotImplementedError

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        reference_boxes: torch.Tensor,
        valid_ratio: torch.Tensor,
    ) -> AlignedQueries:
        """
        Args:
            queries: ``(B, N, d)`` decoder queries after self-attention.
            memory: ``(B, d, H, W)`` encoded feature map (padded).
            reference_boxes: ``(B, N, 4)`` cx, cy, w, h in [0, 1] of each unpadded image.
            valid_ratio: ``(B, 2)`` unpadded fraction (w, h) of the feature map.
        """
        B, N, _ = queries.shape
        height, width = memory.shape[-2:]
        # Unpadded extent (w, h) in map pixels, without turning the sizes into constants (export).
        extent = torch.stack((valid_ratio[:, 0] * width, valid_ratio[:, 1] * height), dim=-1)
        boxes = box_convert(reference_boxes, "cxcywh", "xyxy") * extent.repeat(1, 2)[:, None, :]
        region = self.roi_align(memory, boxes, self.roi_size)  # (B*N, d, R, R)
        content, points, scales = self.resample(region, memory, reference_boxes, valid_ratio)

        per_head = (B, N, self.num_heads, self.dim)
        position = embed_points(points, self.dim, self.temperature).expand(per_head)
        content = self.content_reweight(content.expand(per_head), queries)
        position = self.position_reweight(position, queries)
        points = points.expand(B, N, self.num_heads, POINT_DIMS)
        if scales is not None:
            scales = scales.expand(B, N, self.num_heads, POINT_DIMS)
        return AlignedQueries(content, position, points, scales)


class SalientPointAligner(SemanticsAligner):
    """Searches salient points inside the reference boxes (the paper's model) and samples the
    RoI features there: one point per head (SP x8) or one shared by all heads (SP x1)."""

    def __init__(
        self,
        *,
        num_points: int,
        point_conv_dim: int,
        point_mlp_dims: Sequence[int],
        predict_scales: bool,
        reweighting: bool,
        **common,
    ) -> None:
        """
        Args:
            num_points: P salient points per query, 1 or M.
            point_conv_dim: channels of the 1x1 conv compressing RoI features.
            point_mlp_dims: hidden widths of the point-predicting MLP.
            predict_scales: also predict SMCA scales (2 per point).
            reweighting: reweight by the previous queries (RW).
            common: :class:`SemanticsAligner`'s arguments.
        """
        super().__init__(**common)
        self.num_points = num_points
        self.predict_scales = predict_scales
        self.outputs_per_point = POINT_DIMS * (2 if predict_scales else 1)
        # A 1x1 convolution (its state_dict keys as in the official model); forward applies
        # its weights as one F.linear on the channels-last region instead of calling it.
        self.point_conv = nn.Conv2d(self.dim, point_conv_dim, kernel_size=1)
        self.point_mlp = MLP(
            point_conv_dim * self.roi_size * self.roi_size,
            point_mlp_dims,
            num_points * self.outputs_per_point,
        )
        # Zero bias of the last layer (official init). The official layer zeroes its weight
        # too, but the transformer's Xavier pass then overwrites it; so does ours (parity).
        nn.init.zeros_(self.point_mlp.layers[-1].bias)
        self.add_reweighting(reweighting)

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


def _average(region: torch.Tensor) -> torch.Tensor:
    return region.mean(dim=(-2, -1))


def _maximum(region: torch.Tensor) -> torch.Tensor:
    return region.amax(dim=(-2, -1))


# MODEL.SAM_DETR.QUERY_RESAMPLING -> pooling of the RoI region (None: salient points).
QUERY_RESAMPLING = {"salient_points": None, "avg_pool": _average, "max_pool": _maximum}


class PooledAligner(SemanticsAligner):
    """Table 2's naive re-sampling: the new query of every head is the RoI region pooled to
    one d-dim vector (average or maximum); its position is the reference box centre."""

    def __init__(
        self, *, pool: Callable[[torch.Tensor], torch.Tensor], reweighting: bool, **common
    ) -> None:
        super().__init__(**common)
        self.pool = pool
        self.add_reweighting(reweighting)

    def resample(self, region, memory, reference_boxes, valid_ratio):
        B, N, _ = reference_boxes.shape
        content = self.pool(region).view(B, N, 1, self.dim)
        return content, reference_boxes[..., None, :2], None


def build_semantics_aligner(
    *,
    query_resampling: str,
    num_salient_points: int,
    search_range: str,
    reweighting: bool,
    point_conv_dim: int,
    point_mlp_dims: Sequence[int],
    predict_scales: bool,
    **common,
) -> SemanticsAligner:
    """The Semantics Aligner variant the ``MODEL.SAM_DETR`` keys name (validated by
    ``validate_sam_detr_config``); ``num_salient_points`` 0 means one per head."""
    pool = QUERY_RESAMPLING[query_resampling]
    if pool is not None:
        return PooledAligner(pool=pool, reweighting=reweighting, **common)
    aligner = {"box": SalientPointAligner, "image": ImageRangeSalientPointAligner}[search_range]
    return aligner(
        num_points=num_salient_points or common["num_heads"],
        point_conv_dim=point_conv_dim,
        point_mlp_dims=point_mlp_dims,
        predict_scales=predict_scales,
        reweighting=reweighting,
        **common,
    )
