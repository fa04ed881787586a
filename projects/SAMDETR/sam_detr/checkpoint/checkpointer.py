"""Checkpoints of SAM-DETR that lose nothing and load nothing silently.

Saving: every file (periodic and final checkpoints, ``last_checkpoint``, converted official
checkpoints) is written to a temporary file in the same folder, flushed to disk and renamed
over its name, so a kill or a full disk never leaves a partial file under the real name;
``last_checkpoint`` is replaced only after its checkpoint is complete; weights that are not
finite are never written.

Loading is strict: a missing, unexpected or mis-shaped tensor is an error naming them. Two
relaxations exist for starting a training run from ``MODEL.WEIGHTS`` (``fine_tuning=True``):
a backbone-only checkpoint (the ImageNet ``R-50.pkl``) loads the backbone and leaves the rest
to its initialisation, and a SAM-DETR checkpoint of another class count loads everything but
the class heads. ``MODEL.SAM_DETR.STRICT_WEIGHTS False`` turns strictness off (warnings only,
Detectron2's behaviour). Resuming skips a damaged newest checkpoint for the previous good one.
Reading runs no code from the file (:mod:`.safe_pickle`) unless ``trust_pickle``.
"""

import errno
import logging
import os
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..weights import (
    CLASS_HEAD_NAME,
    SHOWN_KEYS,
    CheckpointError,
    StateDiff,
    WeightsMismatchError,
)
from .atomic import write_atomically
from .imagenet import without_imagenet_extras
from .reading import CONVERSION_HINT, UNREADABLE_ERRORS, unreadable
from .run_files import LAST_CHECKPOINT, remove_interrupted_saves, run_checkpoints
from .safe_pickle import read_weights_file

__all__ = ["LAST_CHECKPOINT", "SAMDETRCheckpointer"]

logger = logging.getLogger(__name__)

# Prefix of the backbone's tensors in the SAM-DETR state_dict.
BACKBONE_PREFIX = "backbone."


def _non_finite_tensors(state: Mapping[str, Any]) -> List[str]:
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


def _backbone_only(checkpoint: Mapping[str, Any], diff: StateDiff) -> bool:
    """Whether the checkpoint holds exactly the model's backbone and nothing else."""
    return (
        bool(checkpoint)
        and not diff.unexpected
        and not diff.misshaped
        and all(k.startswith(BACKBONE_PREFIX) for k in checkpoint)
        and not [k for k in diff.missing if k.startswith(BACKBONE_PREFIX)]
    )


class SAMDETRCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, strict loading and a resume that skips
    damaged checkpoints. Same constructor and methods, plus ``fine_tuning``: allow the two
    training-start relaxations (backbone-only checkpoint, class-count change), and
    ``trust_pickle``: load pickles that name any global (``TRUST_PICKLED_WEIGHTS``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        fine_tuning: bool = False,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.fine_tuning = fine_tuning
        self.trust_pickle = trust_pickle

    @property
    def strict(self) -> bool:
        """``MODEL.SAM_DETR.STRICT_WEIGHTS`` of the model (True for other models)."""
        return getattr(self.model, "strict_weights", True)

    # ---- saving ---------------------------------------------------------------------------

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``save_dir/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        bad = _non_finite_tensors(data["model"])
        if bad:
            raise FloatingPointError(
                f"Not saving '{path}': {len(bad)} model tensors are not finite "
                f"({', '.join(bad[:SHOWN_KEYS])}). {self._kept()}"
            )
        self.logger.info("Saving checkpoint to %s", path)
        self._write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        self._write(path, lambda f: f.write(last_filename_basename.encode()))

    def _kept(self) -> str:
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        return (
            f"The previous checkpoint '{last}' and {LAST_CHECKPOINT} are intact."
            if last
            else "No earlier checkpoint exists."
        )

    def _write(self, path: str, write: Callable[[IO[bytes]], None]) -> None:
        try:
            write_atomically(path, write)
        except OSError as e:
            raise CheckpointError(
                f"Could not write '{path}': {e}. {self._kept()} Free space in OUTPUT_DIR or "
                "choose another one, then continue with --resume."
            ) from e

    # ---- reading --------------------------------------------------------------------------

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"Checkpoint file '{path}' (MODEL.WEIGHTS) does not exist. Use "
                'MODEL.WEIGHTS "" to start from random initialisation.'
            )
        if path and "://" in path:
            try:
                path = self.path_manager.get_local_path(path)
            except Exception as e:  # network or unknown URL prefix
                raise CheckpointError(f"Cannot fetch checkpoint '{path}': {e}") from e
        try:
            return super().load(path, checkpointables=checkpointables)
        except BaseException:
            # Upstream Detectron2 keeps the URL of a failed load and asserts on the next one.
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None
            raise

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            loaded = read_weights_file(filename, self.trust_pickle)
        except CheckpointError:  # a RuntimeError, but already says what is wrong
            raise
        except UNREADABLE_ERRORS as e:
            raise unreadable(filename, e) from e
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise unreadable(filename, e) from e
        model_state = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model_state, dict) or not all(
            isinstance(v, torch.Tensor) or hasattr(v, "shape") for v in model_state.values()
        ):
            raise CheckpointError(
                f"'{filename}' holds no model state_dict (expected a dict of tensors, or one "
                f"under the key 'model'). {CONVERSION_HINT}"
            )
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        if not self.strict:
            return super()._load_model(checkpoint)
        state = checkpoint["model"]
        if checkpoint.get("matching_heuristics", False):  # Detectron2/Caffe2 .pkl files
            self._convert_ndarray_to_tensor(state)
            c2 = checkpoint.get("__author__", None) == "Caffe2"
            state = align_and_update_state_dicts(self.model.state_dict(), state, c2_conversion=c2)
            if self.fine_tuning:
                state = without_imagenet_extras(state, self.model.state_dict())
            checkpoint["matching_heuristics"] = False
        self._convert_ndarray_to_tensor(state)
        consume_prefix_in_state_dict_if_present(state, "module.")
        model_state = self.model.state_dict()
        diff = StateDiff.between(state, model_state)
        if diff:
            kept = self._fine_tuning_kept_keys(state, diff)
            state.update({k: model_state[k] for k in kept})
        checkpoint["model"] = state
        return super()._load_model(checkpoint)

    def _fine_tuning_kept_keys(self, state: Dict[str, Any], diff: StateDiff) -> List[str]:
        """Model tensors that keep their initialisation, after logging why; raises
        :class:`WeightsMismatchError` where no relaxation applies."""
        classes = diff.class_count_change()
        if self.fine_tuning and classes is not None:
            logger.warning(
                "Class heads re-initialised: the checkpoint has %d classes, the model "
                "(MODEL.SAM_DETR.NUM_CLASSES) %d; %d class-head tensors (%s.*) keep their "
                "initialisation, all other tensors are loaded from the checkpoint.",
                *classes,
                len(diff.misshaped),
                CLASS_HEAD_NAME,
            )
            return [k for k, _, _ in diff.misshaped]
        if self.fine_tuning and _backbone_only(state, diff):
            logger.info(
                "Backbone-only checkpoint: %d backbone tensors loaded; the other %d tensors "
                "(transformer and heads) keep their initialisation.",
                len(state),
                len(diff.missing),
            )
            return diff.missing
        advice = "Use the config the checkpoint was trained with"
        if classes is not None:
            advice = (
                f"The checkpoint has {classes[0]} classes, the model {classes[1]}: set "
                f"MODEL.SAM_DETR.NUM_CLASSES {classes[0]} to evaluate it (only training "
                "re-initialises class heads)"
            )
        raise WeightsMismatchError(
            f"The checkpoint does not fit the model: {diff.describe()}. {advice}; or set "
            "MODEL.SAM_DETR.STRICT_WEIGHTS False to load what fits and keep the rest random."
        )

    # ---- resuming -------------------------------------------------------------------------

    def _resume_candidates(self) -> List[str]:
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        return run_checkpoints(self.save_dir, tagged)

    def remove_interrupted_saves(self) -> None:
        """Delete the temporary files that saves killed mid-way left in ``save_dir``. Only for
        the process that saves (the main one), when it starts: another process's save may be
        under way otherwise."""
        remove_interrupted_saves(self.save_dir)

    def _try_resume_from(self, path: str) -> Tuple[Optional[Dict[str, Any]], str, bool]:
        """``(leftover checkpoint data, "", False)`` after loading ``path``, or ``(None,
        reason, mismatch)``: ``mismatch`` when the file is fine but does not fit the model."""
        if not os.path.isfile(path):
            return None, f"'{path}' does not exist", False
        try:
            return self.load(path), "", False
        except WeightsMismatchError as e:
            return None, str(e), True
        except CheckpointError as e:
            return None, str(e), False

    def resume_last(self) -> Optional[Dict[str, Any]]:
        """Load the newest readable checkpoint of ``save_dir`` with all checkpointables and
        return what ``load`` returns; None when ``save_dir`` has no checkpoint.

        A damaged or missing newest file is skipped for the previous one, with a warning. All
        processes load the same file: the main process's list of files is used, and a file
        that fails on any process is skipped by all. Resuming is never fine-tuning: a
        checkpoint that does not fit the model is an error. Raises :class:`CheckpointError`
        when checkpoints exist but none can be loaded (instead of starting from scratch).
        """
        candidates = comm.all_gather(self._resume_candidates())[0]
        fine_tuning, self.fine_tuning = self.fine_tuning, False
        reasons = []
        try:
            for path in candidates:
                loaded, reason, mismatch = self._try_resume_from(path)
                outcomes = comm.all_gather((reason, mismatch))  # every process decides alike
                mismatches = [r for r, m in outcomes if m]
                if mismatches:  # another architecture is not a damaged file
                    raise WeightsMismatchError(mismatches[0])
                failures = [r for r, _ in outcomes if r]
                if not failures:
                    self.logger.info("Resumed from %s", path)
                    return loaded
                logger.warning("Cannot resume from %s: %s", path, failures[0])
                reasons.append(failures[0])
        finally:
            self.fine_tuning = fine_tuning
        if reasons:
            raise CheckpointError(
                f"--resume: none of the {len(reasons)} checkpoints in '{self.save_dir}' can "
                f"be loaded ({'; '.join(reasons)}). Move them out of OUTPUT_DIR to start "
                "from MODEL.WEIGHTS instead."
            )
        return None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """fvcore's ``resume_or_load`` with :meth:`resume_last`: what was loaded but not
        consumed (e.g. ``iteration``)."""
        if resume:
            loaded = self.resume_last()
            if loaded is not None:
                return loaded
        return self.load(path, checkpointables=[])
