"""SAM-DETR's trainer: Detectron2's ``DefaultTrainer`` (hooks, schedule, evaluation, writers)
around SAM-DETR's own training step (:mod:`.train_step`), resumable data stream
(:mod:`.sample_stream`), checked datasets (:mod:`.dataset_checks`) and safe checkpoints
(:mod:`.checkpoint`). Works with Detectron2 0.6 and upstream."""

import functools
import logging
import os
import weakref
from typing import Any, Dict, Iterable, List, Optional, Sequence

import detectron2.utils.comm as comm
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter
from detectron2.utils.logger import setup_logger

from ..checkpoint.checkpointer import SAMDETRCheckpointer
from ..data.checks import load_checked_dataset
from ..data.mapper import DetrDatasetMapper
from ..data.sample_stream import SampleStream, build_stream_loader, serialize_dataset
from ..environment import has_compiled_ops
from .launch import create_ddp_model
from .precision import build_precision
from .preemption import PreemptionCheckpointer, StopRequest
from .solver import FULL_MODEL_CLIP_TYPE, build_optimizer
from .train_step import NonFiniteTrainingError, SAMDETRTrainStep

__all__ = ["OutputDirError", "Trainer", "check_output_dir"]

logger = logging.getLogger(__name__)

# Detectron2's default training sampler: the only one the sample stream replaces faithfully.
PLAIN_SAMPLER = "TrainingSampler"
# Bytes written into OUTPUT_DIR to prove it writable: more than the config and first logs.
PROBE_BYTES = 1 << 16


class OutputDirError(OSError):
    """``OUTPUT_DIR`` cannot be created or written."""


def check_output_dir(path: str) -> None:
    """Create ``path`` if needed and prove it writable, or raise :class:`OutputDirError`."""
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        try:
            with open(probe, "wb") as f:
                f.write(bytes(PROBE_BYTES))
        finally:
            if os.path.exists(probe):
                os.remove(probe)
    except OSError as e:
        raise OutputDirError(
            f"OUTPUT_DIR '{path}' cannot be used: {e.strerror or e}"
            f"{f' ({e.filename})' if e.filename and e.filename != path else ''}. Nothing was "
            "written. Set OUTPUT_DIR to a folder that can be created and written."
        ) from e


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` imports (Detectron2's writer needs it; upstream
    imports it only at the first write, which would crash a run mid-way)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _check_loader_config(cfg: CfgNode) -> None:
    if cfg.DATALOADER.SAMPLER_TRAIN != PLAIN_SAMPLER or cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN} / "
            f"DATALOADER.ASPECT_RATIO_GROUPING {cfg.DATALOADER.ASPECT_RATIO_GROUPING}: SAM-DETR "
            "trains on one shuffled stream batched in order, as DETR (so that --resume "
            f"continues it exactly); set SAMPLER_TRAIN {PLAIN_SAMPLER} and "
            "ASPECT_RATIO_GROUPING False."
        )


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with SAM-DETR's training step, data, optimiser, evaluator and
    checkpointer. ``resume_or_load`` continues a run exactly where its last checkpoint was."""

    def __init__(self, cfg: CfgNode) -> None:  # pylint: disable=super-init-not-called
        # DefaultTrainer.__init__ would build Detectron2's step and loader: same order here.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        _check_loader_config(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # Serialised once: the dicts themselves are not kept (data-loader workers would copy
        # their pages as Python touches reference counts).
        records = serialize_dataset(self.build_train_dataset(cfg))
        model = create_ddp_model(model, broadcast_buffers=False)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        self.stop_request = StopRequest()
        full_model_clip = clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL_CLIP_TYPE
        self._trainer = SAMDETRTrainStep(
            model,
            optimizer,
            loader_factory=functools.partial(self.build_stream_loader, cfg, records),
            precision=build_precision(
                cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, cfg.MODEL.DEVICE, scale=True
            ),
            seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
            clip_norm=clip.CLIP_VALUE if full_model_clip else None,
            clip_norm_type=clip.NORM_TYPE,
            max_skipped_steps=cfg.SOLVER.MAX_SKIPPED_STEPS,
            stop_requested=self.stop_request.is_set,
        )
        logger.info("Training in %s.", self._trainer.precision)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SAMDETRCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            fine_tuning=True,
            trust_pickle=cfg.MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_dataset(cls, cfg: CfgNode) -> List[Dict[str, Any]]:
        """The checked dicts of ``DATASETS.TRAIN`` (invalid boxes dropped or refused)."""
        return load_checked_dataset(
            cfg.DATASETS.TRAIN,
            cfg.MODEL.SAM_DETR.NUM_CLASSES,
            cfg.DATASETS.INVALID_BOXES,
            training=True,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        )

    @classmethod
    def build_stream_loader(
        cls, cfg: CfgNode, dataset: Sequence[Dict[str, Any]], seed: int, start_iter: int
    ) -> Iterable:
        """This process's batches of the training stream, from iteration ``start_iter``."""
        stream = SampleStream(dataset, DetrDatasetMapper(cfg, is_train=True), seed)
        return build_stream_loader(
            stream,
            cfg.SOLVER.IMS_PER_BATCH,
            comm.get_rank(),
            comm.get_world_size(),
            start_iter,
            cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable:
        """The training stream from its start (for hooks such as PreciseBN)."""
        return cls.build_stream_loader(cfg, cls.build_train_dataset(cfg), max(cfg.SEED, 0), 0)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Iterable:
        dataset = load_checked_dataset(
            [dataset_name],
            cfg.MODEL.SAM_DETR.NUM_CLASSES,
            cfg.DATASETS.INVALID_BOXES,
            training=False,
        )
        return build_detection_test_loader(
            dataset=dataset,
            mapper=DetrDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> COCOEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=has_compiled_ops(),  # pycocotools without Detectron2's C++ ops
        )

    def build_hooks(self) -> List[Optional[HookBase]]:
        """Detectron2's hooks, plus the checkpoint on SIGTERM / SIGUSR1 / SIGINT
        (:mod:`.preemption`) right after the LR scheduler (and PreciseBN), before evaluation."""
        hooks = super().build_hooks()
        later = (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook, d2_hooks.PeriodicWriter)
        at = next((i for i, h in enumerate(hooks) if isinstance(h, later)), len(hooks))
        hooks.insert(at, PreemptionCheckpointer(self.checkpointer, self.stop_request))
        return hooks

    def build_writers(self) -> List[EventWriter]:
        writers: List[EventWriter] = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        if tensorboard_available():
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        else:
            logger.info("tensorboard is not installed: no TensorBoard event files are written.")
        return writers

    def resume_or_load(self, resume: bool = True) -> None:
        """Continue from the newest good checkpoint of ``OUTPUT_DIR`` (``resume``), else load
        ``MODEL.WEIGHTS`` (a backbone-only checkpoint or another class count are allowed)."""
        if resume and comm.is_main_process():
            self.checkpointer.remove_interrupted_saves()
        if resume and self.checkpointer.resume_last() is not None:
            # The checkpoint holds the iteration that had just finished.
            self.start_iter = self.iter + 1
            logger.info("Resuming at iteration %d", self.start_iter)
            return
        self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])

    def state_dict(self) -> Dict[str, Any]:
        # Detectron2 0.6's DefaultTrainer leaves the step (optimizer, seed) out.
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        try:
            self._trainer.run_step()
        except NonFiniteTrainingError as e:
            if comm.is_main_process():
                last = self.checkpointer.get_checkpoint_file() or "none"
            else:
                last = "see the main process's log"
            raise NonFiniteTrainingError(
                f"{e} Last checkpoint: {last}. Lower SOLVER.BASE_LR or check the "
                "data, then continue with --resume."
            ) from e
