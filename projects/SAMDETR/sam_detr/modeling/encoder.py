"""The DETR encoder over one feature level: post-norm layers of self-attention over the
flattened map (positions added to queries and keys) and FFN."""

from typing import List, Optional, Sequence

import torch
from torch import nn

from .attention import MapSelfAttention
from .feature_levels import FeatureLevel
from .feed_forward import feed_forward
from .layer_spec import SAMLayerSpec

__all__ = ["Encoder", "EncoderLayer"]


class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: self-attention with positions added to q and k, FFN."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MapSelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``src, pos (B, HW, d)``, padding ``bias (B, 1, 1, HW)`` or None -> ``(B, HW, d)``."""
        src = self.norm1(src + self.dropout(self.self_attn(src, pos, bias)))
        return self.norm2(src + self.dropout(feed_forward(self, src)))


class Encoder(nn.ModuleList):
    """The DETR encoder: ``ENC_LAYERS`` encoder layers applied in turn to one feature level."""

    def __init__(self, spec: SAMLayerSpec, num_layers: int) -> None:
        super().__init__(
            EncoderLayer(spec.dim, spec.num_heads, spec.dim_feedforward, spec.dropout)
            for _ in range(num_layers)
        )

    def forward(self, levels: Sequence[FeatureLevel]) -> List[FeatureLevel]:
        """The one level with its memory encoded."""
        (level,) = levels
        memory = level.memory
        for layer in self:
            memory = layer(memory, level.pos, level.bias)
        return [level._replace(memory=memory)]
