"""The images a SAM-DETR model reads: checks of each input image, and the padding mask of a
batch padded to one size."""

import logging

import torch
from detectron2.structures import ImageList
from detectron2.utils.logger import log_first_n

__all__ = ["check_image", "is_padded", "padding_mask"]

# Largest value of a float input image that suggests [0, 1] scaling instead of [0, 255].
UNIT_RANGE_MAX = 1.0


def check_image(image: torch.Tensor, channels: int) -> None:
    """Refuse an input ``"image"`` that is not ``(channels, H, W)``; warn (once) when a float
    image looks scaled to [0, 1] (the model expects pixel values in [0, 255])."""
    if image.dim() != 3 or image.shape[0] != channels:
        raise ValueError(
            f'SAMDETR expects each input\'s "image" as a ({channels}, H, W) tensor in '
            f"INPUT.FORMAT channel order with values in [0, 255]; got shape {tuple(image.shape)}."
        )
    if image.is_floating_point() and image.numel() and float(image.max()) <= UNIT_RANGE_MAX:
        log_first_n(
            logging.WARNING,
            "SAMDETR got a float image with values in [0, 1]; the model expects [0, 255] "
            "(multiply by 255). Detections on such an image are meaningless.",
            n=1,
        )


def is_padded(images: ImageList) -> bool:
    """Whether any image of the batch is padded, from the sizes alone (no read of the device):
    when none is, attention needs no padding bias."""
    padded_size = tuple(images.tensor.shape[-2:])
    return any(tuple(size) != padded_size for size in images.image_sizes)


def padding_mask(images: ImageList) -> torch.Tensor:
    """``(B, H, W)`` bool of the padded batch, True on padding."""
    B, _, H, W = images.tensor.shape
    mask = torch.ones((B, H, W), dtype=torch.bool, device=images.tensor.device)
    for i, (h, w) in enumerate(images.image_sizes):
        mask[i, :h, :w] = False
    return mask
