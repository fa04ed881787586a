#!/usr/bin/env python
"""The Python parts of ``tools/gpu_check.sh``: timings of the paper configs at 800x1216
(``benchmarks``) and the attention kernels PyTorch picks for the encoder and decoder
(``sdpa``), on unpadded and padded batches, in float32 and AMP (float16 on CUDA).

``sdpa`` reads the kernel from the profiler's operator names
(``aten::_scaled_dot_product_flash_attention``, ``..._efficient_attention``,
``..._cudnn_attention``, ``..._attention_math``), so it runs on a CPU as well (the tests do).
``benchmarks`` needs a CUDA GPU. Nothing is downloaded: the models start from random weights.

    python tools/gpu_check.py benchmarks
    python tools/gpu_check.py sdpa [--config-file FILE] [--image-size 800x1216] [--device cpu]
"""

import argparse
import collections
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "projects", "SAMDETR"))

import benchmark  # noqa: E402  (tools/benchmark.py)
from detectron2.modeling import build_model  # noqa: E402
from sam_detr.config import get_sam_detr_cfg  # noqa: E402
from sam_detr.utils.tf32 import apply_tf32_mode  # noqa: E402

# The configs timed: single-scale, dilated (4x the encoder's sequence) and multi-scale SMCA.
BENCHMARK_CONFIGS = ("sam_detr_R50.yaml", "sam_detr_R50_DC5.yaml", "sam_detr_R50_MS_SMCA.yaml")
IMAGE_SIZE = "800x1216"
# Per run: untimed then timed iterations (the whole check stays under 5 minutes on one GPU).
WARMUP, ITERS = 2, 5
# The AMP switch of each task.
AMP_KEYS = {"train": "SOLVER.AMP.ENABLED", "inference": "TEST.AMP.ENABLED"}
# Operator name (prefix) of each fused-attention implementation of PyTorch.
SDPA_BACKENDS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (other device)",
    "aten::_scaled_dot_product_attention_math": "math (unfused)",
}


def benchmark_runs(configs: Sequence[str] = BENCHMARK_CONFIGS) -> List[List[str]]:
    """``tools/benchmark.py`` arguments of every (config, task, precision) timed."""
    runs = []
    for config in configs:
        for task, amp_key in AMP_KEYS.items():
            for amp in (False, True):
                runs.append(
                    [
                        "--config-file", os.path.join(REPO, "configs", config),
                        "--task", task,
                        "--image-size", IMAGE_SIZE,
                        "--warmup", str(WARMUP),
                        "--iters", str(ITERS),
                        amp_key, str(amp),
                    ]
                )  # fmt: skip
    return runs


def run_benchmarks() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py benchmarks: needs a CUDA GPU (none is available).")
    for argv in benchmark_runs():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        benchmark.main(argv)  # prints the timings and torch.cuda.max_memory_allocated


def sdpa_backends(operator_names: Sequence[str]) -> Dict[str, int]:
    """Calls of each attention implementation among profiler operator names."""
    found: Dict[str, int] = collections.Counter()
    for name in operator_names:
        for prefix, backend in SDPA_BACKENDS.items():
            if name.startswith(prefix):
                found[backend] += 1
    return dict(found)


def attention_kernels(
    config_file: str, image_size: str, device: str, padded: bool, amp: bool
) -> Dict[str, int]:
    """The attention implementations of one inference of two random images of
    ``image_size`` (the second one 32 pixels shorter when ``padded``)."""
    cfg = get_sam_detr_cfg(
        config_file,
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "TEST.AMP.ENABLED", amp],
    )
    apply_tf32_mode(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    height, width = (int(v) for v in image_size.lower().split("x"))
    sizes = [(height, width), (height - 32 if padded else height, width)]
    batch = [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8)} for h, w in sizes]
    with torch.no_grad():
        model(batch)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(batch)
    return sdpa_backends([event.name for event in prof.events()])


def report_attention_kernels(config_file: str, image_size: str, device: str) -> None:
    print(
        f"Attention implementations of {os.path.basename(config_file)} at {image_size} on {device}"
    )
    for amp in (False, True):
        for padded in (False, True):
            found = attention_kernels(config_file, image_size, device, padded, amp)
            print(
                f"  {'AMP' if amp else 'float32':8s} "
                f"{'padded' if padded else 'unpadded':8s}: "
                + (", ".join(f"{k} x{v}" for k, v in sorted(found.items())) or "none")
            )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("benchmarks", "sdpa"))
    parser.add_argument(
        "--config-file", default=os.path.join(REPO, "configs", BENCHMARK_CONFIGS[0])
    )
    parser.add_argument("--image-size", default=IMAGE_SIZE)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.what == "benchmarks":
        run_benchmarks()
    else:
        report_attention_kernels(args.config_file, args.image_size, args.device)


if __name__ == "__main__":
    main()
