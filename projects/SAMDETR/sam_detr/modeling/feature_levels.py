"""One level of the feature pyramid as the transformer sees it: the projected map flattened
to a sequence, its sine embedding, its padding, its size and its unpadded fraction.
Single-scale SAM-DETR has one level (res5, or res5 dilated); multi-scale has three (res3,
res4, res5), which the deformable encoder attends jointly and the decoder layers take one
at a time."""

from typing import NamedTuple, Optional, Tuple

import torch

__all__ = ["FeatureLevel", "padding_bias", "unpadded_ratio"]


def padding_bias(key_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, S)`` bool, True on padding -> ``(B, 1, 1, S)`` additive bias (0 or -inf)."""
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    return bias.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]


def unpadded_ratio(mask: torch.Tensor) -> torch.Tensor:
    """``mask (B, H, W)`` bool, True on padding -> ``(B, 2)`` float32 unpadded fraction
    (w, h) of the map."""
    height, width = mask.shape[-2:]
    return torch.stack([(~mask[:, 0, :]).sum(1) / width, (~mask[:, :, 0]).sum(1) / height], -1)


class FeatureLevel(NamedTuple):
    """A feature map of B images, d channels, H x W cells, flattened row by row."""

    memory: torch.Tensor  # (B, HW, d) features (encoded, once the encoder has run)
    pos: torch.Tensor  # (B, HW, d) sine embedding (plus the level embedding, multi-scale)
    mask: torch.Tensor  # (B, HW) bool, True on padding
    # (B, 1, 1, HW) additive attention bias, -inf on padding; None when no image of the batch
    # is padded (attention then runs without a mask, on the fused GPU kernels).
    bias: Optional[torch.Tensor]
    size: Tuple[int, int]  # (H, W)
    valid_ratio: torch.Tensor  # (B, 2) unpadded fraction (w, h) of the map, in src's dtype

    def memory_map(self) -> torch.Tensor:
        """The memory as a map ``(B, d, H, W)``."""
        return self.memory.transpose(1, 2).unflatten(2, self.size)

    @classmethod
    def from_map(
        cls, src: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, padded: bool = True
    ) -> "FeatureLevel":
        """``src, pos (B, d, H, W)``, ``mask (B, H, W)`` (True on padding) -> a level;
        ``padded``: whether any image is (False: no attention bias, the mask is all False)."""
        memory = src.flatten(2).transpose(1, 2)
        flat_mask = mask.flatten(1)
        return cls(
            memory=memory,
            pos=pos.flatten(2).transpose(1, 2),
            mask=flat_mask,
            bias=padding_bias(flat_mask, memory.dtype) if padded else None,
            size=tuple(src.shape[-2:]),
            valid_ratio=unpadded_ratio(mask).to(src.dtype),
        )
