"""train_net.py end to end on a tiny user-style COCO dataset, in subprocesses: a few training
iterations write checkpoints, ``--eval-only`` prints Detectron2's COCO table (single- and
multi-scale), a run killed
between saves and during a save and stopped by a full disk ends after ``--resume`` exactly as
an uninterrupted run."""

import os
import signal

import pytest
import torch
from train_net_helpers import (
    KILLED_AFTER_FIRST_CHECKPOINT,
    SIGXFSZ_KILLS,
    TINY_CONFIG,
    assert_same_final_checkpoint,
    hide_module,
    limit_file_size,
    make_tiny_datasets,
    python_wrapper,
    run_train_net,
    tiny_dataset_args,
    tiny_overrides,
)

# Iterations of the run that is killed and resumed (checkpoints every 4).
RESUMED_RUN_ITERS = 20
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


def test_multiscale_train_then_eval_only(tiny_data, tmp_path):
    """Multi-scale SAM-DETR (res3 + res4 of the tiny R18, deformable encoder) on CPU."""
    out = str(tmp_path / "train")
    levels = "['res3', 'res4']"
    multiscale = [
        "MODEL.RESNETS.OUT_FEATURES", levels,
        "MODEL.SAM_DETR.IN_FEATURES", levels,
        "MODEL.SAM_DETR.DECODER_IN_FEATURES", "['res4', 'res3']",
    ]  # fmt: skip
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    r = run_train_net(args + tiny_overrides(out) + multiscale)
    assert r.returncode == 0, r.stdout[-4000:]
    final = os.path.join(out, "model_final.pth")
    state = torch.load(final, map_location="cpu", weights_only=True)["model"]
    assert state["transformer.encoder.level_embed"].shape == (2, 64)
    assert "input_proj.1.0.weight" in state  # one projection per level
    r = run_train_net(
        args
        + ["--eval-only"]
        + tiny_overrides(str(tmp_path / "eval"))
        + multiscale
        + ["MODEL.WEIGHTS", final]
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in r.stdout


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
    # 1. SIGKILL right after the first checkpoint is complete (between saves).
    r = run_train_net(
        args, timeout=RUN_TIMEOUT_S, launcher=python_wrapper(KILLED_AFTER_FIRST_CHECKPOINT)
    )
    assert r.returncode == -signal.SIGKILL, r.stdout[-4000:]
    marker = os.path.join(out, "last_checkpoint")
    tagged = open(marker).read()
    last = os.path.join(out, tagged)
    killed_at = _iteration(last)
    assert killed_at == 3  # CHECKPOINT_PERIOD 4
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    size = os.path.getsize(last)

    # 2. Resumed, then killed by SIGXFSZ half-way through writing its next checkpoint.
    r = run_train_net(
        ["--resume"] + args,
        timeout=RUN_TIMEOUT_S,
        launcher=python_wrapper(SIGXFSZ_KILLS),
        preexec_fn=limit_file_size(size // 2),
    )
    assert r.returncode == -signal.SIGXFSZ, r.stdout[-4000:]
    assert f"Starting training from iteration {killed_at + 1}" in r.stdout
    partial = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(partial) == 1 and os.path.getsize(os.path.join(out, partial[0])) == size // 2
    assert open(marker).read() == tagged and _iteration(last) == killed_at
    assert sorted(f for f in os.listdir(out) if f.startswith("model_"))[-1] == tagged

    # 3. Resumed on a "full disk": the failed save stops the run with a clear error.
    r = run_train_net(
        ["--resume"] + args, timeout=RUN_TIMEOUT_S, preexec_fn=limit_file_size(size // 2)
    )
    assert r.returncode != 0
    assert f"Removed {partial[0]}, left by an interrupted save" in r.stdout
    assert "Could not write" in r.stdout and "File too large" in r.stdout
    assert f"The previous checkpoint '{last}' and last_checkpoint are intact" in r.stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert open(marker).read() == tagged and _iteration(last) == killed_at

    # 4. Resumed normally: it ends as the uninterrupted run did.
    r = run_train_net(["--resume"] + args, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"Resuming at iteration {killed_at + 1}" in r.stdout
    assert_same_final_checkpoint(out, reference, RESUMED_RUN_ITERS - 1)
