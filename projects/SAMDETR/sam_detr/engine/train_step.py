"""The one training step of SAM-DETR, for float32 and mixed precision on CPU and CUDA.

Detectron2's ``SimpleTrainer`` steps with whatever gradients the backward produced, and its
``AMPTrainer`` requires CUDA. This step runs the model under the configured precision
(:mod:`.precision`), backpropagates, computes the gradients' total norm once (clipping it
to ``SOLVER.CLIP_GRADIENTS`` when ``CLIP_TYPE`` is ``full_model``), and updates the weights
only if the loss and the gradients are finite on every process: every rank takes the same
decision. A step that is not finite is skipped (weights, optimiser state and BatchNorm
statistics unchanged), logged and counted; ``SOLVER.MAX_SKIPPED_STEPS`` consecutive skipped
steps stop the run. Steps whose float16-scaled gradients overflow are skipped by the
gradient scaler by design: they are no failure, and are reported apart
(``fp16_overflow_skips``, with the ``loss_scale``, in the metrics). The same collective tells
every process whether any of them was asked to stop (``stop_agreed``, :mod:`.preemption`).

The host reads the device's values once per step (the losses, the finiteness flags and the
gradient norm in one copy), besides the matcher's one copy of all layers' costs.

Randomness is keyed by the run's seed: the data stream (:mod:`.sample_stream`) by sample
position, and the model's (dropout) by re-seeding torch at every iteration. So a resumed run
computes what an uninterrupted one does.
"""

import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import detectron2.utils.comm as comm
import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import TrainerBase
from detectron2.utils.events import get_event_storage
from torch import nn

from ..data.sample_stream import STEP_SEED, derive_seed
from .precision import Precision

__all__ = ["NonFiniteTrainingError", "SAMDETRTrainStep"]

logger = logging.getLogger(__name__)

# What :meth:`SAMDETRTrainStep._read_step` reads besides the losses.
STEP_VALUES = ("grad_norm", "loss_scale")


class NonFiniteTrainingError(FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def _mutable_buffers(model: nn.Module) -> List[torch.Tensor]:
    """Buffers a forward pass in training mode updates (BatchNorm running statistics)."""
    return [
        b
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        for b in m.buffers(recurse=False)
    ]


class SAMDETRTrainStep(TrainerBase):
    """Runs one iteration per :meth:`run_step`; ``self.iter`` is set by the outer trainer.

    The data loader is built at the first step by ``loader_factory(seed, start_iter)``, so
    that a resumed run (whose iteration and seed are known only after loading) continues the
    data stream where it stopped.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader_factory: Callable[[int, int], Iterable],
        precision: Precision,
        seed: int,
        clip_norm: Optional[float] = None,
        clip_norm_type: float = 2.0,
        max_skipped_steps: int = 0,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        """
        Args:
            model: returns a dict of losses in training mode (may be DDP-wrapped).
            optimizer: of the model's trainable parameters.
            loader_factory: ``(seed, start_iter) -> iterable of batches``.
            precision: float32 or mixed precision.
            seed: the run's seed for data and model randomness.
            clip_norm: clip the gradients' total norm to this; None for no clipping.
            clip_norm_type: the p of that norm.
            max_skipped_steps: consecutive non-finite steps tolerated before stopping.
            stop_requested: whether this process was asked to stop (a signal); after each
                step ``stop_agreed`` says whether any process was.
        """
        super().__init__()
        model.train()
        self.model = model
        self.optimizer = optimizer
        self.precision = precision
        self.seed = seed
        self.clip_norm = float("inf") if clip_norm is None else clip_norm
        self.clip_norm_type = clip_norm_type
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._stop_requested = stop_requested
        self.stop_agreed = False
        self._loader_factory = loader_factory
        self.data_loader: Optional[Iterable] = None
        self._data_iter = None
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._buffers = _mutable_buffers(model)

    def _next_batch(self) -> Any:
        if self._data_iter is None:
            self.data_loader = self._loader_factory(self.seed, self.iter)
            self._data_iter = iter(self.data_loader)
        return next(self._data_iter)

    def run_step(self) -> None:
        assert self.model.training, "[SAMDETRTrainStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = self._next_batch()
        data_time = time.perf_counter() - start

        torch.manual_seed(derive_seed(self.seed, STEP_SEED, self.iter, comm.get_rank()))
        buffers = [b.clone() for b in self._buffers]
        with self.precision.autocast():
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(losses, self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self._params, self.clip_norm, norm_type=self.clip_norm_type
        )
        loss_finite, grads_finite, values = self._read_step(loss_dict, losses, grad_norm)
        if loss_finite and (grads_finite or self.precision.skips_overflow):
            # Overflowing float16 gradients: the gradient scaler skips the update and counts it.
            self.precision.step(self.optimizer, grads_finite)
            self._consecutive_skips = 0
            self._write_metrics(values, data_time)
        else:
            self.precision.skip()
            for saved, buffer in zip(buffers, self._buffers):
                buffer.copy_(saved)
            self._skip(values, loss_finite)

    def _read_step(
        self, loss_dict: Mapping[str, torch.Tensor], losses: torch.Tensor, grad_norm: torch.Tensor
    ) -> Tuple[bool, bool, Dict[str, float]]:
        """Whether the loss and the gradients are finite on every process, and this process's
        losses, ``grad_norm`` (and ``loss_scale`` with gradient scaling), all read in one copy
        to the host: with the matcher's, the step's only wait on the device. The same all-reduce
        sets ``stop_agreed``."""
        grad_norm = grad_norm.to(losses.device)  # a CPU zero when no parameter has a gradient
        # A fill kernel, not a copy from the host (which would wait for the device).
        go_on = torch.full((), not self._stop_requested(), dtype=torch.bool, device=losses.device)
        flags = torch.stack([torch.isfinite(losses), torch.isfinite(grad_norm), go_on]).float()
        if comm.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        tensors = dict(loss_dict, grad_norm=grad_norm)
        scale = self.precision.loss_scale()
        if scale is not None:
            tensors["loss_scale"] = scale
        read = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
        loss_finite, grads_finite, all_go_on, *host = torch.cat([flags, read]).tolist()
        self.stop_agreed = not all_go_on  # some process was asked to stop
        return bool(loss_finite), bool(grads_finite), dict(zip(tensors, host))

    def _skip(self, values: Mapping[str, float], loss_finite: bool) -> None:
        """Count, log and report a skipped step (``values``: of :meth:`_read_step`)."""
        self.skipped_steps += 1
        self._consecutive_skips += 1
        what = "gradient" if loss_finite else "loss"
        losses = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in STEP_VALUES)
        logger.warning(
            "Iteration %d skipped: non-finite %s on at least one process (this process: %s; "
            "gradient norm %.4g). The weights were not updated (%d in a row, %d in all).",
            self.iter,
            what,
            losses,
            values["grad_norm"],
            self._consecutive_skips,
            self.skipped_steps,
        )
        if comm.is_main_process():
            get_event_storage().put_scalar("skipped_steps", self.skipped_steps)
        if self._consecutive_skips > self.max_skipped_steps:
            first = self.iter - self._consecutive_skips + 1
            raise NonFiniteTrainingError(
                f"Training stopped: {self._consecutive_skips} consecutive steps (iterations "
                f"{first}-{self.iter}) had a non-finite {what}, more than "
                f"SOLVER.MAX_SKIPPED_STEPS={self.max_skipped_steps}; none of them updated the "
                "weights."
            )

    def _write_metrics(self, values: Mapping[str, float], data_time: float) -> None:
        """Losses averaged over the processes, the slowest data time, the gradient norm; with
        float16 gradient scaling, the loss scale and the overflowing steps skipped so far."""
        metrics = dict(values)
        grad_norm = metrics.pop("grad_norm")
        loss_scale = metrics.pop("loss_scale", None)
        metrics["data_time"] = data_time
        gathered = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", max(m.pop("data_time") for m in gathered))
        means = {k: float(np.mean([m[k] for m in gathered])) for k in gathered[0]}
        storage.put_scalar("total_loss", sum(means.values()))
        storage.put_scalar("grad_norm", grad_norm)
        if loss_scale is not None:
            storage.put_scalar("loss_scale", loss_scale)
            storage.put_scalar("fp16_overflow_skips", self.precision.overflow_skips)
        if len(means) > 1:
            storage.put_scalars(**means)

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(
            optimizer=self.optimizer.state_dict(),
            seed=self.seed,
            skipped_steps=self.skipped_steps,
            **self.precision.state_dict(),
        )
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state)
        self.seed = state.get("seed", self.seed)  # absent in checkpoints of earlier versions
        self.skipped_steps = state.get("skipped_steps", 0)
