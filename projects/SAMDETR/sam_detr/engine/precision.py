"""Numeric precision of training, chosen once from the config: the model's autocast
(:mod:`sam_detr.modeling.autocast`) plus how the loss is backpropagated and the optimiser
stepped. float16 on CUDA uses gradient scaling (steps whose scaled gradients overflow are
skipped by the scaler, by design, lower the scale and are counted in ``overflow_skips``);
bfloat16 and float32 need none."""

from typing import Any, Dict, Optional, Union

import torch

from ..modeling.autocast import Autocast, MixedAutocast, resolve_amp_dtype

__all__ = ["MixedPrecision", "Precision", "ScaledMixedPrecision", "build_precision"]


class Precision(Autocast):
    """float32: no autocast, plain backward and optimiser step."""

    # Whether steps with non-finite gradients are expected and handled (gradient scaling).
    skips_overflow = False
    # Steps so skipped (float16 overflows), since the start of training.
    overflow_skips = 0

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate ``loss``; afterwards the parameters' ``.grad`` are unscaled."""
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, grads_finite: bool = True) -> None:
        """Update the weights (``grads_finite``: whether the gradients are, on every process;
        only gradient scaling steps with non-finite ones, skipping the update)."""
        optimizer.step()

    def loss_scale(self) -> Optional[torch.Tensor]:
        """The 0-dim loss scale of the step on the device, unread; None without scaling."""
        return None

    def skip(self) -> None:
        """Called instead of :meth:`step` for a step that does not update the weights."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class MixedPrecision(MixedAutocast, Precision):
    """Autocast to ``dtype`` on ``device_type``; no gradient scaling (bfloat16)."""


class ScaledMixedPrecision(MixedPrecision):
    """float16 autocast with a ``GradScaler``."""

    skips_overflow = True

    def __init__(self, device_type: str) -> None:
        super().__init__(device_type, torch.float16)
        self.scaler = torch.amp.GradScaler(device_type)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, grads_finite: bool = True) -> None:
        self.scaler.step(optimizer)  # skipped by the scaler if the gradients overflowed
        self.scaler.update()
        if not grads_finite:
            self.overflow_skips += 1

    def loss_scale(self) -> Optional[torch.Tensor]:
        # get_scale() would read it on the host (a wait on the device); this does not.
        return self.scaler._get_scale_async()

    def skip(self) -> None:
        self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return {"grad_scaler": self.scaler.state_dict(), "overflow_skips": self.overflow_skips}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.overflow_skips = state.get("overflow_skips", 0)  # absent in earlier checkpoints

    def __str__(self) -> str:
        return super().__str__() + " with gradient scaling"


def build_precision(
    enabled: bool, dtype: str, device: Union[str, torch.device], scale: bool
) -> Precision:
    """The training precision on ``device`` (arguments of
    :func:`~sam_detr.modeling.autocast.resolve_amp_dtype`); ``scale``: gradient scaling with
    float16."""
    resolved = resolve_amp_dtype(enabled, dtype, device)
    if resolved is None:
        return Precision()
    device_type = torch.device(device).type
    if resolved == torch.float16 and scale:
        return ScaledMixedPrecision(device_type)
    return MixedPrecision(device_type, resolved)
