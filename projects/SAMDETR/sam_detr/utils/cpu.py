"""Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX on x86), which decides what
``SOLVER.AMP.DTYPE auto`` means on a CPU and what ``python -m sam_detr.environment`` reports."""

import platform

import torch

__all__ = ["cpu_has_native_bfloat16"]

# x86 CPUs: what platform.machine() says, PyTorch's checks of the bfloat16 instructions, and
# the same as Linux's CPU flags (for a PyTorch without those checks).
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
X86_BFLOAT16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
X86_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


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
