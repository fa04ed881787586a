"""Box conversions of the model's outputs."""

from typing import Tuple, Union

import torch
from torchvision.ops import box_convert

__all__ = ["cxcywh_to_pixel_xyxy"]


def cxcywh_to_pixel_xyxy(
    boxes: torch.Tensor, size: Union[Tuple[int, int], torch.Tensor]
) -> torch.Tensor:
    """``boxes (..., 4)`` cx, cy, w, h in [0, 1] of an image of ``size`` (h, w) -> x0, y0, x1,
    y1 in its pixels. ``size`` may be a tensor (export: not turned into constants)."""
    h, w = size
    scale = torch.stack([torch.as_tensor(v, dtype=boxes.dtype) for v in (w, h, w, h)])
    return box_convert(boxes, "cxcywh", "xyxy") * scale.to(boxes.device)
