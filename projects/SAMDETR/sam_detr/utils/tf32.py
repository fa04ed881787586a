"""TensorFloat-32 on CUDA: float32 matrix products and convolutions on the tensor cores of
Ampere and later GPUs (A100, H100), with float32's range and a 10-bit mantissa for the
products' inputs, accumulated in float32. PyTorch enables it for cuDNN convolutions but not
for matrix products by default; DETR-style training is insensitive to it, and the
transformer's matrix products run several times faster. ``ALLOW_TF32`` (config.py) sets both
for the whole process; the entry points apply it next to the denormal mode. CPUs are not
affected, so the parity tests (on the CPU) compute in exact float32."""

import logging

import torch
from detectron2.config import CfgNode

__all__ = ["apply_tf32_mode"]

logger = logging.getLogger(__name__)


def apply_tf32_mode(cfg: CfgNode) -> bool:
    """Allow (``cfg.ALLOW_TF32``) or forbid TF32 in CUDA matrix products and cuDNN
    convolutions; returns whether it is allowed and a CUDA GPU is present."""
    allow = bool(cfg.ALLOW_TF32)
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    on_gpu = allow and torch.cuda.is_available()
    if on_gpu:
        logger.info("TF32 allowed in CUDA float32 matrix products and convolutions.")
    return on_gpu
