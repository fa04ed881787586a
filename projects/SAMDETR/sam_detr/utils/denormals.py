"""Flushing float32 subnormal numbers to zero on the CPU (FTZ and DAZ).

x86 CPUs compute with subnormal operands or results (magnitudes below 1.2e-38) through a
microcode assist that costs about a hundred normal operations. A trained SAM-DETR produces
many of them: SMCA's Gaussian-like weights make the decoder's cross-attention peaked, so
after a few hundred iterations of the demo about 6% of its attention probabilities (and the
gradients computed from them) are subnormal, and the matrix products that read them ran 4x
slower: the demo's iterations went from 0.2 to 0.44 s over its first 400 (README, "Subnormal
numbers on CPUs"). Flushing them to zero changes no value above 1.2e-38. GPUs process them
at full speed.

The mode is a property of each thread (MXCSR on x86), which a new thread copies from the
thread that creates it, and ``torch.set_flush_denormal`` sets it on the calling thread only.
So it reaches PyTorch's intra-op threads only when it is set before they start, i.e. before
the process's first parallel tensor operation: the entry points (``train_net.py``, the export
and benchmark tools, ``SAMDETRPredictor``) call :func:`apply_denormal_mode` before they build
the model, and :func:`flush_denormals` checks every thread and warns when some were started
earlier.
"""

import logging

import torch
from detectron2.config import CfgNode
from detectron2.utils.logger import log_first_n

__all__ = ["all_threads_flush_denormals", "apply_denormal_mode", "flush_denormals"]

# The probe multiplies two normal float32 numbers whose product (1e-40) is subnormal: it is
# zero only where the thread computing it flushes.
_PROBE_VALUE = 1e-30
_PROBE_FACTOR = 1e-10
# Elements per thread in the probe: a few times PyTorch's grain size for element-wise
# operations (32,768), so that every intra-op thread computes a part of it.
_PROBE_ELEMENTS_PER_THREAD = 1 << 17


def all_threads_flush_denormals() -> bool:
    """Whether every intra-op thread of PyTorch flushes subnormal float32 results to zero."""
    n = _PROBE_ELEMENTS_PER_THREAD * torch.get_num_threads()
    product = torch.full((n,), _PROBE_VALUE, dtype=torch.float32) * _PROBE_FACTOR
    return not bool(product.any())


def flush_denormals() -> bool:
    """Flush float32 subnormals to zero on the calling thread and, when no parallel operation
    has run yet, on every intra-op thread PyTorch starts later. Returns whether every thread
    flushes; logs a warning when they do not."""
    if not torch.set_flush_denormal(True):
        log_first_n(
            logging.WARNING,
            "This CPU cannot flush subnormal float32 numbers to zero; they stay slow.",
            name=__name__,
        )
        return False
    if all_threads_flush_denormals():
        return True
    log_first_n(
        logging.WARNING,
        "Subnormal float32 numbers are flushed to zero on the main thread but not on all of "
        f"PyTorch's {torch.get_num_threads()} intra-op threads, which were started before (a "
        "parallel tensor operation ran first). Call "
        "sam_detr.utils.denormals.flush_denormals() at the start of the program: CPU training "
        "with SMCA can run 2x slower without it.",
        name=__name__,
    )
    return False


def apply_denormal_mode(cfg: CfgNode) -> None:
    """Flush subnormals (:func:`flush_denormals`) when ``cfg.FLUSH_DENORMALS`` is set."""
    if cfg.FLUSH_DENORMALS:
        flush_denormals()
