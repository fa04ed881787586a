"""The DETR optimiser recipe for Detectron2: AdamW with the backbone's learning rate scaled by
``SOLVER.BACKBONE_MULTIPLIER``, one weight decay for every parameter (as DETR), and gradient
clipping of the whole model's L2 norm when ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` is
``"full_model"`` (Detectron2's own "value"/"norm" per-parameter clipping otherwise)."""

import logging
from typing import Any, Callable, Dict, List, Optional, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "add_full_model_gradient_clipping"]

logger = logging.getLogger(__name__)

FULL_MODEL_CLIP_TYPE = "full_model"


def add_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step()`` first clips the gradients of all its
    parameters together to a total ``norm_type`` norm of at most ``max_norm``."""

    class FullModelGradientClippingOptimizer(optimizer_type):  # type: ignore[valid-type, misc]
        def step(self, closure: Optional[Callable[[], float]] = None) -> Any:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"{optimizer_type.__name__}FullModelClip"
    return FullModelGradientClippingOptimizer


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
        kwargs: Dict[str, Any] = {}
    elif name == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {name!r}")

    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL_CLIP_TYPE:
        optimizer_type = add_full_model_gradient_clipping(
            optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE
        )
    else:
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
