"""The DETR optimiser recipe for Detectron2: AdamW with the backbone's learning rate scaled by
``SOLVER.BACKBONE_MULTIPLIER`` and one weight decay for every parameter (as DETR). Gradient
clipping of the whole model's L2 norm (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``) is
done by the training step (:mod:`.train_step`), which computes that norm anyway to check that
the gradients are finite; Detectron2's per-parameter "value"/"norm" clipping wraps the
optimiser as usual."""

import logging
from typing import Any, Dict, List, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["FULL_MODEL_CLIP_TYPE", "build_optimizer"]

logger = logging.getLogger(__name__)

FULL_MODEL_CLIP_TYPE = "full_model"


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimiser of ``cfg.SOLVER`` for ``model`` (not wrapped in DDP).

    Two parameter groups: ``model.backbone`` at ``BASE_LR * BACKBONE_MULTIPLIER`` and the
    rest at ``BASE_LR``, both with ``WEIGHT_DECAY``. Frozen parameters are left out.
    """
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    base_lr = cfg.SOLVER.BASE_LR
    groups: Dict[str, List[torch.nn.Parameter]] = {"backbone": [], "transformer": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["backbone" if id(p) in backbone_ids else "transformer"].append(p)
    param_groups = [
        {
            "params": groups["transformer"],
            "lr": base_lr,
            "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        },
        {
            "params": groups["backbone"],
            "lr": base_lr * cfg.SOLVER.BACKBONE_MULTIPLIER,
            "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        },
    ]
    param_groups = [g for g in param_groups if g["params"]]

    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_type: Type[torch.optim.Optimizer] = torch.optim.AdamW
        # One fused kernel for all tensors instead of PyTorch's per-tensor loop, the CPU's
        # default: the demo model's update went from 19 to 4 ms (227 tensors).
        kwargs: Dict[str, Any] = {"fused": True}
    elif name == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {name!r}")

    if cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE != FULL_MODEL_CLIP_TYPE:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    optimizer = optimizer_type(param_groups, lr=base_lr, **kwargs)
    logger.info(
        "%s: %d backbone tensors at lr %g, %d other tensors at lr %g, weight decay %g",
        optimizer_type.__name__,
        len(groups["backbone"]),
        base_lr * cfg.SOLVER.BACKBONE_MULTIPLIER,
        len(groups["transformer"]),
        base_lr,
        cfg.SOLVER.WEIGHT_DECAY,
    )
    return optimizer
