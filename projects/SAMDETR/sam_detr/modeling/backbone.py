"""The CNN backbone: Detectron2's ResNet (frozen BatchNorm, stem and res2 frozen by
``FREEZE_AT``), with the option to dilate res5 the way torchvision does, which is how the
official DC5 checkpoints were trained; and the padding mask at the feature's resolution."""

import logging

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone
from detectron2.modeling.backbone.resnet import ResNet
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Dilation of res5 that turns a ResNet into its DC5 variant (output stride 16).
DC5_DILATION = 2


def torchvision_dc5_(backbone: ResNet) -> None:
    """Undilate the first res5 block's 3x3 conv, in place.

    Detectron2's ``RES5_DILATION=2`` dilates every res5 block; torchvision's
    ``replace_stride_with_dilation`` keeps the first one at dilation 1. Parameters are
    identical, outputs differ, so parity with official DC5 checkpoints needs this.
    """
    conv = backbone.res5[0].conv2
    conv.dilation = (1, 1)
    conv.padding = tuple(k // 2 for k in conv.kernel_size)


def build_sam_detr_backbone(cfg: CfgNode) -> Backbone:
    """Detectron2 backbone from ``cfg.MODEL.BACKBONE``; see ``torchvision_dc5_``."""
    backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    if (
        cfg.MODEL.SAM_DETR.TORCHVISION_DC5
        and isinstance(backbone, ResNet)
        and cfg.MODEL.RESNETS.RES5_DILATION == DC5_DILATION
    ):
        torchvision_dc5_(backbone)
        logger.info("res5 dilated the torchvision way (first block undilated).")
    return backbone


def downsample_mask(mask: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Padding mask ``(B, H, W)`` bool (True on padding) -> ``(B, h, w)``, nearest."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]
