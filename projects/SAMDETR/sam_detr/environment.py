"""Facts about the installed software stack: torch, torchvision, Detectron2 and where it came
from, whether Detectron2's compiled C++/CUDA ops are present, whether CUDA is available.

Everything is derived from what is installed now (distribution metadata, PEP 610
``direct_url.json``, the marker constant of the placeholder ``detectron2._C`` written by
``tools/install_detectron2.py``), never from a stored record. The trainer uses
:func:`has_compiled_ops` to choose ``COCOEvaluator(use_fast_impl=...)``; ``make env`` prints
:func:`format_summary` through ``python -m sam_detr.environment`` (``--json`` for a dict).
This module imports neither torch nor Detectron2 at import time.
"""

import argparse
import importlib
import importlib.util
import json
import logging
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

logger = logging.getLogger(__name__)

ORIGIN_UPSTREAM = "upstream git"
ORIGIN_FALLBACK = "pb1-detectron2 fallback (no compiled ops)"
ORIGIN_PREINSTALLED = "preinstalled"
ORIGIN_MISSING = "not installed"

UPSTREAM_DISTRIBUTION = "detectron2"
UPSTREAM_REPOSITORY = "github.com/facebookresearch/detectron2"
FALLBACK_DISTRIBUTION = "pb1-detectron2"
# Constant defined (True) by the placeholder ``detectron2._C``; the same name as
# PLACEHOLDER_MARKER in tools/install_detectron2.py, which writes the placeholder.
PLACEHOLDER_MARKER = "SAM_DETR_PLACEHOLDER"

SummaryValue = Union[str, bool, None]
# Detectron2 v0.6 decorates functions with torch.jit.script, which newer torch deprecates;
# the warning says nothing about the environment, so the command line hides it.
JIT_DEPRECATION_MESSAGE = r".*torch\.jit\.script.* is deprecated"


def _detectron2_distribution() -> Optional[metadata.Distribution]:
    """The installed distribution that provides the ``detectron2`` package that imports, if
    any (None when a source tree ahead on ``sys.path`` shadows the installed one)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or spec.origin is None:
        return None
    imported = Path(spec.origin).resolve()
    for name in metadata.packages_distributions().get("detectron2", []):
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Path(distribution.locate_file("detectron2/__init__.py")).resolve() == imported:
            return distribution
    return None


def _direct_url(distribution: metadata.Distribution) -> Dict:
    """The PEP 610 ``direct_url.json`` of ``distribution`` ({} for an index install)."""
    text = distribution.read_text("direct_url.json")
    return json.loads(text) if text else {}


def _is_placeholder(module: object) -> bool:
    """Whether ``module`` is the placeholder ``detectron2._C`` (its ``__getattr__`` answers
    every name, so the marker is compared with ``is True``)."""
    return getattr(module, PLACEHOLDER_MARKER, False) is True


def has_compiled_ops() -> bool:
    """Whether ``detectron2._C`` holds Detectron2's real compiled ops (not the placeholder)."""
    try:
        compiled = importlib.import_module("detectron2._C")
    except ImportError as error:  # not installed, not built, or built for another torch
        logger.debug("detectron2._C does not import: %s", error)
        return False
    return not _is_placeholder(compiled)


def detectron2_origin() -> str:
    """Where the installed Detectron2 came from: one of the ``ORIGIN_*`` strings."""
    distribution = _detectron2_distribution()
    if distribution is None:
        if importlib.util.find_spec("detectron2") is None:
            return ORIGIN_MISSING
        return ORIGIN_PREINSTALLED  # importable from a source tree on sys.path
    url = _direct_url(distribution)
    is_git = url.get("vcs_info", {}).get("vcs") == "git"
    if is_git and UPSTREAM_REPOSITORY in url.get("url", ""):
        return ORIGIN_UPSTREAM
    if distribution.metadata["Name"] == FALLBACK_DISTRIBUTION and not has_compiled_ops():
        return ORIGIN_FALLBACK
    return ORIGIN_PREINSTALLED


def _version(module_name: str) -> Optional[str]:
    """``module.__version__``, or None when the module does not import."""
    try:
        return str(importlib.import_module(module_name).__version__)
    except ImportError:
        return None


def summary() -> Dict[str, SummaryValue]:
    """The environment facts, keyed by name (versions are None where a package is missing)."""
    facts: Dict[str, SummaryValue] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "detectron2": _version("detectron2"),
        "detectron2_origin": detectron2_origin(),
        "detectron2_compiled_ops": has_compiled_ops(),
        "torch_cuda_build": None,
        "cuda_available": False,
        "cpu_native_bfloat16": False,
    }
    if facts["torch"] is not None:
        import torch

        from .utils.cpu import cpu_has_native_bfloat16

        facts["torch_cuda_build"] = torch.version.cuda
        facts["cuda_available"] = torch.cuda.is_available()
        facts["cpu_native_bfloat16"] = cpu_has_native_bfloat16()
    return facts


def _yes_no(flag: SummaryValue) -> str:
    return "yes" if flag else "no"


def format_summary(facts: Optional[Dict[str, SummaryValue]] = None) -> str:
    """Human-readable lines of :func:`summary` (computed now unless ``facts`` is given)."""
    facts = summary() if facts is None else facts
    missing = "not installed"
    cuda_build = facts["torch_cuda_build"] or "CPU-only build"
    rows = [
        ("python", facts["python"]),
        ("torch", f"{facts['torch'] or missing} (CUDA build: {cuda_build})"),
        ("torchvision", facts["torchvision"] or missing),
        ("detectron2", f"{facts['detectron2'] or missing} ({facts['detectron2_origin']})"),
        ("compiled ops", _yes_no(facts["detectron2_compiled_ops"])),
        ("CUDA available", _yes_no(facts["cuda_available"])),
        (
            "CPU bfloat16",
            (
                "native (SOLVER.AMP.DTYPE auto: bfloat16 on the CPU)"
                if facts["cpu_native_bfloat16"]
                else "not native (SOLVER.AMP.DTYPE auto: float32 on the CPU)"
            ),
        ),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m sam_detr.environment [--json]``: print the summary to stdout."""
    parser = argparse.ArgumentParser(description="Print the SAM-DETR environment summary.")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", JIT_DEPRECATION_MESSAGE, FutureWarning)
        facts = summary()
    print(json.dumps(facts, indent=2) if args.json else format_summary(facts))


if __name__ == "__main__":
    main()
