#!/usr/bin/env python
"""Convert an official SAM-DETR checkpoint (github.com/ZhangGongjie/SAM-DETR) into a
Detectron2 checkpoint of this project, loadable through ``MODEL.WEIGHTS``.

    python tools/convert_official_checkpoint.py --input checkpoint.pth --output sam_detr.pth

The result is checked against the model built from the matching config before anything
is written; on any mismatch nothing is written and the exit status is 1."""

import argparse
import logging
import sys
import warnings
from pathlib import Path

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

from detectron2.modeling import build_model
from sam_detr.checkpoint.atomic import save_atomically
from sam_detr.checkpoint.official import (
    NotAnOfficialCheckpoint,
    check_against_model,
    convert_state_dict,
    detect_variant,
    load_official,
)
from sam_detr.config import get_sam_detr_cfg

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def convert(args: argparse.Namespace) -> str:
    """Convert ``args.input`` into ``args.output``; returns the matching config's path."""
    ckpt = load_official(args.input, trust_pickle=args.trust_pickle)
    variant = detect_variant(ckpt)
    state, unknown = convert_state_dict(
        ckpt["model"], coco_classes=not args.keep_classes, multiscale=variant.multiscale
    )
    if unknown:
        raise NotAnOfficialCheckpoint(
            f"unexpected keys (no SAM-DETR counterpart): {', '.join(unknown[:8])}"
            + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        )
    if "class_embed.0.weight" not in state:
        raise NotAnOfficialCheckpoint("missing keys: class_embed.0.weight (no class heads)")
    config = CONFIG_DIR / variant.config_name
    num_classes = state["class_embed.0.weight"].shape[0]
    overrides = variant.override_list() + ["MODEL.SAM_DETR.NUM_CLASSES", str(num_classes)]
    cfg = get_sam_detr_cfg(str(config), overrides + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    check_against_model(state, build_model(cfg).state_dict())

    payload = {
        "model": state,
        "__author__": "converted from the official SAM-DETR implementation",
        "matching_heuristics": False,
    }
    args.output.resolve().parent.mkdir(parents=True, exist_ok=True)
    save_atomically(payload, str(args.output))
    try:
        shown = config.relative_to(Path.cwd())
    except ValueError:
        shown = config
    print(f"Wrote {args.output} ({len(state)} tensors, {num_classes} classes).")
    if variant.dc5 is None and not variant.multiscale:
        print(
            "The checkpoint has no training arguments: R50 and R50-DC5 share weights; "
            "pick the config yourself (the DC5 one if it was trained with --dilation)."
        )
    print(f"Matching config: {shown}")
    extra = " ".join(overrides)
    print(
        f"Evaluate: python train_net.py --config-file {shown} --eval-only "
        f"MODEL.WEIGHTS {args.output} {extra}"
    )
    return str(config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="official checkpoint (.pth)")
    parser.add_argument("--output", type=Path, required=True, help="converted checkpoint")
    parser.add_argument(
        "--keep-classes",
        action="store_true",
        help="keep the class logits as they are (non-COCO models); default: map COCO's 91 "
        "category ids to Detectron2's 80 contiguous classes",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the input (only for files you trust)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.output.resolve() == args.input.resolve():
        print(f"error: --output must differ from --input ({args.input})", file=sys.stderr)
        return 1
    try:
        convert(args)
    except (NotAnOfficialCheckpoint, FileNotFoundError) as e:
        print(f"error: {args.input}: not converted: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
