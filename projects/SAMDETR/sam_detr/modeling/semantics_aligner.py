"""The Semantics Aligner (paper Sec. 3.2): re-samples each object query from the encoded
image features, so that queries and keys live in the same embedding space. Per query:
RoIAlign inside its reference box, the re-sampling of new queries from that region (one
subclass per strategy: salient points in :mod:`.salient_points`, the ablations' pooling in
:mod:`.pooled_aligner`), their sine position embeddings, and the reweighting of both by the
previous query (paper Eq. 7-8)."""

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn
from torchvision.ops import box_convert

from .layer_spec import SAMLayerSpec
from .position_encoding import embed_points
from .roi_align import ROI_ALIGN_IMPLEMENTATIONS

__all__ = ["AlignedQueries", "POINT_DIMS", "SemanticsAligner"]

# Coordinates per salient point (x, y); SMCA adds one predicted scale per coordinate.
POINT_DIMS = 2


class AlignedQueries(NamedTuple):
    """Output of the Semantics Aligner; B images, N queries, M heads, d channels."""

    content: torch.Tensor  # (B, N, M, d) features at the salient points, reweighted
    position: torch.Tensor  # (B, N, M, d) sine embeddings of the salient points, reweighted
    points: torch.Tensor  # (B, N, M, 2) salient points (x, y) in [0, 1] of the image
    scales: Optional[torch.Tensor]  # (B, N, M, 2) SMCA scales; None when SMCA is off


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


# MODEL.SAM_DETR.REWEIGHTING -> the reweighting layer.
REWEIGHTING = {True: QueryReweighting, False: NoReweighting}


class SemanticsAligner(nn.Module):
    """RoIAlign of each reference box, query re-sampling (``resample``, one subclass per
    strategy), sine embedding of the sampled points, reweighting by the previous queries.
    Every strategy is built from the layer spec alone (one call signature)."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__()
        self.dim = spec.dim
        self.num_heads = spec.num_heads
        self.roi_size = spec.roi_size
        self.temperature = spec.temperature
        self.roi_align = ROI_ALIGN_IMPLEMENTATIONS[spec.roi_align]

    def add_reweighting(self, reweighting: bool) -> None:
        """Create the reweighting layers, last (the official order of initialisation)."""
        self.content_reweight = REWEIGHTING[reweighting](self.dim, self.num_heads)
        self.position_reweight = REWEIGHTING[reweighting](self.dim, self.num_heads)

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
