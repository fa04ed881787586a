"""The transformer of SAM-DETR: an encoder over the feature levels, the SAM decoder, whose
layers re-sample their queries with the Semantics Aligner before a cross-attention in which
each head matches one salient point, and per-layer box heads that refine the reference boxes
layer by layer. :class:`DetectionTransformer` holds what the paper's baseline
(:mod:`.baseline`) shares with it.

Multi-scale SAM-DETR (the official code's ``--multiscale``) takes several feature levels: a
deformable encoder attends to all of them jointly, and each decoder layer works on one
level (the coarsest first), chosen per layer by ``MODEL.SAM_DETR.DECODER_IN_FEATURES``."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .decoder import SAMDecoderLayer
from .deformable_encoder import DeformableEncoder
from .encoder import Encoder
from .feature_levels import FeatureLevel
from .layer_spec import SAMLayerSpec
from .mlp import MLP

__all__ = ["BOX_DIMS", "DetectionTransformer", "SAMTransformer"]

# Box heads: MLP(d -> d -> d -> 4), as DETR.
BOX_HEAD_LAYERS = 3
BOX_DIMS = 4
# The encoder by whether the model reads several feature levels.
ENCODERS = {False: Encoder, True: DeformableEncoder}


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
        self.encoder = ENCODERS[spec.num_levels > 1](spec, enc_layers)
        self.decoder = nn.ModuleList(self.decoder_layer(spec) for _ in range(dec_layers))
        # Xavier on every matrix of the encoder and decoder layers, then Deformable DETR's own
        # initialisation of the multi-scale encoder (the official order).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if isinstance(self.encoder, DeformableEncoder):
            self.encoder.reset_parameters()
        # Box heads are created after the Xavier pass, with Linear's default init.
        self.bbox_embed = nn.ModuleList(
            MLP(dim, [dim] * (BOX_HEAD_LAYERS - 1), BOX_DIMS) for _ in range(dec_layers)
        )

    @property
    def query_parameters(self) -> Tuple[str, int]:
        raise NotImplementedError

    def forward(
        self,
        srcs: Sequence[torch.Tensor],
        pos: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        query_parameters: torch.Tensor,
        padded: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs: per level ``(B, d, H, W)`` projected backbone features.
            pos: per level ``(B, d, H, W)`` sine embedding of the map.
            masks: per level ``(B, H, W)`` bool, True on padding.
            query_parameters: the learnable per-query parameters (:attr:`query_parameters`).
            padded: whether any image of the batch is padded (False: attention without bias).
        Returns:
            hidden states ``(L, B, N, d)`` and boxes ``(L, B, N, 4)`` (cx, cy, w, h in
            [0, 1] of each unpadded image), one per decoder layer.
        """
        levels = self.encoder(
            [FeatureLevel.from_map(*level, padded) for level in zip(srcs, pos, masks)]
        )
        return self.decode([levels[i] for i in self.decoder_levels], query_parameters)

    def decode(
        self, levels: List[FeatureLevel], query_parameters: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The encoded level of each decoder layer -> hidden states and boxes."""
        raise NotImplementedError


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

    def decode(
        self, levels: List[FeatureLevel], reference_logits: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``reference_logits (N, 4)``: the learnable reference boxes, before sigmoid; each
        layer refines the boxes of the previous one."""
        B = levels[0].memory.shape[0]
        queries = levels[0].memory.new_zeros(B, reference_logits.shape[0], self.dim)
        logits = reference_logits.expand(B, -1, -1)
        hidden_states, boxes = [], []
        for layer, box_head, level in zip(self.decoder, self.bbox_embed, levels):
            queries = layer(queries, level, logits.sigmoid())
            logits = logits + box_head(queries)
            hidden_states.append(queries)
            boxes.append(logits.sigmoid())
            # Reference boxes of the next layer carry no gradient (official refinement).
            logits = logits.detach()
        return torch.stack(hidden_states), torch.stack(boxes)
