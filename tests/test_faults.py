"""Faults during training, in process with real backward passes: a step whose gradients are NaN
(or whose forward pass is) does not change the weights, the optimiser state or BatchNorm's
statistics and is counted; too many in a row stop the run with a clear message and only
finite checkpoints on disk. An OUTPUT_DIR that cannot be created or written, a missing
``MODEL.WEIGHTS`` file and an unknown config key are named before any work; aspect-ratio
grouping (which would break the exact resume) and a ``NUM_CLASSES`` that disagrees with the
dataset (both numbers named) are refused."""

import argparse
import os

import pytest
import torch
from sam_detr.engine.train_step import NonFiniteTrainingError
from sam_detr.engine.trainer import OutputDirError
from sam_detr.weights import CheckpointError
from train_net_helpers import (
    TINY_CONFIG,
    limit_file_size,
    make_tiny_datasets,
    run_train_net,
    tiny_dataset_args,
)

import train_net


def _args(*extra, opts=()):
    parser = train_net.argument_parser()
    return parser.parse_args(["--config-file", TINY_CONFIG] + list(extra) + list(opts))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_datasets(str(tmp_path_factory.mktemp("faults_data")))


def _trainer(tiny_data, out, *opts):
    args = _args(
        *tiny_dataset_args(tiny_data, prefix="faults"),
        opts=[
            "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('faults_train',)", "DATASETS.TEST", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1", *opts,
        ],
    )  # fmt: skip
    train_net.register_coco_datasets(args.coco_dataset)
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    return trainer


def _snapshot(trainer):
    model = trainer.model
    optimizer = trainer.optimizer.state_dict()["state"]
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.items()},
    )


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StepRecorder:
    """Takes snapshots of the trainer's state before and after iteration ``at``."""

    def __init__(self, trainer, at):
        self.trainer, self.at, self.before, self.after = trainer, at, None, None
        step = trainer._trainer.run_step

        def run_step():
            if trainer.iter == at:
                self.before = _snapshot(trainer)
            step()
            if trainer.iter == at:
                self.after = _snapshot(trainer)

        trainer._trainer.run_step = run_step


def test_nan_gradients_skip_the_step_and_training_goes_on(tiny_data, tmp_path):
    # BatchNorm: the skipped step's forward pass must not leave its statistics behind.
    trainer = _trainer(
        tiny_data, tmp_path / "out", "MODEL.RESNETS.NORM", "BN", "SOLVER.MAX_ITER", "5"
    )
    model = trainer.model
    weight = model.class_embed[0].weight
    weight.register_hook(lambda g: g * float("nan") if trainer.iter == 2 else g)
    recorder = StepRecorder(trainer, at=2)
    trainer.train()

    weights_before, moments_before = recorder.before
    weights_after, moments_after = recorder.after
    assert _same(weights_before, weights_after), "a skipped step changed weights or BN stats"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # not frozen
    assert any(k.endswith("num_batches_tracked") for k in weights_before)
    assert all(_same(moments_before[i], moments_after[i]) for i in moments_before)
    assert trainer._trainer.skipped_steps == 1
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    assert not _same(final, weights_after)  # later steps trained again


def test_nan_forward_from_iteration_2_on_stops_with_finite_checkpoints(tiny_data, tmp_path):
    trainer = _trainer(
        tiny_data, tmp_path / "out", "SOLVER.MAX_ITER", "8", "SOLVER.MAX_SKIPPED_STEPS", "2",
        "MODEL.RESNETS.NORM", "BN",
    )  # fmt: skip
    model = trainer.model

    def poison(module, inputs):
        return (inputs[0] * float("nan"),) if trainer.iter >= 2 else None

    model.backbone.register_forward_pre_hook(poison)
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.train()
    message = str(err.value)
    assert "3 consecutive steps (iterations 2-4) had a non-finite loss" in message
    assert "SOLVER.MAX_SKIPPED_STEPS=2" in message
    assert "model_0000003.pth" in message and "--resume" in message
    out = tmp_path / "out"
    assert not (out / "model_final.pth").exists()
    saved = sorted(f for f in os.listdir(out) if f.startswith("model_"))
    assert saved == [f"model_{i:07d}.pth" for i in range(4)]
    first_good = torch.load(out / "model_0000001.pth", weights_only=True)["model"]
    for name in saved:
        state = torch.load(out / name, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        if name >= "model_0000002.pth":  # every later step was skipped
            assert _same(state, first_good), name


def test_output_dir_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match=f"OUTPUT_DIR '{blocker}/run' cannot be used"):
        train_net.setup(_args(opts=["OUTPUT_DIR", str(blocker / "run")]))
    assert blocker.read_text() == "not a folder"


# Files may not grow beyond this (bytes): Python's start-up still works, a full disk begins.
NEARLY_FULL_DISK = 4096


def test_unwritable_output_dir_is_refused_before_any_work(tmp_path):
    """Files cannot grow past a few KiB (RLIMIT_FSIZE, as a full disk): the run stops before
    writing anything."""
    out = tmp_path / "out"
    r = run_train_net(
        ["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(out)],
        timeout=120,
        preexec_fn=limit_file_size(NEARLY_FULL_DISK),
    )
    assert r.returncode != 0
    assert f"OUTPUT_DIR '{out}' cannot be used: File too large" in r.stdout
    assert os.listdir(out) == []


def test_missing_weights_file_is_named(tmp_path):
    path = str(tmp_path / "nowhere" / "model.pth")
    with pytest.raises(
        CheckpointError, match=r"nowhere/model.pth' \(MODEL.WEIGHTS\) does not exist"
    ):
        train_net.main(
            _args("--eval-only", opts=["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path)])
        )


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="Non-existent key: MODEL.SAM_DETR.NUM_CLASSSES"):
        train_net.setup(_args(opts=["MODEL.SAM_DETR.NUM_CLASSSES", "3"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY_CONFIG}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    parser = train_net.argument_parser()
    with pytest.raises(ValueError, match="Non-existent config key: SOLVER.BASE_LRR"):
        train_net.setup(parser.parse_args(["--config-file", str(bad)]))


def test_training_refuses_aspect_ratio_grouping(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="ASPECT_RATIO_GROUPING False"):
        _trainer(tiny_data, tmp_path, "DATALOADER.ASPECT_RATIO_GROUPING", "True")


def test_parser_keeps_detectron2_arguments():
    args = train_net.argument_parser().parse_args(
        [
            "--config-file", "c.yaml", "--num-gpus", "8", "--num-machines", "2",
            "--machine-rank", "1", "--dist-url", "tcp://h:1234", "--resume", "--eval-only",
            "A.B", "1",
        ]
    )  # fmt: skip
    assert isinstance(args, argparse.Namespace)
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert args.dist_url == "tcp://h:1234" and args.resume and args.eval_only
    assert args.opts == ["A.B", "1"]


def test_num_classes_disagreeing_with_dataset_is_refused(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES is 80 but dataset 'faults_train' has 2 "):
        _trainer(tiny_data, tmp_path, "MODEL.SAM_DETR.NUM_CLASSES", "80")
