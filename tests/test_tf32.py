"""TF32 (``ALLOW_TF32``, on by default) reaches both of PyTorch's switches, CUDA matrix
products and cuDNN convolutions, and False restores exact float32."""

import torch
from sam_detr.config import get_sam_detr_cfg
from sam_detr.utils.tf32 import apply_tf32_mode
from train_net_helpers import TINY_CONFIG


def test_allow_tf32_sets_both_switches():
    cfg = get_sam_detr_cfg(TINY_CONFIG)
    assert cfg.ALLOW_TF32 is True
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert apply_tf32_mode(cfg) == torch.cuda.is_available()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        cfg.ALLOW_TF32 = False
        assert apply_tf32_mode(cfg) is False
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
