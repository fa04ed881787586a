"""Starting one training job on one or many processes. Started by ``torchrun`` (environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), each process joins an
``env://`` process group, NCCL on GPUs and gloo on CPU, and registers Detectron2's per-machine
process group. Otherwise Detectron2's own ``launch`` spawns ``--num-gpus`` processes per
machine (which requires CUDA and NCCL); that launching process passes SIGTERM, SIGUSR1 and
SIGINT on to them (:mod:`.preemption`) and exits with their status when they stop on one.
:func:`create_ddp_model` wraps a model for either, without ``device_ids`` on the CPU (gloo)."""

import argparse
import logging
import multiprocessing
import os
import signal
from datetime import timedelta
from types import FrameType
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from .preemption import PREEMPTED_EXIT_CODE, STOP_SIGNALS, TrainingPreempted

__all__ = ["create_ddp_model", "is_torchrun", "launch_job"]

logger = logging.getLogger(__name__)

# Environment variables set by torchrun (and by SLURM/Kubernetes launchers that mimic it).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Same default as Detectron2's launch.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model``; CPU models get no ``device_ids`` (gloo)."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return d2_create_ddp_model(model, **kwargs)


def is_torchrun() -> bool:
    """Whether this process was started by torchrun (or an equivalent env:// launcher)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def _init_torchrun_process_group(timeout: timedelta) -> None:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    if world_size % local_size != 0:
        raise RuntimeError(
            f"WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE {local_size}: "
            "every machine must run the same number of processes."
        )
    # Detectron2 keeps a group of the processes of this machine (comm.get_local_rank()).
    # new_group must be called by every process for every group.
    for machine in range(world_size // local_size):
        ranks = list(range(machine * local_size, (machine + 1) * local_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            comm._LOCAL_PROCESS_GROUP = group
    logger.info(
        "torchrun: rank %d of %d (local rank %d of %d), backend %s",
        rank,
        world_size,
        local_rank,
        local_size,
        backend,
    )
    comm.synchronize()


def _pass_on(signum: int, frame: Optional[FrameType]) -> None:
    for child in multiprocessing.active_children():
        os.kill(child.pid, signum)


def forward_stop_signals() -> Dict[int, Any]:
    """In a process that launched the training processes: pass stop signals on to them (they
    save and exit) instead of dying first; returns the previous handlers."""
    return {signum: signal.signal(signum, _pass_on) for signum in STOP_SIGNALS}


def launch_job(
    main_func: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(args)`` in this process under torchrun, else through Detectron2's
    ``launch`` with ``args.num_gpus``, ``args.num_machines``, ``args.machine_rank`` and
    ``args.dist_url``."""
    if is_torchrun():
        _init_torchrun_process_group(timeout)
        try:
            main_func(args)
        finally:
            dist.destroy_process_group()
        return
    if args.num_gpus * args.num_machines > 1 and not torch.cuda.is_available():
        raise SystemExit(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} needs CUDA, which "
            "is not available. For several CPU processes start this script with torchrun, "
            f"e.g. torchrun --nproc_per_node {args.num_gpus} train_net.py --config-file ..."
        )
    spawns = args.num_gpus * args.num_machines > 1
    previous = forward_stop_signals() if spawns else {}
    try:
        launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timeout,
        )
    except ProcessExitedException as e:
        if e.exit_code == PREEMPTED_EXIT_CODE:
            raise TrainingPreempted() from e
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
