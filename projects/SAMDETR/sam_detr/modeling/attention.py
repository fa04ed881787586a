"""Attention of the SAM-DETR transformer: PyTorch's fused attention over split heads, the
self-attention of the encoder (and of the baseline decoder), DETR's positional
cross-attention, the queries' self-attention, and the salient-point cross-attention in which
each head matches its own salient point against keys shared by all heads."""

import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import MLP


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


def shared_key_attention(
    q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """Attention weights of M heads that match their own queries against one set of keys:
    ``q (B, M, N, d)``, ``k (B, S, d)``, additive ``bias`` broadcastable to ``(B, M, N, S)``
    -> ``softmax(q k^T / sqrt(d) + bias)``, ``(B, M, N, S)``. One matrix product over all
    heads' queries: ``F.scaled_dot_product_attention`` would need ``k`` copied per head, and
    its CPU path for these shapes (d-dim queries, d/M-dim values) took 1.3-2.4x as long,
    forward and backward (R50 and the demo)."""
    B, M, N, d = q.shape
    logits = (q * d**-0.5).reshape(B, M * N, d) @ k.transpose(1, 2)
    logits = logits.view(B, M, N, -1)
    return (logits if bias is None else logits + bias).softmax(dim=-1)


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
        attn_bias: Optional[torch.Tensor],
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
        attn_bias: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            content, position: ``(B, N, M, d)`` from the Semantics Aligner.
            memory, memory_pos: ``(B, HW, d)`` encoded map and its sine embedding.
            attn_bias: broadcastable to ``(B, M, N, HW)``, or None.
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
