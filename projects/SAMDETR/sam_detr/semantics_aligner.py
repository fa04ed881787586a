"""The Semantics Aligner (paper Sec. 3.2): re-samples each object query from the encoded
image features, so that queries and keys live in the same embedding space. Per query:
RoIAlign inside its reference box, a ConvNet + MLP searching M salient points in the box,
bilinear sampling of the features at those points (one per attention head), their sine
position embeddings, and the reweighting of both by the previous query."""

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert

from .mlp import MLP
from .position_encoding import embed_points
from .roi_align import ROI_ALIGN_IMPLEMENTATIONS

# Coordinates per salient point (x, y); SMCA adds one predicted scale per coordinate.
POINT_DIMS = 2


class AlignedQueries(NamedTuple):
    """Output of the Semantics Aligner; B images, N queries, M heads, d channels."""

    content: torch.Tensor  # (B, N, M, d) features at the salient points, reweighted
    position: torch.Tensor  # (B, N, M, d) sine embeddings of the salient points, reweighted
    points: torch.Tensor  # (B, N, M, 2) salient points (x, y) in [0, 1] of the image
    scales: Optional[torch.Tensor]  # (B, N, M, 2) SMCA scales; None when SMCA is off


class SemanticsAligner(nn.Module):
    """Searches salient points inside reference boxes and samples the encoded map there."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        roi_size: int,
        point_conv_dim: int,
        point_mlp_dims: Sequence[int],
        predict_scales: bool,
        temperature: float,
        roi_align: str = "auto",
    ) -> None:
        """
        Args:
            dim: channels d of queries and of the encoded map.
            num_heads: M, number of salient points (one per attention head).
            roi_size: side of the RoIAlign grid.
            point_conv_dim: channels of the 1x1 conv compressing RoI features.
            point_mlp_dims: hidden widths of the point-predicting MLP.
            predict_scales: also predict SMCA scales (2 per point).
            temperature: of the points' sine embedding.
            roi_align: implementation of RoIAlign (``ROI_ALIGN_IMPLEMENTATIONS``).
        """
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.roi_size = roi_size
        self.temperature = temperature
        self.roi_align = ROI_ALIGN_IMPLEMENTATIONS[roi_align]
        self.predict_scales = predict_scales
        self.outputs_per_point = POINT_DIMS * (2 if predict_scales else 1)
        # A 1x1 convolution (its state_dict keys as in the official model); forward applies
        # its weights as one F.linear on the channels-last region instead of calling it.
        self.point_conv = nn.Conv2d(dim, point_conv_dim, kernel_size=1)
        self.point_mlp = MLP(
            point_conv_dim * roi_size * roi_size,
            point_mlp_dims,
            num_heads * self.outputs_per_point,
        )
        # Zero bias of the last layer (official init). The official layer zeroes its weight
        # too, but the transformer's Xavier pass then overwrites it; so does ours (parity).
        nn.init.zeros_(self.point_mlp.layers[-1].bias)
        self.content_reweight = nn.Linear(dim, dim * num_heads)
        self.position_reweight = nn.Linear(dim, dim * num_heads)

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
        M, d = self.num_heads, self.dim
        height, width = memory.shape[-2:]
        scale = memory.new_tensor([width, height, width, height]) * valid_ratio.repeat(1, 2)
        boxes = box_convert(reference_boxes, "cxcywh", "xyxy") * scale[:, None, :]
        region = self.roi_align(memory, boxes, self.roi_size)  # (B*N, d, R, R)

        # The 1x1 convolution is a linear map over channels: on the channels-last RoI features
        # (the CPU RoIAlign's layout) one matrix product, much faster than a convolution's
        # backward on 7x7 maps. The MLP reads the result in (channel, y, x) order.
        compressed = F.linear(
            region.permute(0, 2, 3, 1), self.point_conv.weight.flatten(1), self.point_conv.bias
        )
        raw = self.point_mlp(F.relu(compressed).permute(0, 3, 1, 2).flatten(1))
        raw = raw.view(B * N, self.outputs_per_point // POINT_DIMS, M, POINT_DIMS)
        offsets = raw[:, 0].tanh()  # (B*N, M, 2) in [-1, 1] of the box
        scales = raw[:, 1].reshape(B, N, M, POINT_DIMS) if self.predict_scales else None

        sampled = F.grid_sample(region, offsets[:, None], padding_mode="zeros", align_corners=False)
        content = sampled.view(B, N, d, M).transpose(2, 3)  # (B, N, M, d)
        content = content * self.content_reweight(queries).view(B, N, M, d).sigmoid()

        centers, sizes = reference_boxes[..., None, :2], reference_boxes[..., None, 2:]
        points = centers + 0.5 * sizes * offsets.view(B, N, M, POINT_DIMS)
        position = embed_points(points, d, self.temperature)
        position = position * self.position_reweight(queries).view(B, N, M, d).sigmoid()
        return AlignedQueries(content, position, points, scales)
