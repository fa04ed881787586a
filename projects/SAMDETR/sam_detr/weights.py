"""How a state dict differs from a model's, and the errors of checkpoints that cannot be read
or do not fit. Shared by the model's own load check (:mod:`sam_detr.modeling.meta_arch`) and
the checkpointer (:mod:`sam_detr.checkpoint`)."""

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "CLASS_HEAD_NAME",
    "CheckpointError",
    "DamagedCheckpointError",
    "StateDiff",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "refuse_incomplete_load",
]

# Name of the per-decoder-layer classification heads in the SAM-DETR state_dict.
CLASS_HEAD_NAME = "class_embed"
# Keys listed per kind in a mismatch message.
SHOWN_KEYS = 6


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written (the message names the file)."""


class DamagedCheckpointError(CheckpointError):
    """The file is a checkpoint that is incomplete or corrupt (a truncated save or copy)."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle refers to a Python global that loading weights never needs (it would
    be imported and may run code); the message names the file and the global."""


class WeightsMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model (another architecture or class count)."""


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(value.shape)


@dataclass
class StateDiff:
    """How a checkpoint's state_dict differs from a model's."""

    missing: List[str] = field(default_factory=list)  # in the model only
    unexpected: List[str] = field(default_factory=list)  # in the checkpoint only
    misshaped: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(
        default_factory=list
    )  # (key, checkpoint shape, model shape)

    @classmethod
    def between(cls, checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> "StateDiff":
        return cls(
            missing=[k for k in model if k not in checkpoint],
            unexpected=[k for k in checkpoint if k not in model],
            misshaped=[
                (k, _shape(v), _shape(model[k]))
                for k, v in checkpoint.items()
                if k in model and _shape(v) != _shape(model[k])
            ],
        )

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    def describe(self) -> str:
        """One line per kind of difference, with the first keys and the counts."""

        def listing(items: List[str]) -> str:
            more = f", ... ({len(items)} in all)" if len(items) > SHOWN_KEYS else ""
            return ", ".join(items[:SHOWN_KEYS]) + more

        lines = []
        if self.missing:
            lines.append(f"missing in the checkpoint: {listing(self.missing)}")
        if self.unexpected:
            lines.append(f"not in the model: {listing(self.unexpected)}")
        if self.misshaped:
            shapes = [f"{k} {c} in the checkpoint, {m} in the model" for k, c, m in self.misshaped]
            lines.append(f"other shape: {listing(shapes)}")
        return "; ".join(lines)

    def class_count_change(self) -> Optional[Tuple[int, int]]:
        """``(checkpoint classes, model classes)`` when the only difference is the number of
        rows of the class heads (same input width), else None."""
        if self.missing or self.unexpected or not self.misshaped:
            return None
        for key, ckpt_shape, model_shape in self.misshaped:
            if CLASS_HEAD_NAME not in key.split(".") or ckpt_shape[1:] != model_shape[1:]:
                return None
        _, ckpt_shape, model_shape = self.misshaped[0]
        return ckpt_shape[0], model_shape[0]


def refuse_incomplete_load(module: torch.nn.Module, incompatible: Any) -> None:
    """``load_state_dict`` post-hook: with ``strict_weights``, any missing or unexpected tensor
    is an error, whoever loads (Detectron2's plain checkpointer loads with strict=False).
    The model's ``strict_weights`` (``MODEL.SAM_DETR.STRICT_WEIGHTS``) decides, here and in
    the checkpointer."""
    if module.strict_weights and (incompatible.missing_keys or incompatible.unexpected_keys):
        diff = StateDiff(list(incompatible.missing_keys), list(incompatible.unexpected_keys))
        raise WeightsMismatchError(
            f"SAM-DETR weights do not fit the model: {diff.describe()} (Detectron2's "
            "checkpointer drops tensors of another shape and reports them missing). Load "
            "through sam_detr's SAMDETRCheckpointer or SAMDETRPredictor for a full report, or "
            "set MODEL.SAM_DETR.STRICT_WEIGHTS False to keep the unmatched tensors random."
        )
