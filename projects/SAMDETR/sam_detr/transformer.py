"""The transformer of SAM-DETR: a DETR encoder over the flattened feature map, and the
SAM decoder, whose layers re-sample their queries with the Semantics Aligner before a
cross-attention in which each head matches one salient point, and whose reference boxes
are refined layer by layer by per-layer box heads. ``build_transformer`` also offers the
paper's baseline (Table 1, DETR with aligned setups): the same encoder and a plain DETR
decoder, without semantic-aligned matching.

Multi-scale SAM-DETR (the official code's ``--multiscale``) takes several feature levels: a
deformable encoder attends to all of them jointly, and each decoder layer works on one
level (the coarsest first), chosen per layer by ``MODEL.SAM_DETR.DECODER_IN_FEATURES``."""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .deformable_attention import MultiScaleDeformableAttention
from .feature_levels import FeatureLevel, unpadded_ratio
from .mlp import MLP
from .position_encoding import embed_points
from .semantics_aligner import build_semantics_aligner
from .smca import smca_log_weights

# Box heads: MLP(d -> d -> d -> 4), as DETR.
BOX_HEAD_LAYERS = 3
BOX_DIMS = 4


@dataclass(frozen=True)
class SAMLayerSpec:
    """Sizes of the transformer layers (``MODEL.SAM_DETR`` keys in brackets)."""

    dim: int  # d, channels of queries and memory [HIDDEN_DIM]
    num_heads: int  # attention heads = salient points M [NHEADS]
    dim_feedforward: int  # [DIM_FEEDFORWARD]
    dropout: float  # [DROPOUT]
    roi_size: int  # side of the RoIAlign grid [ROI_SIZE]
    point_conv_dim: int  # [POINT_CONV_DIM]
    point_mlp_dims: Tuple[int, ...]  # hidden widths of the point MLP [POINT_MLP_DIMS]
    smca: bool  # SMCA spatial prior in the cross-attention [SMCA]
    smca_divisor: float  # [SMCA_DIVISOR]
    temperature: float  # of the sine embeddings [POSITION_TEMPERATURE]
    roi_align: str = "auto"  # RoIAlign implementation [ROI_ALIGN]
    # Ablations of the paper's Tables 2-3; the defaults are the paper's model.
    query_resampling: str = "salient_points"  # [QUERY_RESAMPLING]
    num_salient_points: int = 0  # 0: one per head [NUM_SALIENT_POINTS]
    search_range: str = "box"  # [SEARCH_RANGE]
    reweighting: bool = True  # [REWEIGHTING]
    # Multi-scale: feature levels L, deformable points per head and level, the deformable
    # encoder's FFN width (0: DIM_FEEDFORWARD).
    num_levels: int = 1  # [len(IN_FEATURES)]
    deformable_points: int = 4  # [DEFORMABLE_POINTS]
    enc_dim_feedforward: int = 0  # [ENC_DIM_FEEDFORWARD]


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, C) -> (B, num_heads, L, C / num_heads)``."""
    B, L, C = x.shape
    return x.view(B, L, num_heads, C // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, num_heads, L, c) -> (B, L, num_heads * c)``."""
    B, _, L, _ = x.shape
    return x.transpose(1, 2).reshape(B, L, -1)


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    bias: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """PyTorch's fused attention of projected ``q (B, L, d)``, ``k, v (B, S, d)`` split into
    ``num_heads`` heads, additive ``bias`` broadcastable to ``(B, heads, L, S)`` ->
    ``(B, L, d)``.

    Under CPU autocast it runs in float32 (inputs cast, output float32): PyTorch's fused CPU
    attention is slower in bfloat16 than in float32 at this model's sizes (forward +
    backward of the demo's encoder, (4, 8, 400, 16): 27 ms against 14-16 ms; of its decoder
    self-attention, (4, 8, 30, 16): 1.7-2.2 ms against 0.4-0.5 ms; AVX512-BF16 CPU,
    2026-12-02); at 800x1216 in bfloat16 it leaves R50's training step and inference as they
    were and makes R50-DC5's training step 10% faster (README). Like autocast's own
    per-operator rules, this follows the autocast state of the call, which the same model
    changes between training and evaluation."""
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return multi_head_attention(q.float(), k.float(), v.float(), num_heads, bias, dropout)
    out = F.scaled_dot_product_attention(
        _split_heads(q, num_heads),
        _split_heads(k, num_heads),
        _split_heads(v, num_heads),
        attn_mask=None if bias is None else bias.to(q.dtype),
        dropout_p=dropout,
    )
    return _merge_heads(out)


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """The weights ``F.scaled_dot_product_attention`` applies, for visualisation only:
    ``q (B, h, L, c)``, ``k (B, h, S, c)``, bias broadcastable -> ``(B, h, L, S)``."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return (logits if bias is None else logits + bias).softmax(dim=-1)


def shared_key_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention weights of M heads that match their own queries against one set of keys:
    ``q (B, M, N, d)``, ``k (B, S, d)``, additive ``bias`` broadcastable to ``(B, M, N, S)``
    -> ``softmax(q k^T / sqrt(d) + bias)``, ``(B, M, N, S)``. One matrix product over all
    heads' queries: ``F.scaled_dot_product_attention`` would need ``k`` copied per head, and
    its CPU path for these shapes (d-dim queries, d/M-dim values) took 1.3-2.4x as long,
    forward and backward (R50 and the demo)."""
    B, M, N, d = q.shape
    logits = (q * d**-0.5).reshape(B, M * N, d) @ k.transpose(1, 2)
    return (logits.view(B, M, N, -1) + bias).softmax(dim=-1)


def feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The post-norm FFN block of a layer with ``linear1``, ``linear2``, ``dropout`` and the
    given norm applied by the caller: ``linear2(dropout(relu(linear1(x))))``."""
    return layer.linear2(layer.dropout(F.relu(layer.linear1(x))))


class MapSelfAttention(nn.Module):
    """Self-attention with positions added to queries and keys (the encoder's over the map, the
    baseline decoder's over its queries), the parameters of ``nn.MultiheadAttention`` (same
    state_dict keys) and PyTorch's fused attention. ``nn.MultiheadAttention`` transposes to
    sequence-first inside; under bfloat16 autocast its projections of the transposed input
    then copy the weight once per position (a third of bfloat16 inference at 800x1216)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Projected ``q (B, L, d)``, ``k, v (B, S, d)``, additive bias -> ``(B, L, d)``."""
        dropout = self.dropout if self.training else 0.0
        return self.out_proj(multi_head_attention(q, k, v, self.num_heads, bias, dropout))

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``src, pos (B, L, d)``, additive ``bias (B, 1, 1, L)`` or None -> ``(B, L, d)``."""
        dim = src.shape[-1]
        weight, in_bias = self.in_proj_weight, self.in_proj_bias
        q, k = F.linear(src + pos, weight[: 2 * dim], in_bias[: 2 * dim]).chunk(2, dim=-1)
        v = F.linear(src, weight[2 * dim :], in_bias[2 * dim :])
        return self.attend(q, k, v, bias)


class PositionalCrossAttention(MapSelfAttention):
    """DETR's cross-attention: queries plus their position embeddings attend to the map plus
    its sine embedding; values are the map. Parameters as ``nn.MultiheadAttention``."""

    def project(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``queries, query_pos (B, N, d)``, ``memory, memory_pos (B, HW, d)`` -> q, k, v."""
        weight, bias = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        q = F.linear(queries + query_pos, weight[0], bias[0])
        k = F.linear(memory + memory_pos, weight[1], bias[1])
        return q, k, F.linear(memory, weight[2], bias[2])

    def forward(self, queries, query_pos, memory, memory_pos, bias):
        """Arguments of :meth:`project`, padding ``bias (B, 1, 1, HW)`` -> ``(B, N, d)``."""
        return self.attend(*self.project(queries, query_pos, memory, memory_pos), bias)

    def attention_weights(self, queries, query_pos, memory, memory_pos, bias) -> torch.Tensor:
        """Visualisation only: the forward's arguments -> weights ``(B, heads, N, HW)``."""
        q, k, _ = self.project(queries, query_pos, memory, memory_pos)
        return softmax_attention(
            _split_heads(q, self.num_heads), _split_heads(k, self.num_heads), bias
        )


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

    def forward(self, src: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``src, pos (B, HW, d)``, padding ``bias (B, 1, 1, HW)`` -> ``(B, HW, d)``."""
        src = self.norm1(src + self.dropout(self.self_attn(src, pos, bias)))
        return self.norm2(src + self.dropout(feed_forward(self, src)))


class QuerySelfAttention(nn.Module):
    """Self-attention among queries; positions are the sine embeddings of the box centres."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_content_proj = nn.Linear(dim, dim)
        self.q_pos_proj = nn.Linear(dim, dim)
        self.k_content_proj = nn.Linear(dim, dim)
        self.k_pos_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, queries: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``queries, pos (B, N, d) -> (B, N, d)``."""
        q = self.q_content_proj(queries) + self.q_pos_proj(pos)
        k = self.k_content_proj(queries) + self.k_pos_proj(pos)
        v = self.v_proj(queries)
        dropout = self.dropout if self.training else 0.0
        return self.out_proj(multi_head_attention(q, k, v, self.num_heads, dropout=dropout))


class SalientPointCrossAttention(nn.Module):
    """Cross-attention in which head m's query is the feature (and sine position) of the
    m-th salient point, a full d-dim vector matched against the d-dim keys; values are
    split across heads as usual. An optional additive bias (padding, SMCA) is applied."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_content_proj = nn.Linear(dim, dim)
        self.k_content_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_pos_proj = MLP(dim, [dim], dim)
        self.k_pos_proj = MLP(dim, [dim], dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)

    def weights(
        self,
        content: torch.Tensor,
        position: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Attention weights ``(B, M, N, HW)``: queries ``(B, M, N, d)``, keys ``(B, HW, d)``
        shared by the heads."""
        q = (self.q_content_proj(content) + self.q_pos_proj(position)).transpose(1, 2)
        k = self.k_content_proj(memory) + self.k_pos_proj(memory_pos)
        return shared_key_attention(q, k, attn_bias)

    def forward(
        self,
        content: torch.Tensor,
        position: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_bias: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            content, position: ``(B, N, M, d)`` from the Semantics Aligner.
            memory, memory_pos: ``(B, HW, d)`` encoded map and its sine embedding.
            attn_bias: broadcastable to ``(B, M, N, HW)``.
        Returns:
            ``(B, N, d)``.
        """
        weights = self.weights(content, position, memory, memory_pos, attn_bias)
        weights = F.dropout(weights, self.dropout, self.training)
        out = weights @ _split_heads(self.v_proj(memory), self.num_heads)  # (B, M, N, d / M)
        return self.out_proj(_merge_heads(out))

    def attention_weights(self, content, position, memory, memory_pos, attn_bias) -> torch.Tensor:
        """Visualisation: the forward's arguments -> weights ``(B, M, N, HW)``."""
        return self.weights(content, position, memory, memory_pos, attn_bias)


class DecoderLayer(nn.Module):
    """What the decoder layers share after their cross-attention (post-norm): the residual
    and ``norm2``, then the FFN with its residual and ``norm3``; ``dropout`` serves the whole
    layer. Created last in each layer (the official order of initialisation)."""

    def add_output_block(self, spec: SAMLayerSpec) -> None:
        self.norm2 = nn.LayerNorm(spec.dim)
        self.linear1 = nn.Linear(spec.dim, spec.dim_feedforward)
        self.linear2 = nn.Linear(spec.dim_feedforward, spec.dim)
        self.norm3 = nn.LayerNorm(spec.dim)
        self.dropout = nn.Dropout(spec.dropout)

    def output_block(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """``queries (B, N, d)`` and their cross-attention output -> ``(B, N, d)``."""
        queries = self.norm2(queries + self.dropout(attended))
        return self.norm3(queries + self.dropout(feed_forward(self, queries)))


class SAMDecoderLayer(DecoderLayer):
    """Self-attention, Semantics Aligner, salient-point cross-attention, FFN (post-norm)."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__()
        dim, num_heads, dropout = spec.dim, spec.num_heads, spec.dropout
        self.dim = dim
        self.smca = spec.smca
        self.smca_divisor = spec.smca_divisor
        self.temperature = spec.temperature
        self.self_attn = QuerySelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.semantics_aligner = build_semantics_aligner(
            query_resampling=spec.query_resampling,
            num_salient_points=spec.num_salient_points,
            search_range=spec.search_range,
            reweighting=spec.reweighting,
            point_conv_dim=spec.point_conv_dim,
            point_mlp_dims=spec.point_mlp_dims,
            predict_scales=spec.smca,
            dim=dim,
            num_heads=num_heads,
            roi_size=spec.roi_size,
            temperature=spec.temperature,
            roi_align=spec.roi_align,
        )
        self.cross_attn = SalientPointCrossAttention(dim, num_heads, dropout)
        self.add_output_block(spec)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        padding_bias: torch.Tensor,
        map_size: Tuple[int, int],
        valid_ratio: torch.Tensor,
        reference_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            queries: ``(B, N, d)``.
            memory, memory_pos: ``(B, HW, d)``.
            padding_bias: ``(B, 1, 1, HW)``, -inf on padded cells.
            map_size: (H, W) of the encoded map.
            valid_ratio: ``(B, 2)`` unpadded fraction (w, h) of the map.
            reference_boxes: ``(B, N, 4)`` cx, cy, w, h in [0, 1].
        Returns:
            ``(B, N, d)`` updated queries.
        """
        center_pos = embed_points(reference_boxes[..., :2], self.dim, self.temperature)
        queries = self.norm1(queries + self.dropout(self.self_attn(queries, center_pos)))

        height, width = map_size
        memory_2d = memory.transpose(1, 2).unflatten(2, (height, width))
        aligned = self.semantics_aligner(queries, memory_2d, reference_boxes, valid_ratio)
        attn_bias = padding_bias
        if self.smca:
            attn_bias = attn_bias + smca_log_weights(
                aligned.points, aligned.scales, valid_ratio, height, width, self.smca_divisor
            )
        attended = self.cross_attn(aligned.content, aligned.position, memory, memory_pos, attn_bias)
        return self.output_block(queries, attended)


class DETRDecoderLayer(DecoderLayer):
    """The baseline's decoder layer (DETR, post-norm): self-attention and cross-attention with
    the learnable query positions added to the queries, FFN; no Semantics Aligner."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__()
        dim, num_heads, dropout = spec.dim, spec.num_heads, spec.dropout
        self.self_attn = MapSelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = PositionalCrossAttention(dim, num_heads, dropout)
        self.add_output_block(spec)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        padding_bias: torch.Tensor,
    ) -> torch.Tensor:
        """``queries, query_pos (B, N, d)``, ``memory, memory_pos (B, HW, d)``, padding bias
        ``(B, 1, 1, HW)`` -> ``(B, N, d)``."""
        queries = self.norm1(queries + self.dropout(self.self_attn(queries, query_pos, None)))
        attended = self.cross_attn(queries, query_pos, memory, memory_pos, padding_bias)
        return self.output_block(queries, attended)


class Encoder(nn.ModuleList):
    """The DETR encoder: ``ENC_LAYERS`` encoder layers applied in turn to one feature level."""

    def __init__(self, spec: SAMLayerSpec, num_layers: int) -> None:
        super().__init__(
            EncoderLayer(spec.dim, spec.num_heads, spec.dim_feedforward, spec.dropout)
            for _ in range(num_layers)
        )

    def reset_parameters(self) -> None:
        """Nothing to re-initialise after the transformer's Xavier pass."""

    def forward(self, levels: Sequence[FeatureLevel]) -> List[FeatureLevel]:
        """The one level with its memory encoded."""
        (level,) = levels
        memory = level.memory
        for layer in self:
            memory = layer(memory, level.pos, level.bias)
        return [level._replace(memory=memory)]


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


class DetectionTransformer(nn.Module):
    """Encoder, a decoder of ``decoder_layer``s and per-layer box heads. Subclasses define
    the decoder and the learnable per-query parameters the detector owns for them
    (``query_parameters``: the name of its ``nn.Embedding`` and its width). With several
    feature levels the encoder is deformable and decoder layer i reads level
    ``decoder_levels[i]``."""

    decoder_layer: type  # built from the SAMLayerSpec, DEC_LAYERS times

    def __init__(
        self,
        spec: SAMLayerSpec,
        enc_layers: int,
        dec_layers: int,
        decoder_levels: Sequence[int] = (),
    ) -> None:
        """``decoder_levels``: per decoder layer, the index of its feature level (empty: the
        last level for every layer)."""
        super().__init__()
        dim = spec.dim
        self.dim = dim
        self.decoder_levels = list(decoder_levels) or [spec.num_levels - 1] * dec_layers
        encoder = Encoder if spec.num_levels == 1 else DeformableEncoder
        self.encoder = encoder(spec, enc_layers)
        self.decoder = nn.ModuleList(self.decoder_layer(spec) for _ in range(dec_layers))
        # Xavier on every matrix of the encoder and decoder layers (official init).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.encoder.reset_parameters()
        # Box heads are created after the Xavier pass, with Linear's default init.
        self.bbox_embed = nn.ModuleList(
            MLP(dim, [dim] * (BOX_HEAD_LAYERS - 1), BOX_DIMS) for _ in range(dec_layers)
        )

    @property
    def query_parameters(self) -> Tuple[str, int]:
        raise NotImplementedError

    def encode(
        self,
        srcs: Sequence[torch.Tensor],
        pos: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
    ) -> List[FeatureLevel]:
        """Per level ``src, pos (B, d, H, W)``, ``mask (B, H, W)`` -> the encoded levels, one
        per decoder layer."""
        levels = self.encoder([FeatureLevel.from_map(*level) for level in zip(srcs, pos, masks)])
        return [levels[i] for i in self.decoder_levels]


class SAMTransformer(DetectionTransformer):
    """Encoder + SAM decoder with per-layer reference-box refinement."""

    decoder_layer = SAMDecoderLayer

    def __init__(self, spec: SAMLayerSpec, *args, **kwargs) -> None:
        super().__init__(spec, *args, **kwargs)
        # Box heads predict refinements: zero last layer (official init).
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    @property
    def query_parameters(self) -> Tuple[str, int]:
        """Learnable reference boxes: cx, cy, w, h before sigmoid, one per query."""
        return "reference_boxes", BOX_DIMS

    def forward(
        self,
        srcs: Sequence[torch.Tensor],
        pos: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        reference_logits: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs: per level ``(B, d, H, W)`` projected backbone features.
            pos: per level ``(B, d, H, W)`` sine embedding of the map.
            masks: per level ``(B, H, W)`` bool, True on padding.
            reference_logits: ``(N, 4)`` learnable reference boxes, before sigmoid.
        Returns:
            hidden states ``(L, B, N, d)`` and boxes ``(L, B, N, 4)`` (cx, cy, w, h in
            [0, 1] of each unpadded image), one per decoder layer.
        """
        levels = self.encode(srcs, pos, masks)
        B = srcs[0].shape[0]
        queries = levels[0].memory.new_zeros(B, reference_logits.shape[0], self.dim)
        logits = reference_logits.expand(B, -1, -1)
        hidden_states, boxes = [], []
        for layer, box_head, level in zip(self.decoder, self.bbox_embed, levels):
            queries = layer(
                queries,
                level.memory,
                level.pos,
                level.bias,
                level.size,
                level.valid_ratio,
                logits.sigmoid(),
            )
            logits = logits + box_head(queries)
            hidden_states.append(queries)
            boxes.append(logits.sigmoid())
            # Reference boxes of the next layer carry no gradient (official refinement).
            logits = logits.detach()
        return torch.stack(hidden_states), torch.stack(boxes)


class BaselineDETRTransformer(DetectionTransformer):
    """The paper's baseline (DETR with aligned setups): zero-initialised queries with learnable
    position embeddings, plain cross-attention, boxes predicted directly by each layer's head."""

    decoder_layer = DETRDecoderLayer

    @property
    def query_parameters(self) -> Tuple[str, int]:
        """Learnable query position embeddings (DETR's ``query_embed``)."""
        return "query_pos", self.dim

    def forward(
        self,
        srcs: Sequence[torch.Tensor],
        pos: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        query_pos: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`SAMTransformer.forward`, with ``query_pos (N, d)``."""
        levels = self.encode(srcs, pos, masks)
        query_pos = query_pos.expand(srcs[0].shape[0], -1, -1)
        queries = torch.zeros_like(query_pos)
        hidden_states, boxes = [], []
        for layer, box_head, level in zip(self.decoder, self.bbox_embed, levels):
            queries = layer(queries, query_pos, level.memory, level.pos, level.bias)
            hidden_states.append(queries)
            boxes.append(box_head(queries).sigmoid())
        return torch.stack(hidden_states), torch.stack(boxes)


def build_transformer(
    spec: SAMLayerSpec,
    enc_layers: int,
    dec_layers: int,
    semantic_aligned_matching: bool,
    decoder_levels: Sequence[int] = (),
) -> DetectionTransformer:
    """SAM-DETR's transformer, or the baseline DETR's without semantic-aligned matching."""
    transformer = SAMTransformer if semantic_aligned_matching else BaselineDETRTransformer
    return transformer(spec, enc_layers, dec_layers, decoder_levels)
