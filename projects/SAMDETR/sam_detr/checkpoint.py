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
"""

import errno
import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = [
    "CheckpointError",
    "DamagedCheckpointError",
    "WeightsMismatchError",
    "SAMDETRCheckpointer",
    "StateDiff",
    "write_atomically",
    "save_atomically",
]

logger = logging.getLogger(__name__)

# Name of the per-decoder-layer classification heads in the SAM-DETR state_dict.
CLASS_HEAD_NAME = "class_embed"
# Prefix of the backbone's tensors in the SAM-DETR state_dict.
BACKBONE_PREFIX = "backbone."
# Hint for users who pass a checkpoint of the official code base directly.
CONVERSION_HINT = (
    "Checkpoints of the official SAM-DETR code must be converted first with "
    "tools/convert_official_checkpoint.py."
)
# The file naming the newest checkpoint of a run (fvcore's convention).
LAST_CHECKPOINT = "last_checkpoint"
# Checkpoint files of a run, as Detectron2's PeriodicCheckpointer names them.
RUN_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")
# Temporary files of an interrupted save: "." + final name + random part + this suffix.
TEMP_SUFFIX = ".tmp"
INTERRUPTED_SAVE = re.compile(
    rf"^\.({RUN_CHECKPOINT.pattern[1:-1]}|{LAST_CHECKPOINT})\..+{re.escape(TEMP_SUFFIX)}$"
)
# Permissions of written files before the umask, as open() gives them.
FILE_MODE = 0o666
# Every zip archive (torch.save's format) starts with these bytes.
ZIP_MAGIC = b"PK\x03\x04"
# Keys listed per kind in a mismatch message.
SHOWN_KEYS = 6


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written (the message names the file)."""


class DamagedCheckpointError(CheckpointError):
    """The file is a checkpoint that is incomplete or corrupt (a truncated save or copy)."""


class WeightsMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model (another architecture or class count)."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: setting it to read it is process-wide, a race with threads that create files.
UMASK = _read_umask()
# What torch.load / unpickling raise for a file that is not a (complete) checkpoint (and
# OSError EINVAL, torch's zip reader's for a truncated file); other OSErrors (an unreadable
# disk, a stale network handle) and MemoryError propagate as they are.
UNREADABLE_ERRORS = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    UnicodeDecodeError,
    ValueError,
    KeyError,
    AttributeError,
    ImportError,
    TypeError,
)


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; where the file system cannot (some network and
    FUSE mounts refuse fsync on a folder), warn: the file itself is complete."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        logger.warning("Could not flush the folder %s to disk (%s).", directory, e)


class _RecordingWriter:
    """A binary file that remembers the ``OSError`` of a failed write: ``torch.save``'s zip
    writer turns it into a RuntimeError without the reason (disk full, file too large)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._file = f
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._file.flush()


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder, flush
    it to disk and rename it over ``path``. On any failure the temporary file is removed, an
    existing ``path`` is untouched, and the exception propagates (the ``OSError`` of a failed
    write, whatever ``write`` made of it)."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE & ~UMASK)  # mkstemp makes the file private (0600)
            recorder = _RecordingWriter(f)
            try:
                write(recorder)  # type: ignore[arg-type]
            except Exception as e:
                if recorder.error is not None and recorder.error is not e:
                    raise recorder.error from e
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def save_atomically(obj: Any, path: str) -> None:
    """``torch.save(obj)`` into ``path`` with :func:`write_atomically`."""
    write_atomically(path, lambda f: torch.save(obj, f))


def _non_finite_tensors(state: Mapping[str, Any]) -> List[str]:
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


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


def _backbone_only(checkpoint: Mapping[str, Any], diff: StateDiff) -> bool:
    """Whether the checkpoint holds exactly the model's backbone and nothing else."""
    return (
        bool(checkpoint)
        and not diff.unexpected
        and not diff.misshaped
        and all(k.startswith(BACKBONE_PREFIX) for k in checkpoint)
        and not [k for k in diff.missing if k.startswith(BACKBONE_PREFIX)]
    )


def _unreadable(filename: str, error: BaseException) -> CheckpointError:
    """The error for a file that ``torch.load`` / pickle could not read."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    try:
        size = os.path.getsize(filename)
        with open(filename, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        return CheckpointError(f"Cannot read '{filename}': {e}")
    if size == 0:
        return DamagedCheckpointError(
            f"'{filename}' is empty (an interrupted save or copy). Use another checkpoint."
        )
    if head == ZIP_MAGIC:
        return DamagedCheckpointError(
            f"'{filename}' is a damaged or incomplete checkpoint ({size} bytes; a truncated "
            f"save or copy?): {reason}. Copy it again or use another checkpoint."
        )
    return CheckpointError(
        f"'{filename}' is not a PyTorch or Detectron2 checkpoint ({reason}). {CONVERSION_HINT}"
    )


class SAMDETRCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, strict loading and a resume that skips
    damaged checkpoints. Same constructor and methods, plus ``fine_tuning``: allow the two
    training-start relaxations (backbone-only checkpoint, class-count change)."""

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        fine_tuning: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.fine_tuning = fine_tuning

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
            loaded = super()._load_file(filename)
        except UNREADABLE_ERRORS as e:
            raise _unreadable(filename, e) from e
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise _unreadable(filename, e) from e
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
        """Checkpoint files of ``save_dir``: the one ``last_checkpoint`` names first, then the
        others from the newest iteration down."""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        found = []
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
            m = RUN_CHECKPOINT.match(name)
            if m:
                order = float("inf") if m.group(1) == "final" else int(m.group(1))
                found.append((order, os.path.join(self.save_dir, name)))
        others = [p for _, p in sorted(found, reverse=True) if p != tagged]
        return ([tagged] if tagged and os.path.basename(tagged) else []) + others

    def remove_interrupted_saves(self) -> None:
        """Delete the temporary files that saves killed mid-way left in ``save_dir``. Only for
        the process that saves (the main one), when it starts: another process's save may be
        under way otherwise."""
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
            if INTERRUPTED_SAVE.match(name):
                try:
                    os.remove(os.path.join(self.save_dir, name))
                except FileNotFoundError:
                    continue
                logger.warning("Removed %s, left by an interrupted save.", name)

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
