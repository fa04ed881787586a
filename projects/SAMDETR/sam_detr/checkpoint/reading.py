"""What a file that cannot be loaded is: empty, a damaged ``torch.save`` archive, or not a
checkpoint at all; the error says which, naming the file."""

import os
import pickle
import zipfile

from ..weights import CheckpointError, DamagedCheckpointError

__all__ = ["CONVERSION_HINT", "UNREADABLE_ERRORS", "unreadable"]

# Hint for users who pass a checkpoint of the official code base directly.
CONVERSION_HINT = (
    "Checkpoints of the official SAM-DETR code must be converted first with "
    "tools/convert_official_checkpoint.py."
)
# Every zip archive (torch.save's format) starts with these bytes.
ZIP_MAGIC = b"PK\x03\x04"
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


def unreadable(filename: str, error: BaseException) -> CheckpointError:
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
