"""Preparing a loaded model for inference: the one explicit step after the weights are loaded.

Frozen BatchNorm after a convolution is an affine map per channel, so at inference it folds
into the convolution's weight and bias: one pass over every backbone activation less, and no
float32 round trip between convolutions under bfloat16 autocast (FrozenBN's float32 buffers
promote its output to float32, which the next convolution casts back). The folded weights
live in non-persistent buffers: the state_dict keeps its keys and values, so a prepared model
still saves and loads like any other. Only for inference: training needs the original
parameterisation (the gradients of folded weights differ).
"""

import logging

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

__all__ = ["FoldedConv2d", "fold_frozen_batchnorm", "prepare_for_inference"]

logger = logging.getLogger(__name__)


# Why a folded model refuses to train or load weights.
FOLDED_IS_FINAL = (
    "frozen BatchNorm is folded into the convolutions for inference (prepare_for_inference), "
    "so new weights or training would not reach the folded copies: load the weights and train "
    "before preparing the model, or build a new one."
)


class FoldedConv2d(Conv2d):
    """Detectron2's ``Conv2d`` whose frozen BatchNorm is folded into ``folded_weight`` and
    ``folded_bias`` (non-persistent buffers); its own parameters and norm stay, unused. It
    refuses to load a state_dict or to enter training mode (the folded copies would be stale)."""

    def train(self, mode: bool = True) -> "FoldedConv2d":
        if mode:
            raise RuntimeError(f"Cannot train this model: {FOLDED_IS_FINAL}")
        return super().train(False)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        raise RuntimeError(f"Cannot load weights into this model: {FOLDED_IS_FINAL}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(
            x,
            self.folded_weight,
            self.folded_bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return self.activation(x) if self.activation is not None else x


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that follows a Detectron2 ``Conv2d`` into it, in
    place. Returns the number of convolutions folded."""
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if type(module) is not Conv2d or not isinstance(norm, FrozenBatchNorm2d):
            continue
        with torch.no_grad():
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
            if module.bias is not None:
                shift = shift + module.bias * scale
            weight = module.weight * scale.view(-1, *([1] * (module.weight.dim() - 1)))
        module.register_buffer("folded_weight", weight, persistent=False)  # keeps its format
        module.register_buffer("folded_bias", shift, persistent=False)
        module.__class__ = FoldedConv2d
        folded += 1
    return folded


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and fold its frozen BatchNorm; call after loading weights."""
    model.eval()
    count = fold_frozen_batchnorm(model)
    if count:
        logger.info("Folded frozen BatchNorm into %d convolutions for inference.", count)
    return model
