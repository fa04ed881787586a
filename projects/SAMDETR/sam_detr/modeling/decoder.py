"""The SAM decoder layer (paper Fig. 2): self-attention among the queries, the Semantics
Aligner re-sampling each query at its salient points, the salient-point cross-attention
(plus SMCA's spatial prior when on), FFN. :class:`DecoderLayer` holds what it shares with the
baseline's DETR decoder layer."""

import torch
from torch import nn

from .attention import QuerySelfAttention, SalientPointCrossAttention
from .feature_levels import FeatureLevel
from .feed_forward import feed_forward
from .layer_spec import SAMLayerSpec
from .pooled_aligner import AvgPoolAligner, MaxPoolAligner
from .position_encoding import embed_points
from .salient_points import ImageRangeSalientPointAligner, SalientPointAligner
from .semantics_aligner import SemanticsAligner
from .smca import SPATIAL_PRIORS

__all__ = ["DecoderLayer", "SAMDecoderLayer", "SEMANTICS_ALIGNERS", "build_semantics_aligner"]

# (MODEL.SAM_DETR.QUERY_RESAMPLING, SEARCH_RANGE) -> the Semantics Aligner.
SEMANTICS_ALIGNERS = {
    ("salient_points", "box"): SalientPointAligner,
    ("salient_points", "image"): ImageRangeSalientPointAligner,
    ("avg_pool", "box"): AvgPoolAligner,
    ("max_pool", "box"): MaxPoolAligner,
}


def build_semantics_aligner(spec: SAMLayerSpec) -> SemanticsAligner:
    """The Semantics Aligner variant the spec's ablation switches name."""
    return SEMANTICS_ALIGNERS[spec.query_resampling, spec.search_range](spec)


class DecoderLayer(nn.Module):
    """A post-norm decoder layer: the attention blocks of the subclass (:meth:`add_attention`),
    then the residual and ``norm2`` after the cross-attention, the FFN with its residual and
    ``norm3``; ``dropout`` serves the whole layer. The attention blocks are created first (the
    official order of initialisation)."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__()
        self.add_attention(spec)
        self.norm2 = nn.LayerNorm(spec.dim)
        self.linear1 = nn.Linear(spec.dim, spec.dim_feedforward)
        self.linear2 = nn.Linear(spec.dim_feedforward, spec.dim)
        self.norm3 = nn.LayerNorm(spec.dim)
        self.dropout = nn.Dropout(spec.dropout)

    def add_attention(self, spec: SAMLayerSpec) -> None:
        """Create the layer's self-attention, ``norm1`` and cross-attention."""
        raise NotImplementedError

    def output_block(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """``queries (B, N, d)`` and their cross-attention output -> ``(B, N, d)``."""
        queries = self.norm2(queries + self.dropout(attended))
        return self.norm3(queries + self.dropout(feed_forward(self, queries)))


class SAMDecoderLayer(DecoderLayer):
    """Self-attention, Semantics Aligner, salient-point cross-attention, FFN (post-norm)."""

    def add_attention(self, spec: SAMLayerSpec) -> None:
        dim, num_heads, dropout = spec.dim, spec.num_heads, spec.dropout
        self.dim = dim
        self.temperature = spec.temperature
        self.spatial_prior = SPATIAL_PRIORS[spec.smca](spec.smca_divisor)
        self.self_attn = QuerySelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.semantics_aligner = build_semantics_aligner(spec)
        self.cross_attn = SalientPointCrossAttention(dim, num_heads, dropout)

    def forward(
        self, queries: torch.Tensor, level: FeatureLevel, reference_boxes: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            queries: ``(B, N, d)``.
            level: the encoded feature level this layer reads.
            reference_boxes: ``(B, N, 4)`` cx, cy, w, h in [0, 1].
        Returns:
            ``(B, N, d)`` updated queries.
        """
        center_pos = embed_points(reference_boxes[..., :2], self.dim, self.temperature)
        queries = self.norm1(queries + self.dropout(self.self_attn(queries, center_pos)))
        aligned = self.semantics_aligner(
            queries, level.memory_map(), reference_boxes, level.valid_ratio
        )
        attn_bias = self.spatial_prior(level.bias, aligned, level.valid_ratio, level.size)
        attended = self.cross_attn(
            aligned.content, aligned.position, level.memory, level.pos, attn_bias
        )
        return self.output_block(queries, attended)
