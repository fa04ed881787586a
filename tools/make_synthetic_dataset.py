#!/usr/bin/env python
"""Generate the built-in synthetic detection dataset (and optionally a preview grid).

Example::

    python tools/make_synthetic_dataset.py --preview preview.png
    python tools/make_synthetic_dataset.py --out /tmp/ds --num-train 100 --num-val 20

Without ``--out`` the dataset goes to ``$SAM_DETR_DATASETS`` or ``~/.cache/sam_detr``, where
training finds it. Other sizes than the defaults make a different dataset (another cache folder)
that the registered ``sam_detr_synthetic_*`` names do not point to.
"""

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from collections import Counter

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

from sam_detr.data import DEFAULT_SPEC, generate, render_preview

PREVIEW_IMAGES = 12
PREVIEW_COLUMNS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="cache root (default: the training cache)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPEC.num_train)
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPEC.num_val)
    parser.add_argument("--image-size", type=int, default=DEFAULT_SPEC.image_size)
    parser.add_argument("--seed", type=int, default=DEFAULT_SPEC.seed)
    parser.add_argument("--preview", default=None, help="also write a grid of GT boxes here")
    parser.add_argument("--preview-split", default="train", choices=["train", "val"])
    parser.add_argument("--preview-count", type=int, default=PREVIEW_IMAGES)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = dataclasses.replace(
        DEFAULT_SPEC,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
    )
    files = generate(spec, args.out)
    for split, split_files in files.items():
        with open(split_files.json_file) as f:
            coco = json.load(f)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        per_class = Counter(names[a["category_id"]] for a in coco["annotations"])
        print(
            f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes "
            f"{dict(sorted(per_class.items()))}\n  json:   {split_files.json_file}\n"
            f"  images: {split_files.image_root}"
        )
    if args.preview:
        indices = range(min(args.preview_count, spec.num_images(args.preview_split)))
        path = render_preview(spec, args.preview, args.preview_split, indices, PREVIEW_COLUMNS)
        print(f"preview: {path}")


if __name__ == "__main__":
    main()
