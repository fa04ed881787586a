"""The paper's baseline (Table 1, DETR with aligned setups): the same encoder, and a plain DETR
decoder without semantic-aligned matching: zero-initialised queries with learnable position
embeddings, positional cross-attention, boxes predicted directly by each layer's head."""

from typing import List, Tuple

import torch
from torch import nn

from .attention import MapSelfAttention, PositionalCrossAttention
from .decoder import DecoderLayer
from .feature_levels import FeatureLevel
from .layer_spec import SAMLayerSpec
from .transformer import DetectionTransformer

__all__ = ["BaselineDETRTransformer", "DETRDecoderLayer"]


class DETRDecoderLayer(DecoderLayer):
    """The baseline's decoder layer (DETR, post-norm): self-attention and cross-attention with
    the learnable query positions added to the queries, FFN; no Semantics Aligner."""

    def add_attention(self, spec: SAMLayerSpec) -> None:
        dim, num_heads, dropout = spec.dim, spec.num_heads, spec.dropout
        self.self_attn = MapSelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = PositionalCrossAttention(dim, num_heads, dropout)

    def forward(
        self, queries: torch.Tensor, query_pos: torch.Tensor, level: FeatureLevel
    ) -> torch.Tensor:
        """``queries, query_pos (B, N, d)``, the encoded level it reads -> ``(B, N, d)``."""
        queries = self.norm1(queries + self.dropout(self.self_attn(queries, query_pos, None)))
        attended = self.cross_attn(queries, query_pos, level.memory, level.pos, level.bias)
        return self.output_block(queries, attended)


class BaselineDETRTransformer(DetectionTransformer):
    """The paper's baseline (DETR with aligned setups): zero-initialised queries with learnable
    position embeddings, plain cross-attention, boxes predicted directly by each layer's head."""

    decoder_layer = DETRDecoderLayer

    @property
    def query_parameters(self) -> Tuple[str, int]:
        """Learnable query position embeddings (DETR's ``query_embed``)."""
        return "query_pos", self.dim

    def decode(
        self, levels: List[FeatureLevel], query_pos: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``query_pos (N, d)``: the learnable query positions."""
        query_pos = query_pos.expand(levels[0].memory.shape[0], -1, -1)
        queries = torch.zeros_like(query_pos)
        hidden_states, boxes = [], []
        for layer, box_head, level in zip(self.decoder, self.bbox_embed, levels):
            queries = layer(queries, query_pos, level)
            hidden_states.append(queries)
            boxes.append(box_head(queries).sigmoid())
        return torch.stack(hidden_states), torch.stack(boxes)
