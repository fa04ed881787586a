"""A real SIGTERM / SIGUSR1 sent to a real train_net.py mid-training: the iteration under way
finishes, its checkpoint is written (a second and third signal during the save change nothing),
the run exits with ``PREEMPTED_EXIT_CODE`` and says how to continue, and ``--resume`` ends with
the weights, optimiser state and schedule of an uninterrupted run, bitwise. Under torchrun a
signal to one process stops both at the same iteration; the launching process of
``--num-gpus`` passes signals on and exits with the status of its processes."""

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import sam_detr.engine.launch as launch_module
import torch
from sam_detr.engine.launch import forward_stop_signals
from sam_detr.engine.preemption import PREEMPTED_EXIT_CODE
from torch.multiprocessing import ProcessExitedException
from train_net_helpers import (
    TINY_CONFIG,
    TRAIN_NET,
    assert_same_final_checkpoint,
    env,
    make_tiny_datasets,
    run_train_net,
    tiny_dataset_args,
    tiny_overrides,
)

ITERS = 10
# The iteration during which the signal is sent (it is held until the signal arrives).
SIGNALLED_AT = 4
# What the wrapper below reads: the rank to be signalled, where it writes its pid when
# SIGNALLED_AT starts, and whether to signal itself twice more during the checkpoint's save.
RANK_ENV, READY_ENV = "SAM_DETR_TEST_SIGNALLED_RANK", "SAM_DETR_TEST_READY"
SIGNALS_IN_SAVE_ENV = "SAM_DETR_TEST_SIGNALS_IN_SAVE"
# train_net.py; the signalled rank waits in iteration SIGNALLED_AT until the signal arrives
# (at most HOLD_S seconds), the others wait for it in the step's all-reduce.
WRAPPER = f"""import os, runpy, signal, sys, time
import detectron2.utils.comm as comm
from sam_detr.checkpoint.checkpointer import SAMDETRCheckpointer
from sam_detr.engine.train_step import SAMDETRTrainStep

HOLD_S = 60
_run_step, _save = SAMDETRTrainStep.run_step, SAMDETRCheckpointer.save

def run_step(self):
    if self.iter == {SIGNALLED_AT} and comm.get_rank() == int(os.environ["{RANK_ENV}"]):
        with open(os.environ["{READY_ENV}"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(os.environ["{READY_ENV}"] + ".tmp", os.environ["{READY_ENV}"])
        start = time.time()
        while not self._stop_requested() and time.time() - start < HOLD_S:
            time.sleep(0.05)
    _run_step(self)

def save(self, name, **kwargs):
    if os.environ.get("{SIGNALS_IN_SAVE_ENV}") and not name.endswith("final"):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGUSR1)
    _save(self, name, **kwargs)

SAMDETRTrainStep.run_step, SAMDETRCheckpointer.save = run_step, save
sys.argv = [{TRAIN_NET!r}] + sys.argv[1:]
runpy.run_path({TRAIN_NET!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def tiny_data(module_tmp_dir):
    return make_tiny_datasets(str(module_tmp_dir("preemption_data")))


def _common(tiny_data):
    return (
        ["--config-file", TINY_CONFIG]
        + tiny_dataset_args(tiny_data)
        + ["SOLVER.MAX_ITER", str(ITERS), "SOLVER.CHECKPOINT_PERIOD", "100"]
        + ["SOLVER.STEPS", "(6,)", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
        + ["MODEL.SAM_DETR.DROPOUT", "0.1"]
    )


def _signalled_run(tmp_path, args, launcher=(), signum=signal.SIGTERM, rank=0, **extra_env):
    """Run the wrapper, send ``signum`` to the process of ``rank`` once it is in iteration
    SIGNALLED_AT; return (exit status, output)."""
    wrapper = tmp_path / "held_train_net.py"
    wrapper.write_text(WRAPPER)
    ready = str(tmp_path / "ready")
    log = tmp_path / "output.txt"
    with open(log, "w") as out:
        p = subprocess.Popen(
            [sys.executable, *launcher, str(wrapper), *args],
            env={**env(), READY_ENV: ready, RANK_ENV: str(rank), **extra_env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 180
            while not os.path.exists(ready) and p.poll() is None:
                assert time.time() < deadline, "training never reached the iteration"
                time.sleep(0.05)
            if p.poll() is None:
                os.kill(int(open(ready).read()), signum)
            p.wait(timeout=180)
        finally:
            if p.poll() is None:
                p.kill()
    return p.returncode, log.read_text()


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigterm_saves_exits_and_resumes_exactly(tiny_data, tmp_path):
    common = _common(tiny_data)
    reference = str(tmp_path / "reference")
    r = run_train_net(common + tiny_overrides(reference))
    assert r.returncode == 0, r.stdout[-4000:]

    out = str(tmp_path / "run")
    args = common + tiny_overrides(out)
    rc, log = _signalled_run(tmp_path, args, **{SIGNALS_IN_SAVE_ENV: "1"})
    assert rc == PREEMPTED_EXIT_CODE, log[-4000:]
    assert f"Training stopped by SIGTERM after iteration {SIGNALLED_AT}" in log
    assert "SIGTERM received: stopping after the current iteration" in log
    assert "Also received SIGINT, SIGUSR1: already stopping" in log  # during the save
    assert "--resume" in log and "Traceback" not in log
    name = f"model_{SIGNALLED_AT:07d}.pth"
    assert open(os.path.join(out, "last_checkpoint")).read() == name
    assert sorted(f for f in os.listdir(out) if f.startswith("model_")) == [name]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert _load(os.path.join(out, name))["iteration"] == SIGNALLED_AT

    r = run_train_net(["--resume"] + args)
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"Resuming at iteration {SIGNALLED_AT + 1}" in r.stdout
    assert_same_final_checkpoint(out, reference, ITERS - 1)


def test_torchrun_signal_to_one_process_stops_both(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = _common(tiny_data) + tiny_overrides(out)
    rc, log = _signalled_run(tmp_path, args, launcher=launcher, signum=signal.SIGUSR1, rank=1)
    assert rc != 0, log[-4000:]
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in log  # torchrun's summary of the processes
    # Rank 0 (the log shown) got no signal and stopped at the same iteration.
    assert f"Training stopped by another process's signal after iteration {SIGNALLED_AT}" in log
    name = f"model_{SIGNALLED_AT:07d}.pth"
    assert open(os.path.join(out, "last_checkpoint")).read() == name
    assert _load(os.path.join(out, name))["iteration"] == SIGNALLED_AT


def _stop_on_sigterm(ready, record):
    signal.signal(signal.SIGTERM, lambda signum, frame: open(record, "w").write("SIGTERM"))
    open(ready, "w").close()
    while not os.path.exists(record):
        time.sleep(0.01)


def test_launching_process_passes_signals_on(tmp_path):
    """The process of Detectron2's ``launch`` that spawned the training processes (with
    ``--num-gpus`` > 1) passes a stop signal on instead of dying before them."""
    ready, record = str(tmp_path / "ready"), str(tmp_path / "record")
    child = multiprocessing.get_context("fork").Process(
        target=_stop_on_sigterm, args=(ready, record)
    )
    child.start()
    previous = forward_stop_signals()
    try:
        while not os.path.exists(ready):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        child.join(timeout=30)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0 and open(record).read() == "SIGTERM"


def test_launching_process_exits_with_the_preempted_status(monkeypatch):
    def preempted(*args, **kwargs):
        raise ProcessExitedException("stopped", 0, 1234, PREEMPTED_EXIT_CODE)

    monkeypatch.setattr(launch_module, "launch", preempted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto")
    with pytest.raises(SystemExit) as stopped:
        launch_module.launch_job(lambda a: None, args)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    assert signal.getsignal(signal.SIGTERM) is not launch_module._pass_on
