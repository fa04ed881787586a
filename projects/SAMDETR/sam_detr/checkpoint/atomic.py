"""Atomic file writes: a temporary file in the same folder, flushed to disk and renamed over
the real name, so that a kill or a full disk never leaves a partial file under that name."""

import logging
import os
import tempfile
from typing import IO, Any, Callable, Optional

import torch

from ..utils.files import FILE_MODE, UMASK

__all__ = ["TEMP_SUFFIX", "save_atomically", "write_atomically"]

logger = logging.getLogger(__name__)

# Temporary files of an interrupted write: "." + final name + random part + this suffix.
TEMP_SUFFIX = ".tmp"


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
