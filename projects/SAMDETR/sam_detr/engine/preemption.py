"""Stopping a training run on request without losing anything: SIGTERM, SIGUSR1 (what SLURM
sends ahead of a preemption or the time limit, ``--signal=USR1@120``) and SIGINT only set a flag
(:class:`StopRequest`); the iteration under way finishes, the processes agree through the
collective that the training step already runs (:mod:`.train_step`, no extra synchronisation),
and :class:`PreemptionCheckpointer` writes the checkpoint of that iteration as the periodic
checkpointer would (``model_<iter>.pth`` and ``last_checkpoint``), then every process exits with
:data:`PREEMPTED_EXIT_CODE`. ``--resume`` continues from it exactly. Signals that arrive while
the checkpoint is written are only counted, and the write is atomic anyway. The handler only
records: writing a log line there could re-enter a stream that the interrupted code writes."""

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Dict, List, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "STOP_SIGNALS",
    "PreemptionCheckpointer",
    "StopRequest",
    "TrainingPreempted",
]

logger = logging.getLogger(__name__)

# Exit status of a run stopped by a signal after saving its checkpoint: EX_TEMPFAIL of
# sysexits.h ("temporary failure, the user is invited to retry"), told apart from a crash (1).
PREEMPTED_EXIT_CODE = 75
# Signals that stop training after the current iteration.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class TrainingPreempted(SystemExit):
    """Training stopped on request after saving its checkpoint; exits with
    :data:`PREEMPTED_EXIT_CODE` (a ``SystemExit``: not logged as a training failure)."""

    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)


class StopRequest:
    """The stop signals this process received (``received``, names in order). :meth:`install`
    replaces the handlers of :data:`STOP_SIGNALS` in the main thread; :meth:`restore` puts back
    the previous ones. Processes forked later (data-loader workers) ignore the inherited
    handler."""

    def __init__(self) -> None:
        self.received: List[str] = []  # names of the signals received, in order
        self._logged = 0  # how many of them were logged
        self._pid = os.getpid()
        self._previous: Dict[int, Any] = {}

    def is_set(self) -> bool:
        """Whether a stop signal arrived (logged here, the first time it is seen)."""
        if self.received and not self._logged:
            logger.warning("%s received: stopping after the current iteration.", self.received[0])
            self._logged = 1
        return bool(self.received)

    def log_later_signals(self) -> None:
        """Log the signals received since the first one (they change nothing)."""
        later = self.received[max(self._logged, 1) :]
        if later:
            logger.warning("Also received %s: already stopping.", ", ".join(later))
            self._logged += len(later)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() == self._pid:
            self.received.append(signal.Signals(signum).name)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.info("Not in the main thread: stop signals keep their handlers.")
            return
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class PreemptionCheckpointer(HookBase):
    """After an iteration that the processes agreed to stop at (``trainer._trainer.stop_agreed``,
    set by the training step), save its checkpoint, wait for every process, log how to
    continue and raise :class:`TrainingPreempted`. Placed after the LR scheduler's hook, so that
    the checkpoint equals a periodic one. A stop in the last iteration lets the run finish."""

    def __init__(self, checkpointer: Any, request: StopRequest) -> None:
        self.checkpointer = checkpointer
        self.request = request

    def before_train(self) -> None:
        self.request.install()

    def after_train(self) -> None:
        self.request.restore()

    def after_step(self) -> None:
        trainer = self.trainer
        if not trainer._trainer.stop_agreed or trainer.iter + 1 >= trainer.max_iter:
            return
        name = f"model_{trainer.iter:07d}"
        self.checkpointer.save(name, iteration=trainer.iter)
        comm.synchronize()  # no process exits before the checkpoint is complete
        self.request.log_later_signals()
        received = self.request.received
        why = received[0] if received else "another process's signal"
        logger.warning(
            "Training stopped by %s after iteration %d; checkpoint %s.pth in %s. Continue with "
            "the same command plus --resume. Exit status %d.",
            why,
            trainer.iter,
            name,
            self.checkpointer.save_dir or "OUTPUT_DIR",
            PREEMPTED_EXIT_CODE,
        )
        raise TrainingPreempted()
