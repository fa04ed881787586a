"""train_net.py end to end on a tiny user-style COCO dataset, in subprocesses: a few training
iterations write checkpoints, ``--eval-only`` prints Detectron2's COCO table, a run killed
with SIGKILL after its first checkpoint finishes with ``--resume`` from that iteration, and a
``NUM_CLASSES`` that disagrees with the dataset is refused with both numbers."""

import os
import signal
import subprocess
import time

import pytest
import torch
from train_net_helpers import (
    REPO,
    TINY_CONFIG,
    env,
    make_tiny_datasets,
    run_train_net,
    tiny_dataset_args,
    tiny_overrides,
    train_net_command,
)

# A killed run must not reach its end before the kill: long enough, killed within seconds.
KILLED_RUN_ITERS = 100
FIRST_CHECKPOINT_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_datasets(str(tmp_path_factory.mktemp("tiny_coco")))


def _iteration(path):
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def test_train_then_eval_only(tiny_data, tmp_path):
    out = str(tmp_path / "train")
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    r = run_train_net(args + tiny_overrides(out))
    assert r.returncode == 0, r.stdout[-4000:]
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


def test_sigkill_after_first_checkpoint_then_resume(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    args = (
        ["--config-file", TINY_CONFIG]
        + tiny_dataset_args(tiny_data)
        + tiny_overrides(out)
        + ["SOLVER.MAX_ITER", str(KILLED_RUN_ITERS), "SOLVER.CHECKPOINT_PERIOD", "5"]
        + ["SOLVER.STEPS", "(80,)", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
    )
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            train_net_command(args), cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT
        )
        marker = os.path.join(out, "last_checkpoint")
        deadline = time.time() + FIRST_CHECKPOINT_TIMEOUT_S
        while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    with open(marker) as f:
        last = os.path.join(out, f.read().strip())
    killed_at = _iteration(last)
    assert killed_at < KILLED_RUN_ITERS - 1
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    r = run_train_net(["--resume"] + args, timeout=400)
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"Starting training from iteration {killed_at + 1}" in r.stdout
    assert f"Loading trainer from {last}" in r.stdout  # optimizer and LR scheduler too
    assert _iteration(os.path.join(out, "model_final.pth")) == KILLED_RUN_ITERS - 1


def test_num_classes_disagreeing_with_dataset_is_refused(tiny_data, tmp_path):
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    r = run_train_net(args + tiny_overrides(str(tmp_path)) + ["MODEL.SAM_DETR.NUM_CLASSES", "80"])
    assert r.returncode != 0
    assert "MODEL.SAM_DETR.NUM_CLASSES is 80 but dataset 'tiny_train' has 2 classes" in r.stdout
