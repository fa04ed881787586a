"""train_net.py end to end on a tiny user-style COCO dataset, in subprocesses: a few training
iterations write checkpoints, ``--eval-only`` prints Detectron2's COCO table, a run killed
between saves and during a save and stopped by a full disk ends after ``--resume`` exactly as
an uninterrupted run, and a ``NUM_CLASSES`` that disagrees with the dataset is refused with
both numbers."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_net_helpers import (
    REPO,
    TINY_CONFIG,
    env,
    hide_module,
    make_tiny_datasets,
    run_train_net,
    tiny_dataset_args,
    tiny_overrides,
    train_net_command,
)

# A killed run must not reach its end before the kill: long enough, killed within seconds.
RESUMED_RUN_ITERS = 20
FIRST_CHECKPOINT_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_datasets(str(tmp_path_factory.mktemp("tiny_coco")))


def _iteration(path):
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def test_train_then_eval_only(tiny_data, tmp_path):
    """Also without tensorboard: upstream Detectron2 imports it only at the first write."""
    out = str(tmp_path / "train")
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    no_tensorboard = hide_module(str(tmp_path / "hidden"), "tensorboard")
    r = run_train_net(args + tiny_overrides(out), first_paths=[no_tensorboard])
    assert r.returncode == 0, r.stdout[-4000:]
    assert "tensorboard is not installed: no TensorBoard event files" in r.stdout
    assert not [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    assert os.path.isfile(os.path.join(out, "model_0000001.pth"))  # CHECKPOINT_PERIOD 2
    final = os.path.join(out, "model_final.pth")
    assert _iteration(final) == 3  # MAX_ITER 4
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(ckpt)
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # AdamW moments
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 4  # the LR scheduler

    r = run_train_net(
        args + ["--eval-only"] + tiny_overrides(str(tmp_path / "eval")) + ["MODEL.WEIGHTS", final]
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "Evaluation results for bbox" in r.stdout
    assert "|  AP   |  AP50  |" in r.stdout
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in r.stdout


def _wait_for_first_checkpoint(proc, out):
    marker = os.path.join(out, "last_checkpoint")
    deadline = time.time() + FIRST_CHECKPOINT_TIMEOUT_S
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return marker


def _limit_file_size(limit):
    """preexec_fn: files may not grow beyond ``limit`` bytes."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


# train_net.py with SIGXFSZ at its default action: Python ignores it (then a write beyond
# RLIMIT_FSIZE fails, as on a full disk); restored, the process is killed in that write.
KILLED_BY_SIGXFSZ = (
    "import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _run(command, log_path, preexec_fn):
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        proc.wait(timeout=RUN_TIMEOUT_S)
    return proc.returncode, open(log_path).read()


def test_kill_full_disk_and_resume_equal_an_uninterrupted_run(tiny_data, tmp_path):
    """A run killed between saves, then killed during a save, then stopped by a full disk,
    then resumed, ends with the weights and optimiser state of an uninterrupted run (bitwise;
    with dropout, and with another number of data-loader workers)."""
    common = (
        ["--config-file", TINY_CONFIG]
        + tiny_dataset_args(tiny_data)
        + ["SOLVER.MAX_ITER", str(RESUMED_RUN_ITERS), "SOLVER.CHECKPOINT_PERIOD", "4"]
        + ["SOLVER.STEPS", "(15,)", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
        + ["MODEL.SAM_DETR.DROPOUT", "0.1"]
    )
    reference = str(tmp_path / "reference")
    r = run_train_net(common + tiny_overrides(reference), timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stdout[-4000:]
    assert [f for f in os.listdir(reference) if f.startswith("events.out.tfevents")]

    out = str(tmp_path / "run")
    args = common + tiny_overrides(out) + ["DATALOADER.NUM_WORKERS", "2"]
    # 1. SIGKILL as soon as a checkpoint exists (last_checkpoint is written after it).
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            train_net_command(args), cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT
        )
        marker = _wait_for_first_checkpoint(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    tagged = open(marker).read()
    last = os.path.join(out, tagged)
    killed_at = _iteration(last)
    assert killed_at < RESUMED_RUN_ITERS - 1
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    size = os.path.getsize(last)

    # 2. Resumed, then killed by SIGXFSZ half-way through writing its next checkpoint.
    command = [sys.executable, "-c", KILLED_BY_SIGXFSZ] + train_net_command(["--resume"] + args)[1:]
    code, log = _run(command, tmp_path / "xfsz.log", _limit_file_size(size // 2))
    assert code == -signal.SIGXFSZ, log[-4000:]
    assert f"Starting training from iteration {killed_at + 1}" in log
    partial = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(partial) == 1 and os.path.getsize(os.path.join(out, partial[0])) == size // 2
    assert open(marker).read() == tagged and _iteration(last) == killed_at
    assert sorted(f for f in os.listdir(out) if f.startswith("model_"))[-1] == tagged

    # 3. Resumed on a "full disk": the failed save stops the run with a clear error.
    command = train_net_command(["--resume"] + args)
    code, log = _run(command, tmp_path / "full.log", _limit_file_size(size // 2))
    assert code != 0
    assert f"Removed {partial[0]}, left by an interrupted save" in log
    assert "Could not write" in log and "File too large" in log
    assert f"The previous checkpoint '{last}' and last_checkpoint are intact" in log
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert open(marker).read() == tagged and _iteration(last) == killed_at

    # 4. Resumed normally: it ends as the uninterrupted run did.
    r = run_train_net(["--resume"] + args, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"Resuming at iteration {killed_at + 1}" in r.stdout
    ours = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    theirs = torch.load(os.path.join(reference, "model_final.pth"), weights_only=True)
    assert ours["iteration"] == theirs["iteration"] == RESUMED_RUN_ITERS - 1
    for k, v in theirs["model"].items():
        assert torch.equal(ours["model"][k], v), k
    moments = [s["trainer"]["_trainer"]["optimizer"]["state"] for s in (ours, theirs)]
    for i, state in moments[1].items():
        for k, v in state.items():
            assert torch.equal(moments[0][i][k], v), (i, k)
    schedules = [s["trainer"]["hooks"]["LRScheduler"] for s in (ours, theirs)]
    assert schedules[0] == schedules[1]


def test_num_classes_disagreeing_with_dataset_is_refused(tiny_data, tmp_path):
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    r = run_train_net(args + tiny_overrides(str(tmp_path)) + ["MODEL.SAM_DETR.NUM_CLASSES", "80"])
    assert r.returncode != 0
    assert "MODEL.SAM_DETR.NUM_CLASSES is 80 but dataset 'tiny_train' has 2 classes" in r.stdout
