#!/usr/bin/env python
"""Train and evaluate SAM-DETR with Detectron2's ``DefaultTrainer`` and the DETR recipe: the
DETR augmentation, AdamW with a backbone learning-rate multiplier and full-model gradient
clipping, COCO evaluation, periodic checkpoints and ``--resume``. Runs on one process, on
``--num-gpus``/``--num-machines`` through Detectron2's ``launch``, or under ``torchrun``
(NCCL on GPUs, gloo on CPU). See README.md for the commands."""

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List

import detectron2.utils.comm as comm
import sam_detr.data  # noqa: F401  (registers the built-in synthetic datasets)
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter
from detectron2.utils.logger import setup_logger
from sam_detr import add_sam_detr_config
from sam_detr.checkpoint import SAMDETRCheckpointer
from sam_detr.dataset_checks import check_num_classes
from sam_detr.dataset_mapper import DetrDatasetMapper
from sam_detr.environment import has_compiled_ops
from sam_detr.launch import launch_job
from sam_detr.solver import build_optimizer

logger = logging.getLogger("sam_detr.train_net")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with SAM-DETR's data, optimiser, evaluator and checkpointer."""

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        for name in cfg.DATASETS.TRAIN:
            check_num_classes(name, dataset, cfg.MODEL.SAM_DETR.NUM_CLASSES)
        mapper = DetrDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        dataset = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        check_num_classes(dataset_name, dataset, cfg.MODEL.SAM_DETR.NUM_CLASSES)
        return build_detection_test_loader(
            dataset=dataset,
            mapper=DetrDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=has_compiled_ops(),  # pycocotools without Detectron2's C++ ops
        )

    def build_hooks(self) -> list:
        # The hooks save through self.checkpointer: replace Detectron2's with ours first.
        self.checkpointer = SAMDETRCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    def build_writers(self) -> List[EventWriter]:
        writers: List[EventWriter] = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        try:  # TensorBoard event files only when tensorboard is installed
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:
            pass
        return writers

    def state_dict(self) -> Dict[str, Any]:
        # Detectron2 0.6's DefaultTrainer leaves the optimizer out of its checkpoints.
        return {**super().state_dict(), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else None
            raise FloatingPointError(
                f"Training stopped: non-finite loss at iteration {self.iter}; the weights were "
                f"not updated with it. Last checkpoint: {last or 'none'}. Lower SOLVER.BASE_LR "
                "or check the data, then continue with --resume.\n" + str(e)
            ) from e


def setup(args) -> CfgNode:
    """Config from ``args.config_file`` and the trailing ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:  # yacs: unknown key, odd number of overrides
        raise ValueError(f"Invalid config {args.config_file} {args.opts}: {e.args[0]}") from e
    fell_back_to_cpu = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if fell_back_to_cpu:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    # Only the main process writes logs and files into OUTPUT_DIR.
    setup_cfg = cfg
    if not comm.is_main_process():
        setup_cfg = cfg.clone()
        setup_cfg.defrost()
        del setup_cfg["OUTPUT_DIR"]
    default_setup(setup_cfg, args)
    setup_logger(setup_cfg.get("OUTPUT_DIR"), distributed_rank=comm.get_rank(), name="sam_detr")
    if fell_back_to_cpu:
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
    return cfg


def register_coco_datasets(specs: List[List[str]]) -> None:
    """Register each ``[name, json_file, image_root]`` of ``--coco-dataset``."""
    for name, json_file, image_root in specs or []:
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file", None) != json_file:
                raise ValueError(f"--coco-dataset: dataset name '{name}' is already taken")
            continue
        register_coco_instances(name, {}, json_file, image_root)


def main(args) -> Dict[str, Any]:
    register_coco_datasets(args.coco_dataset)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SAMDETRCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if args.resume:
        logger.info("Resuming at iteration %d", trainer.start_iter)
    return trainer.train() or OrderedDict()


def argument_parser():
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
