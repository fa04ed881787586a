"""The multi-scale encoder of Deformable DETR (the official ``--multiscale`` models):
deformable self-attention over every cell of every level at once, with reference points at
the cell centres and learnable level embeddings."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .deformable_attention import MultiScaleDeformableAttention
from .feature_levels import FeatureLevel, unpadded_ratio
from .feed_forward import feed_forward
from .layer_spec import SAMLayerSpec

__all__ = ["DeformableEncoder", "cell_centres"]


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer of Deformable DETR: multi-scale deformable self-attention
    (queries = every cell of every level, plus positions), FFN."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__()
        dim = spec.dim
        self.self_attn = MultiScaleDeformableAttention(
            dim, spec.num_heads, spec.num_levels, spec.deformable_points
        )
        self.norm1 = nn.LayerNorm(dim)
        width = spec.enc_dim_feedforward or spec.dim_feedforward
        self.linear1 = nn.Linear(dim, width)
        self.linear2 = nn.Linear(width, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        sizes: List[Tuple[int, int]],
        extents: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``src, pos (B, S, d)``, ``reference_points (B, S, L, 2)``, level sizes as numbers
        and as an ``(L, 2)`` tensor of (W, H), padding ``(B, S)`` -> ``(B, S, d)``."""
        attended = self.self_attn(src + pos, reference_points, src, sizes, extents, padding_mask)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(feed_forward(self, src)))


def cell_centres(sizes: Sequence[Tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Reference points of the deformable encoder: the centre of every cell of every level,
    in units of its image's unpadded extent, then seen on each level (whose padded extent
    differs): ``valid_ratios (B, L, 2)`` -> ``(B, S, L, 2)`` (x, y), 0..1 across each padded
    level. In float32 (``valid_ratios`` too) whatever the precision: cell centres like 152.5
    are not bfloat16 numbers."""
    points = []
    for level, (height, width) in enumerate(sizes):
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            torch.arange(width, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            indexing="ij",
        )
        xs = xs.reshape(1, -1) / (valid_ratios[:, level, None, 0] * width)
        ys = ys.reshape(1, -1) / (valid_ratios[:, level, None, 1] * height)
        points.append(torch.stack((xs, ys), dim=-1))  # (B, HW, 2)
    return torch.cat(points, dim=1)[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.ModuleList):
    """The multi-scale encoder: ``ENC_LAYERS`` deformable layers over all L levels at once.
    Owns the learnable level embeddings ``level_embed (L, d)``, added to each level's sine
    embedding here and in the decoder."""

    def __init__(self, spec: SAMLayerSpec, num_layers: int) -> None:
        super().__init__(DeformableEncoderLayer(spec) for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.empty(spec.num_levels, spec.dim))

    def reset_parameters(self) -> None:
        """Deformable attention's own initialisation and normal level embeddings, after the
        transformer's Xavier pass (the official order)."""
        for layer in self:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, levels: Sequence[FeatureLevel]) -> List[FeatureLevel]:
        """The levels with their memories encoded and level embeddings added to ``pos``."""
        levels = [lv._replace(pos=lv.pos + embed) for lv, embed in zip(levels, self.level_embed)]
        sizes = [lv.size for lv in levels]
        src = torch.cat([lv.memory for lv in levels], dim=1)
        pos = torch.cat([lv.pos for lv in levels], dim=1)
        padding_mask = torch.cat([lv.mask for lv in levels], dim=1)
        # Valid ratios in float32 (the levels carry them in the features' precision).
        ratios = [unpadded_ratio(lv.mask.unflatten(1, lv.size)) for lv in levels]
        reference_points = cell_centres(sizes, torch.stack(ratios, dim=1))
        extents = torch.tensor([[w, h] for h, w in sizes], dtype=torch.float32, device=src.device)
        for layer in self:
            src = layer(src, pos, reference_points, sizes, extents, padding_mask)
        memories = src.split([h * w for h, w in sizes], dim=1)
        return [lv._replace(memory=memory) for lv, memory in zip(levels, memories)]
