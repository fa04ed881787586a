"""Sizes and switches of the transformer's layers, read once from ``MODEL.SAM_DETR``."""

from dataclasses import dataclass
from typing import Tuple

__all__ = ["SAMLayerSpec"]


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
    roi_align: str  # RoIAlign implementation [ROI_ALIGN]
    # Ablations of the paper's Tables 2-3 (their defaults, the paper's model, are the keys').
    query_resampling: str  # [QUERY_RESAMPLING]
    num_salient_points: int  # 0: one per head [NUM_SALIENT_POINTS]
    search_range: str  # [SEARCH_RANGE]
    reweighting: bool  # [REWEIGHTING]
    # Multi-scale: feature levels L, deformable points per head and level, the deformable
    # encoder's FFN width (0: DIM_FEEDFORWARD).
    num_levels: int = 1  # [len(IN_FEATURES)]
    deformable_points: int = 4  # [DEFORMABLE_POINTS]
    enc_dim_feedforward: int = 0  # [ENC_DIM_FEEDFORWARD]
