#!/usr/bin/env python
"""Time SAM-DETR's training step or inference on random images, in Detectron2's manner.

    python tools/benchmark.py --config-file configs/sam_detr_R50.yaml --task train \\
        --batch-size 2 --image-size 800x1216 --iters 5 [--profile] [KEY VALUE ...]

``--task train`` times forward + loss + backward (what the model costs; the optimiser step
is the same for every implementation), ``--task inference`` the model's inference (top-k
detections) without gradients. ``--module NAME`` (a submodule's name in the model, e.g.
``transformer.decoder.1.cross_attn``) times that module alone instead, on the inputs and under
the autocast state it gets in the task's iteration: its forward, and with ``--task train`` the
backward of its outputs' mean squares to its inputs and parameters. The model is randomly
initialised (``MODEL.WEIGHTS ""``) and prepared as for training or evaluation (``--task
inference`` folds frozen BatchNorm into the convolutions, as evaluation does). Precision
follows the config: ``SOLVER.AMP.ENABLED True`` (train) or ``TEST.AMP.ENABLED True``
(inference). Prints the time per iteration (min /
median / max over ``--iters`` timed iterations after ``--warmup``), images per second, peak
memory (the process's peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and,
with ``--profile``, the operators that took the most time in one more iteration.
"""

import argparse
import resource
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from sam_detr.config import get_sam_detr_cfg
from sam_detr.deploy.batchnorm_folding import prepare_for_inference
from sam_detr.engine.precision import Precision, build_precision
from sam_detr.utils.denormals import apply_denormal_mode
from sam_detr.utils.tf32 import apply_tf32_mode

# Objects per random training image, and their side as a fraction of the image (min, max).
OBJECTS_PER_IMAGE = 8
OBJECT_SIDE = (0.05, 0.5)
PIXEL_MAX = 255.0
KIB_PER_MIB = 1024.0
BYTES_PER_MIB = 1024.0**2
PROFILE_ROWS = 15


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", choices=("train", "inference"), default="train")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", default="800x1216", help="HEIGHTxWIDTH of every image")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print the top operators")
    parser.add_argument(
        "--module", metavar="NAME", help="time this submodule alone (its name in the model)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser.parse_args(argv)


def random_batch(
    batch_size: int, height: int, width: int, num_classes: int, generator: torch.Generator
) -> List[Dict]:
    """Images with pixel values in [0, 255] and random ground-truth boxes."""
    batch = []
    for _ in range(batch_size):
        image = torch.rand(3, height, width, generator=generator) * PIXEL_MAX
        low, high = OBJECT_SIDE
        sides = low + (high - low) * torch.rand(OBJECTS_PER_IMAGE, 2, generator=generator)
        corners = torch.rand(OBJECTS_PER_IMAGE, 2, generator=generator) * (1 - sides)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sides], dim=1) * scale)
        instances.gt_classes = torch.randint(num_classes, (OBJECTS_PER_IMAGE,), generator=generator)
        batch.append({"image": image, "instances": instances})
    return batch


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_iteration(
    args: argparse.Namespace,
) -> Tuple[CfgNode, torch.nn.Module, Callable[[], None], Precision]:
    """The config, the model, a function running one iteration of ``args.task`` and the
    precision it runs in."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + list(args.opts)
    cfg = get_sam_detr_cfg(args.config_file, overrides)
    apply_denormal_mode(cfg)
    apply_tf32_mode(cfg)  # float32 as training runs it (ALLOW_TF32)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    generator = torch.Generator().manual_seed(args.seed)
    batch = random_batch(args.batch_size, height, width, cfg.MODEL.SAM_DETR.NUM_CLASSES, generator)
    if args.task == "inference":
        prepare_for_inference(model)
        inputs = [{"image": x["image"]} for x in batch]

        def run() -> None:
            with torch.no_grad():
                model(inputs)

        return cfg, model, run, model.inference_autocast
    model.train()
    precision = build_precision(
        cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, cfg.MODEL.DEVICE, scale=False
    )

    def run() -> None:
        model.zero_grad(set_to_none=True)
        with EventStorage(), precision.autocast():
            losses = model(batch)
        sum(losses.values()).backward()

    return cfg, model, run, precision


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in a module's output (tensors, tuples, lists, dicts)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def module_iteration(
    model: torch.nn.Module, name: str, run: Callable[[], None], train: bool
) -> Callable[[], None]:
    """One iteration of submodule ``name`` alone, on the inputs (detached; floating-point ones
    requiring gradients when ``train``) and the autocast state of its first call in ``run``."""
    try:
        module = model.get_submodule(name)
    except AttributeError as e:
        raise SystemExit(f"--module {name}: {e}; names are those of model.named_modules().")
    seen: Dict[str, Any] = {}

    def keep(_module, args, kwargs):
        if not seen:
            device_type = model.device.type
            seen.update(
                args=args,
                kwargs=kwargs,
                autocast=torch.is_autocast_enabled(device_type),
                dtype=torch.get_autocast_dtype(device_type),
            )

    hook = module.register_forward_pre_hook(keep, with_kwargs=True)
    run()
    hook.remove()
    if not seen:
        raise SystemExit(f"--module {name}: the module is not called in this task's iteration.")

    def prepare(value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        value = value.detach()
        return value.requires_grad_(train) if value.is_floating_point() else value

    args = [prepare(a) for a in seen["args"]]
    kwargs = {k: prepare(v) for k, v in seen["kwargs"].items()}
    autocast = torch.autocast(model.device.type, dtype=seen["dtype"], enabled=seen["autocast"])

    def run_module() -> None:
        with autocast, torch.set_grad_enabled(train):
            outputs = module(*args, **kwargs)
        if train:
            losses = [t.float().square().mean() for t in _tensors(outputs) if t.requires_grad]
            if not losses:
                raise SystemExit(
                    f"--module {name}: no output requires gradients (nothing to "
                    "backpropagate); use --task inference."
                )
            sum(losses).backward()

    return run_module


def time_iterations(
    run: Callable[[], None], device: torch.device, args: argparse.Namespace
) -> List[float]:
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.iters):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    cfg, model, run, precision = build_iteration(args)
    device = model.device
    if args.module:
        run = module_iteration(model, args.module, run, train=args.task == "train")
    times = time_iterations(run, device, args)
    median = statistics.median(times)
    result = {
        "min_s": min(times),
        "median_s": median,
        "max_s": max(times),
        "images_per_s": args.batch_size / median,
        "peak_memory_mib": peak_memory_mib(device),
    }
    print(
        f"{args.config_file} {args.task}{f' of {args.module} alone' if args.module else ''}, "
        f"batch {args.batch_size} x {args.image_size}, {precision}, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"  per iteration: min {result['min_s']:.3f} s, median {median:.3f} s, max "
        f"{result['max_s']:.3f} s over {args.iters} iterations ({args.warmup} warm-up)"
    )
    print(
        f"  {result['images_per_s']:.2f} images/s, peak memory "
        f"{result['peak_memory_mib']:.0f} MiB ({'allocated' if device.type == 'cuda' else 'RSS'})"
    )
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            run()
            synchronize(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS))
    return result


if __name__ == "__main__":
    main()
