#!/usr/bin/env python
"""Draw a trained model's detections on the first images of a dataset. Runs
``SAMDETRPredictor`` (Detectron2's ``DefaultPredictor`` with input checks and strict weight
loading) with a train_net.py config and ``MODEL.WEIGHTS`` on the first ``--num-images`` images
of ``DATASETS.TEST[0]`` and writes one PNG per image (predictions scoring at least
``--min-score``, drawn with Detectron2's ``Visualizer``) into ``--output``.

Example: python tools/visualize_predictions.py --config-file output/demo/config.yaml \
    --output output/demo/predictions MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
import logging
import os
from typing import List

import cv2
import sam_detr.data  # noqa: F401  (registers the built-in synthetic datasets)
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from sam_detr import SAMDETRPredictor, add_sam_detr_config

logger = logging.getLogger("sam_detr.visualize_predictions")

# Detections drawn by default: the demo model's confident ones.
DEFAULT_MIN_SCORE = 0.5
DEFAULT_NUM_IMAGES = 8
# Upscaling of the small synthetic images so that labels stay readable.
DRAW_SCALE = 3.0


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES)
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> List[str]:
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    dataset = cfg.DATASETS.TEST[0]
    predictor = SAMDETRPredictor(cfg)
    metadata = MetadataCatalog.get(dataset)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(dataset)[: args.num_images]:
        image = cv2.imread(record["file_name"])
        if image is None:
            raise FileNotFoundError(f"Cannot read image '{record['file_name']}'")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= args.min_score]
        rgb = image[:, :, ::-1]
        drawn = Visualizer(rgb, metadata, scale=DRAW_SCALE).draw_instance_predictions(instances)
        path = os.path.join(args.output, os.path.basename(record["file_name"]))
        cv2.imwrite(path, drawn.get_image()[:, :, ::-1])
        written.append(path)
        logger.info("%s: %d detections with score >= %.2f", path, len(instances), args.min_score)
    logger.info("Wrote %d images with predicted boxes to %s", len(written), args.output)
    return written


if __name__ == "__main__":
    setup_logger(name="sam_detr")
    main(parse_args())
