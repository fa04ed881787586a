#!/usr/bin/env python
"""Parameters and GFLOPs (fvcore's convention: one multiply-add = one flop) of SAM-DETR
configs on one image of a fixed size, plus the CPU time of that forward pass. The bilinear
sampling of multi-scale deformable attention and of the salient points (``grid_sample``)
counts 4 multiply-adds per sampled value and is also shown on its own.

    python tools/model_stats.py --height 800 --width 1216 configs/sam_detr_R50.yaml ...
"""

import argparse
import logging
import sys
import time
import warnings
from typing import Any, List

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from sam_detr.config import get_sam_detr_cfg
from torch import nn


def sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of ``softmax(q k^T) v``: ``(..., L, E) x (..., S, E) x (..., S, Ev)``."""
    q, k, v = (i.type().sizes() for i in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


# Multiply-adds per value bilinearly sampled by grid_sample (one per corner).
BILINEAR_CORNERS = 4


def grid_sample_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of bilinear ``grid_sample``: 4 per output element ``(N, C, Ho, Wo)``."""
    count = BILINEAR_CORNERS
    for d in outputs[0].type().sizes():
        count *= d
    return count


class RawOutputs(nn.Module):
    """Tensor-in, tensors-out view of a SAM-DETR model, so that it can be traced."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model.inference([{"image": image}], do_postprocess=False)
        return out["pred_logits"], out["pred_boxes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    image = torch.rand(3, args.height, args.width) * 255
    print(
        f"| config | parameters | GFLOPs ({args.height}x{args.width}) | of which grid_sample "
        "| CPU forward (s) |"
    )
    print("|---|---|---|---|---|")
    for path in args.configs:
        cfg = get_sam_detr_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
        model = build_model(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        inputs = [{"image": image}]
        with torch.no_grad():
            start = time.perf_counter()
            model(inputs)
            seconds = time.perf_counter() - start
            flops = FlopCountAnalysis(RawOutputs(model), (image,))
            flops.set_op_handle("aten::scaled_dot_product_attention", sdpa_flops)
            flops.set_op_handle("aten::grid_sampler", grid_sample_flops)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            gflops = flops.total() / 1e9
            sampling = flops.by_operator().get("grid_sampler", 0) / 1e9
        print(
            f"| {path} | {params:,} | {gflops:.1f} | {sampling:.1f} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
