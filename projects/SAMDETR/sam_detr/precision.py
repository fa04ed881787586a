"""Numeric precision of training and inference, chosen once from the config.

``float32`` runs as written. Mixed precision runs the model under ``torch.autocast``: float16
with gradient scaling on CUDA (steps whose scaled gradients overflow are skipped by the
scaler, by design, and lower the scale), or bfloat16 (CUDA, or CPUs with native bfloat16
such as AVX512-BF16 / AMX), which needs no scaling. Matching and losses run in float32 in
every mode (the model turns autocast off around them). ``SOLVER.AMP.SCOPE`` (an
:class:`AutocastScope`, chosen when the model is built) says whether the transformer and heads
run under autocast too or in float32 after a mixed-precision backbone.
"""

import contextlib
import logging
import platform
from typing import Any, ContextManager, Dict, Optional, Union

import torch

__all__ = [
    "AMP_SCOPES",
    "AutocastScope",
    "Precision",
    "MixedPrecision",
    "ScaledMixedPrecision",
    "build_precision",
    "check_amp_dtype",
    "check_amp_scope",
]

logger = logging.getLogger(__name__)

AUTO = "auto"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Values of SOLVER.AMP.DTYPE.
AMP_DTYPES = (AUTO, *DTYPES)
# x86 CPUs: what platform.machine() says, PyTorch's checks of the bfloat16 instructions, and
# the same as Linux's CPU flags (for a PyTorch without those checks).
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
X86_BFLOAT16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
X86_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


class Precision:
    """float32: no autocast, plain backward and optimiser step."""

    dtype: Optional[torch.dtype] = None
    # Whether steps with non-finite gradients are expected and handled (gradient scaling).
    skips_overflow = False

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate ``loss``; afterwards the parameters' ``.grad`` are unscaled."""
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def skip(self) -> None:
        """Called instead of :meth:`step` for a step that does not update the weights."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def __str__(self) -> str:
        return "float32"


class MixedPrecision(Precision):
    """Autocast to ``dtype`` on ``device_type``; no gradient scaling (bfloat16)."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        self.device_type = device_type
        self.dtype = dtype

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        return f"mixed {str(self.dtype).replace('torch.', '')} on {self.device_type}"


class ScaledMixedPrecision(MixedPrecision):
    """float16 autocast with a ``GradScaler``."""

    skips_overflow = True

    def __init__(self, device_type: str) -> None:
        super().__init__(device_type, torch.float16)
        self.scaler = torch.amp.GradScaler(device_type)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)  # skipped by the scaler if the gradients overflowed
        self.scaler.update()

    def skip(self) -> None:
        self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def __str__(self) -> str:
        return super().__str__() + " with gradient scaling"


def _x86_has_bfloat16_instructions() -> bool:
    """AVX512-BF16 or AMX on this x86 CPU: PyTorch's answer, else the kernel's CPU flags."""
    checks = [getattr(torch.cpu, name, None) for name in X86_BFLOAT16_CHECKS]
    if all(checks):
        return any(check() for check in checks)
    try:
        with open(CPUINFO) as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return True  # unknown: trust oneDNN
    return any(flag in flags for flag in X86_BFLOAT16_FLAGS)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively. oneDNN's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on x86 CPUs that have AVX512
    but neither AVX512-BF16 nor AMX, where oneDNN emulates bfloat16: the demo's step took 0.51 s
    there against 0.34 s in float32. So x86 CPUs need those instructions as well."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if platform.machine().lower() not in X86_MACHINES:
        return True
    return _x86_has_bfloat16_instructions()


def check_amp_dtype(dtype: str) -> None:
    """Raise ``ValueError`` unless ``dtype`` is a value of ``SOLVER.AMP.DTYPE``."""
    if dtype not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE must be one of {AMP_DTYPES}, got {dtype!r}.")


def build_precision(
    enabled: bool, dtype: str, device: Union[str, torch.device], scale: bool
) -> Precision:
    """The precision for ``device``.

    Args:
        enabled: mixed precision on (``SOLVER.AMP.ENABLED`` / ``TEST.AMP.ENABLED``).
        dtype: ``SOLVER.AMP.DTYPE``: "auto" (float16 on CUDA, bfloat16 on CPUs with native
            bfloat16, float32 on other CPUs), "float16" or "bfloat16".
        device: where the model runs.
        scale: use gradient scaling with float16 (training).
    """
    if not enabled:
        return Precision()
    device = torch.device(device)
    check_amp_dtype(dtype)
    emulated = device.type == "cpu" and not cpu_has_native_bfloat16()
    if dtype == AUTO and emulated:
        logger.warning(
            "SOLVER.AMP.DTYPE auto: this CPU has no native bfloat16 (AVX512-BF16 / AMX), on "
            "which mixed precision is emulated and slower than float32: running in float32. "
            "Set SOLVER.AMP.DTYPE bfloat16 to use it anyway."
        )
        return Precision()
    if dtype == AUTO:
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
    if dtype == "float16" and scale:
        return ScaledMixedPrecision(device.type)
    return MixedPrecision(device.type, DTYPES[dtype])


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


def check_amp_scope(scope: str) -> None:
    """Raise ``ValueError`` unless ``scope`` is a value of ``SOLVER.AMP.SCOPE``."""
    if scope not in AMP_SCOPES:
        raise ValueError(f"SOLVER.AMP.SCOPE must be one of {tuple(AMP_SCOPES)}, got {scope!r}.")
