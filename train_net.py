#!/usr/bin/env python
"""Train and evaluate SAM-DETR with the DETR recipe (``sam_detr.engine.trainer.Trainer``, a
Detectron2 ``DefaultTrainer``): the DETR augmentation, AdamW with a backbone learning-rate
multiplier and full-model gradient clipping, float32 or mixed precision, COCO evaluation, atomic
periodic checkpoints and an exact ``--resume``. Runs on one process, on ``--num-gpus`` /
``--num-machines`` through Detectron2's ``launch``, or under ``torchrun`` (NCCL on GPUs, gloo on
CPU). See README.md for the commands."""

import argparse
import functools
import logging
import sys
import warnings
from collections import OrderedDict
from typing import Any, Dict, List

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import detectron2.utils.comm as comm
import sam_detr.data  # noqa: F401  (registers the built-in synthetic datasets)
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger
from sam_detr.checkpoint.checkpointer import SAMDETRCheckpointer
from sam_detr.config import get_sam_detr_cfg
from sam_detr.data.checks import load_coco_dataset
from sam_detr.deploy.batchnorm_folding import prepare_for_inference
from sam_detr.engine.launch import launch_job
from sam_detr.engine.trainer import Trainer, check_output_dir
from sam_detr.utils.denormals import apply_denormal_mode
from sam_detr.utils.tf32 import apply_tf32_mode

__all__ = ["Trainer", "argument_parser", "main", "register_coco_datasets", "setup"]

logger = logging.getLogger("sam_detr.train_net")


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``args.config_file`` and the trailing ``KEY VALUE`` overrides."""
    cfg = get_sam_detr_cfg(args.config_file, args.opts)
    cfg.freeze()
    if comm.is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)
    # Only the main process writes logs and files into OUTPUT_DIR.
    setup_cfg = cfg
    if not comm.is_main_process():
        setup_cfg = cfg.clone()
        setup_cfg.defrost()
        del setup_cfg["OUTPUT_DIR"]
    default_setup(setup_cfg, args)
    setup_logger(setup_cfg.get("OUTPUT_DIR"), distributed_rank=comm.get_rank(), name="sam_detr")
    apply_denormal_mode(cfg)  # before the model is built: see sam_detr.utils.denormals
    apply_tf32_mode(cfg)
    return cfg


def register_coco_datasets(specs: List[List[str]]) -> None:
    """Register each ``[name, json_file, image_root]`` of ``--coco-dataset``, as Detectron2's
    ``register_coco_instances`` does but with the json file checked (``load_coco_dataset``)."""
    for name, json_file, image_root in specs or []:
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file", None) != json_file:
                raise ValueError(f"--coco-dataset: dataset name '{name}' is already taken")
            continue
        DatasetCatalog.register(
            name, functools.partial(load_coco_dataset, json_file, image_root, name)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )


def main(args: argparse.Namespace) -> Dict[str, Any]:
    register_coco_datasets(args.coco_dataset)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SAMDETRCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, prepare_for_inference(model))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train() or OrderedDict()


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's parser plus ``--coco-dataset NAME JSON IMAGE_ROOT``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable), for DATASETS.TRAIN/TEST",
    )
    return parser


if __name__ == "__main__":
    launch_job(main, argument_parser().parse_args())
