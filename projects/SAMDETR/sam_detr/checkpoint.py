"""Checkpoint loading for SAM-DETR: Detectron2's ``DetectionCheckpointer`` with fine-tuning
support and clear errors. A checkpoint trained for another number of classes (e.g. COCO's 80
when ``MODEL.SAM_DETR.NUM_CLASSES`` is 3) loads everything except the class heads
``class_embed.*``, which keep their fresh initialisation, and says so in one log line. A
missing file or a file that is not a checkpoint raises an error naming the path."""

import logging
import os
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

__all__ = ["SAMDETRCheckpointer", "CheckpointError"]

logger = logging.getLogger(__name__)

# Name of the per-decoder-layer classification heads in the SAM-DETR state_dict.
CLASS_HEAD_NAME = "class_embed"
# Hint for users who pass a checkpoint of the official code base directly.
CONVERSION_HINT = (
    "Checkpoints of the official SAM-DETR code must be converted first with "
    "tools/convert_official_checkpoint.py."
)


class CheckpointError(RuntimeError):
    """``MODEL.WEIGHTS`` (or the last checkpoint to resume) cannot be used."""


def _is_class_head_key(key: str) -> bool:
    return CLASS_HEAD_NAME in key.split(".")


class SAMDETRCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that re-initialises mismatching class heads and fails clearly
    on a missing or invalid checkpoint file. Same constructor and methods."""

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"Checkpoint file '{path}' does not exist (MODEL.WEIGHTS, or the file named "
                'in OUTPUT_DIR/last_checkpoint with --resume). Use MODEL.WEIGHTS "" to '
                "start from random initialisation."
            )
        if path and "://" in path:
            try:
                path = self.path_manager.get_local_path(path)
            except Exception as e:  # network or unknown URL prefix
                raise CheckpointError(f"Cannot fetch checkpoint '{path}': {e}") from e
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # unpickling / zip / decoding errors of all kinds
            raise CheckpointError(
                f"'{filename}' is not a PyTorch or Detectron2 checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). {CONVERSION_HINT}"
            ) from e
        model_state = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model_state, dict) or not all(
            isinstance(v, torch.Tensor) or hasattr(v, "shape") for v in model_state.values()
        ):
            raise CheckpointError(
                f"'{filename}' holds no model state_dict (expected a dict of tensors, or one "
                f"under the key 'model'). {CONVERSION_HINT}"
            )
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        model_state = self.model.state_dict()
        ckpt_state = checkpoint["model"]
        mismatched = [
            k
            for k, v in ckpt_state.items()
            if _is_class_head_key(k)
            and k in model_state
            and tuple(v.shape) != tuple(model_state[k].shape)
        ]
        if mismatched:
            ckpt_classes = int(ckpt_state[mismatched[0]].shape[0])
            model_classes = int(model_state[mismatched[0]].shape[0])
            for k in mismatched:
                ckpt_state.pop(k)
            logger.warning(
                "Class heads re-initialised: the checkpoint has %d classes, the model "
                "(MODEL.SAM_DETR.NUM_CLASSES) %d; %d class-head tensors (%s.*) keep their "
                "initialisation, all other tensors are loaded from the checkpoint.",
                ckpt_classes,
                model_classes,
                len(mismatched),
                CLASS_HEAD_NAME,
            )
        incompatible = super()._load_model(checkpoint)
        if mismatched:
            skipped = set(mismatched)
            incompatible = _IncompatibleKeys(
                missing_keys=[k for k in incompatible.missing_keys if k not in skipped],
                unexpected_keys=incompatible.unexpected_keys,
                incorrect_shapes=incompatible.incorrect_shapes,
            )
        return incompatible
