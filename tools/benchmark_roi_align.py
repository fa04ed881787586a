#!/usr/bin/env python
"""Time the Semantics Aligner's RoIAlign on the CPU: torchvision's kernel against the separable
matrix-product path of ``sam_detr.roi_align``, forward and forward + backward, on random boxes
like those of a decoder layer. Defaults: the demo config (4 images x 30 queries, 128 channels,
a 20x20 map)."""

import argparse
import time
from typing import Callable, Optional, Sequence

import torch
from sam_detr.roi_align import roi_align, torchvision_path

WARMUP_RUNS = 2
MS_PER_S = 1000.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--boxes", type=int, default=30, help="boxes (queries) per image")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--height", type=int, default=20)
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def mean_ms(fn: Callable[[], None], repeat: int) -> float:
    for _ in range(WARMUP_RUNS):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * MS_PER_S


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.height, args.width)
    features = torch.randn(shape, generator=generator, requires_grad=True)
    # Reference boxes as a decoder sees them: centres and sides uniform in [0, 1] of the map.
    centres = torch.rand(args.batch, args.boxes, 2, generator=generator)
    sides = torch.rand(args.batch, args.boxes, 2, generator=generator)
    scale = torch.tensor([args.width, args.height] * 2, dtype=torch.float32)
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=-1).clamp(0, 1) * scale
    paths = {
        "torchvision": lambda: torchvision_path(features, boxes, args.output_size),
        "separable": lambda: roi_align(features, boxes, args.output_size),
    }
    print(
        f"RoIAlign {args.batch}x{args.boxes} boxes on a {args.channels}x{args.height}x"
        f"{args.width} map, output {args.output_size}x{args.output_size}, "
        f"{torch.get_num_threads()} threads, mean of {args.repeat} runs"
    )
    for name, run in paths.items():
        with torch.no_grad():
            forward = mean_ms(run, args.repeat)
        both = mean_ms(lambda: run().square().sum().backward(), args.repeat)
        print(f"  {name:12s} forward {forward:7.2f} ms   forward + backward {both:7.2f} ms")


if __name__ == "__main__":
    main()
