"""Reading weights files without running code. A pickle names Python globals (functions and
classes) that unpickling imports and calls, so a crafted ``.pkl`` or ``.pth`` runs whatever it
names. Detectron2-format ``.pkl`` files (the model zoo's ImageNet backbones such as
``R-50.pkl``, Caffe2 blobs) hold only numpy arrays, numbers and strings in dicts: they are read
with :class:`SafeUnpickler`, which resolves those globals only and refuses any other, naming
it. Every other file goes through ``torch.load(..., weights_only=True)`` (tensors, numbers,
strings, containers). ``trust_pickle`` (``MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS``) loads trusted
files of other content with plain pickle, as Detectron2 does. Same formats and conversions as
``DetectionCheckpointer._load_file``."""

import _compat_pickle
import codecs
import collections
import logging
import pickle
import re
import zipfile
from typing import IO, Any, Callable, Dict, Tuple

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

from ..weights import CheckpointError, UnsafeCheckpointError

try:  # numpy >= 2 (and 1.26) names its core ``numpy._core``; older pickles say ``numpy.core``
    from numpy._core import multiarray, numeric
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray, numeric

__all__ = ["SAFE_GLOBALS", "TRUST_HINT", "SafeUnpickler", "read_weights_file"]

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "If you trust the file's origin, set MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS True to load it "
    "with plain pickle (which runs what the file names)."
)
_NUMPY_CORES = ("numpy.core", "numpy._core")
# The only globals a Detectron2-format .pkl needs: numpy arrays, dtypes and scalars, bytes as
# protocol-2 pickles write them (_codecs.encode), arrays of protocol 5 (_frombuffer), built-in
# containers and scalars.
SAFE_GLOBALS: Dict[Tuple[str, str], Callable[..., Any]] = {
    **{(f"{core}.multiarray", "_reconstruct"): multiarray._reconstruct for core in _NUMPY_CORES},
    **{(f"{core}.multiarray", "scalar"): multiarray.scalar for core in _NUMPY_CORES},
    **{(f"{core}.numeric", "_frombuffer"): numeric._frombuffer for core in _NUMPY_CORES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{
        ("builtins", t.__name__): t
        for t in (
            dict,
            list,
            tuple,
            set,
            frozenset,
            str,
            bytes,
            bytearray,
            int,
            float,
            bool,
            complex,
        )
    },
}
# Legacy (non-zip) torch.save files are several pickles in a row; the data is the fifth.
LEGACY_PICKLES = 5
# How torch.load(weights_only=True) names the global it refused.
_TORCH_REFUSED = re.compile(r"\bGLOBAL ([\w.]+)")


def unsafe(filename: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"'{filename}' was not loaded: its pickle refers to the Python global '{name}', which "
        "loading would import and call (a crafted file runs code this way; weights need only "
        f"tensors or numpy arrays, numbers, strings and containers). {TRUST_HINT}"
    )


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`SAFE_GLOBALS` and raises
    :class:`UnsafeCheckpointError` naming ``filename`` and any other global, before importing
    it. Python 2 names (``__builtin__``) are mapped as pickle's ``fix_imports`` does."""

    def __init__(self, file: IO[bytes], filename: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        key = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        )
        if key in SAFE_GLOBALS:
            return SAFE_GLOBALS[key]
        raise unsafe(self.filename, f"{module}.{name}")


class _Scanner(SafeUnpickler):
    """Finds the refused global of a legacy torch file: tensor storages are left out."""

    def persistent_load(self, pid: Any) -> None:
        return None


def _check_legacy_globals(filename: str) -> None:
    """Raise :class:`UnsafeCheckpointError` if a pickle of the (non-zip) file names a global
    that is not allowed; any other problem is left to the caller's error."""
    try:
        with open(filename, "rb") as f:
            for _ in range(LEGACY_PICKLES):
                _Scanner(f, filename, encoding="latin1").load()
    except UnsafeCheckpointError:
        raise
    except Exception:  # not (or no more) pickles: the original error stands
        return


def _torch_load(filename: str, trust_pickle: bool) -> Any:
    try:
        return torch.load(filename, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise
        refused = _TORCH_REFUSED.search(str(e))
        if refused:
            raise unsafe(filename, refused.group(1)) from e
        if not zipfile.is_zipfile(filename):
            _check_legacy_globals(filename)
        raise


def _read_pkl(filename: str, trust_pickle: bool) -> Dict[str, Any]:
    with PathManager.open(filename, "rb") as f:
        if trust_pickle:
            data = pickle.load(f, encoding="latin1")
        else:
            data = SafeUnpickler(f, filename, encoding="latin1").load()
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
        logger.info("Reading a file from '%s'", data["__author__"])
        return data
    # Caffe2 / Detectron1 model zoo: detection models have "blobs", ImageNet models do not.
    if "blobs" in data:
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _read_pyth(filename: str, trust_pickle: bool) -> Dict[str, Any]:
    """A pycls checkpoint (nobody else uses the ``.pyth`` extension)."""
    data = _torch_load(filename, trust_pickle)
    if "model_state" not in data:
        raise CheckpointError(f"Cannot load '{filename}': pycls checkpoints hold 'model_state'.")
    state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def read_weights_file(filename: str, trust_pickle: bool = False) -> Dict[str, Any]:
    """The checkpoint dict of a local ``.pkl``, ``.pyth`` or ``torch.save`` file, with
    ``model`` (and ``matching_heuristics`` for converted formats), as Detectron2 reads it.

    Raises :class:`UnsafeCheckpointError` for a pickle that names another global (unless
    ``trust_pickle``); unreadable files raise what pickle / ``torch.load`` raise.
    """
    if filename.endswith(".pkl"):
        return _read_pkl(filename, trust_pickle)
    if filename.endswith(".pyth"):
        return _read_pyth(filename, trust_pickle)
    loaded = _torch_load(filename, trust_pickle)
    if "model" not in loaded:
        loaded = {"model": loaded}
    return loaded
