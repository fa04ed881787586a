"""The one training step of SAM-DETR, for float32 and mixed precision on CPU and CUDA.

Detectron2's ``SimpleTrainer`` steps with whatever gradients the backward produced, and its
``AMPTrainer`` requires CUDA. This step runs the model under the configured precision
(:mod:`.precision`), backpropagates, computes the gradients' total norm once (clipping it
to ``SOLVER.CLIP_GRADIENTS`` when ``CLIP_TYPE`` is ``full_model``), and updates the weights
only if the loss and the gradients are finite on every process: every rank takes the same
decision. A step that is not finite is skipped (weights, optimiser state and BatchNorm
statistics unchanged), logged and counted; ``SOLVER.MAX_SKIPPED_STEPS`` consecutive skipped
steps stop the run. Steps whose float16-scaled gradients overflow are skipped by the
gradient scaler by design and are not counted.

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
        loss_finite, grads_finite = self._finite_on_all_ranks(losses, grad_norm)
        if loss_finite and (grads_finite or self.precision.skips_overflow):
            self.precision.step(self.optimizer)
            self._consecutive_skips = 0
            self._write_metrics(loss_dict, data_time, grad_norm)
        else:
            self.precision.skip()
            for saved, buffer in zip(buffers, self._buffers):
                buffer.copy_(saved)
            self._skip(loss_dict, grad_norm, loss_finite)

    def _finite_on_all_ranks(
        self, losses: torch.Tensor, grad_norm: torch.Tensor
    ) -> Tuple[bool, bool]:
        """Whether the loss and the gradients are finite on every process."""
        flags = torch.stack([torch.isfinite(losses), torch.isfinite(grad_norm)]).to(torch.int32)
        if comm.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        loss_finite, grads_finite = flags.tolist()
        return bool(loss_finite), bool(grads_finite)

    def _skip(
        self, loss_dict: Mapping[str, torch.Tensor], grad_norm: torch.Tensor, loss_finite: bool
    ) -> None:
        self.skipped_steps += 1
        self._consecutive_skips += 1
        what = "gradient" if loss_finite else "loss"
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in loss_dict.items())
        logger.warning(
            "Iteration %d skipped: non-finite %s on at least one process (this process: %s; "
            "gradient norm %.4g). The weights were not updated (%d in a row, %d in all).",
            self.iter,
            what,
            values,
            float(grad_norm),
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

    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, grad_norm: torch.Tensor
    ) -> None:
        """Losses averaged over the processes, the slowest data time, the gradient norm."""
        metrics = {k: float(v.detach()) for k, v in loss_dict.items()}
        metrics["data_time"] = data_time
        gathered = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", max(m.pop("data_time") for m in gathered))
        means = {k: float(np.mean([m[k] for m in gathered])) for k in gathered[0]}
        storage.put_scalar("total_loss", sum(means.values()))
        storage.put_scalar("grad_norm", float(grad_norm))
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
