"""The files of a training run's output folder: its checkpoints, newest first, and the
temporary files that interrupted saves left behind."""

import logging
import os
import re
from typing import List

from .atomic import TEMP_SUFFIX

__all__ = ["LAST_CHECKPOINT", "remove_interrupted_saves", "run_checkpoints"]

logger = logging.getLogger(__name__)

# The file naming the newest checkpoint of a run (fvcore's convention).
LAST_CHECKPOINT = "last_checkpoint"
# Checkpoint files of a run, as Detectron2's PeriodicCheckpointer names them.
RUN_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")
# Temporary files of an interrupted save (atomic.py's naming).
INTERRUPTED_SAVE = re.compile(
    rf"^\.({RUN_CHECKPOINT.pattern[1:-1]}|{LAST_CHECKPOINT})\..+{re.escape(TEMP_SUFFIX)}$"
)


def _names(save_dir: str) -> List[str]:
    return os.listdir(save_dir) if os.path.isdir(save_dir) else []


def run_checkpoints(save_dir: str, tagged: str) -> List[str]:
    """Checkpoint files of ``save_dir``: ``tagged`` (the one ``last_checkpoint`` names, or "")
    first, then the others from the newest iteration down."""
    found = []
    for name in _names(save_dir):
        m = RUN_CHECKPOINT.match(name)
        if m:
            order = float("inf") if m.group(1) == "final" else int(m.group(1))
            found.append((order, os.path.join(save_dir, name)))
    others = [p for _, p in sorted(found, reverse=True) if p != tagged]
    return ([tagged] if tagged and os.path.basename(tagged) else []) + others


def remove_interrupted_saves(save_dir: str) -> None:
    """Delete the temporary files of interrupted saves in ``save_dir``, with a warning each."""
    for name in _names(save_dir):
        if INTERRUPTED_SAVE.match(name):
            try:
                os.remove(os.path.join(save_dir, name))
            except FileNotFoundError:
                continue
            logger.warning("Removed %s, left by an interrupted save.", name)
