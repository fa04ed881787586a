"""Where and in which dtype the model runs under autocast, chosen once from the config.

``float32`` runs as written. Mixed precision runs under ``torch.autocast``: float16 on CUDA,
or bfloat16 (CUDA, or CPUs with native bfloat16 such as AVX512-BF16 / AMX). Matching and
losses run in float32 in every mode (the model turns autocast off around them).
``SOLVER.AMP.SCOPE`` (an :class:`AutocastScope`) says whether the transformer and heads run
under autocast too or in float32 after a mixed-precision backbone. The training's gradient
scaling is the engine's (:mod:`sam_detr.engine.precision`)."""

import contextlib
import logging
from typing import ContextManager, Optional, Union

import torch

from ..config import AMP_AUTO, AMP_DTYPE_CHOICES, check_choice
from ..utils.cpu import cpu_has_native_bfloat16

__all__ = ["AMP_SCOPES", "Autocast", "AutocastScope", "MixedAutocast", "resolve_amp_dtype"]

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class Autocast:
    """float32: no autocast."""

    dtype: Optional[torch.dtype] = None

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()

    def __str__(self) -> str:
        return "float32"


class MixedAutocast(Autocast):
    """Autocast to ``dtype`` on ``device_type``."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        self.device_type = device_type
        self.dtype = dtype

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        return f"mixed {str(self.dtype).replace('torch.', '')} on {self.device_type}"


def resolve_amp_dtype(
    enabled: bool, dtype: str, device: Union[str, torch.device]
) -> Optional[torch.dtype]:
    """The autocast dtype on ``device``, None for float32.

    Args:
        enabled: mixed precision on (``SOLVER.AMP.ENABLED`` / ``TEST.AMP.ENABLED``).
        dtype: ``SOLVER.AMP.DTYPE``: "auto" (float16 on CUDA, bfloat16 on CPUs with native
            bfloat16, float32 on other CPUs), "float16" or "bfloat16".
        device: where the model runs.
    """
    if not enabled:
        return None
    check_choice("SOLVER.AMP.DTYPE", dtype, AMP_DTYPE_CHOICES)
    device = torch.device(device)
    emulated = device.type == "cpu" and not cpu_has_native_bfloat16()
    if dtype == AMP_AUTO and emulated:
        logger.warning(
            "SOLVER.AMP.DTYPE auto: this CPU has no native bfloat16 (AVX512-BF16 / AMX), on "
            "which mixed precision is emulated and slower than float32: running in float32. "
            "Set SOLVER.AMP.DTYPE bfloat16 to use it anyway."
        )
        return None
    if dtype == AMP_AUTO:
        dtype = "float16" if device.type == "cuda" else "bfloat16"
    if device.type == "cpu" and dtype == "float16":
        raise ValueError(
            "SOLVER.AMP.DTYPE float16 is not supported on the CPU; use bfloat16 (or auto)."
        )
    if emulated:
        logger.warning(
            "This CPU has no native bfloat16 (AVX512-BF16 / AMX): mixed precision will be "
            "emulated and slower than float32."
        )
    return DTYPES[dtype]


def build_autocast(enabled: bool, dtype: str, device: Union[str, torch.device]) -> Autocast:
    """The autocast of inference (``TEST.AMP``) on ``device``."""
    resolved = resolve_amp_dtype(enabled, dtype, device)
    return Autocast() if resolved is None else MixedAutocast(torch.device(device).type, resolved)


class AutocastScope:
    """SOLVER.AMP.SCOPE "model": what follows the backbone runs under the caller's autocast, as
    the backbone does (matching and losses excepted)."""

    def region(self, device_type: str) -> ContextManager:
        """Context for the transformer and heads."""
        return contextlib.nullcontext()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A backbone output, as the transformer reads it."""
        return x


class BackboneOnlyScope(AutocastScope):
    """SOLVER.AMP.SCOPE "backbone": the transformer and heads run in float32, autocast off,
    on float32 backbone features."""

    def region(self, device_type: str) -> ContextManager:
        return torch.autocast(device_type, enabled=False)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


# Values of SOLVER.AMP.SCOPE.
AMP_SCOPES = {"model": AutocastScope, "backbone": BackboneOnlyScope}
