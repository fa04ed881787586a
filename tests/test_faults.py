"""Faults and fine-tuning, in process: a non-finite loss stops training with a clear message
and leaves the earlier checkpoints loadable; a wrong ``MODEL.WEIGHTS`` path or a file that is
not a checkpoint fails with the path in the message; an unknown config key is named; a
checkpoint with another class count loads everything but the class heads, in one log line."""

import argparse
import logging

import pytest
import torch
from detectron2.modeling import build_model
from sam_detr.checkpoint import CheckpointError, SAMDETRCheckpointer
from train_net_helpers import TINY_CONFIG, make_tiny_datasets, tiny_cfg, tiny_dataset_args

import train_net

NAN_AT_ITER = 2


def _args(*extra, opts=()):
    parser = train_net.argument_parser()
    return parser.parse_args(["--config-file", TINY_CONFIG] + list(extra) + list(opts))


def test_non_finite_loss_stops_with_earlier_checkpoints_intact(tmp_path):
    data = make_tiny_datasets(str(tmp_path / "data"))
    args = _args(
        *tiny_dataset_args(data, prefix="nan"),
        opts=[
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "DATASETS.TRAIN",
            "('nan_train',)",
            "DATASETS.TEST",
            "()",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
            "SOLVER.MAX_ITER",
            "6",
        ],
    )
    train_net.register_coco_datasets(args.coco_dataset)
    trainer = train_net.Trainer(train_net.setup(args))
    assert isinstance(trainer.checkpointer, SAMDETRCheckpointer)
    model = trainer._trainer.model
    forward, calls = model.forward, []

    def nan_forward(batched_inputs):
        losses = forward(batched_inputs)
        calls.append(1)
        if len(calls) > NAN_AT_ITER:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses

    model.forward = nan_forward
    with pytest.raises(FloatingPointError, match=f"non-finite loss at iteration {NAN_AT_ITER}"):
        trainer.train()
    last = trainer.checkpointer.get_checkpoint_file()
    assert last.endswith(f"model_{NAN_AT_ITER - 1:07d}.pth")
    fresh = build_model(tiny_cfg())
    SAMDETRCheckpointer(fresh).load(last)
    assert all(torch.isfinite(p).all() for p in fresh.state_dict().values())
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_missing_weights_file_is_named(tmp_path):
    path = str(tmp_path / "nowhere" / "model.pth")
    with pytest.raises(CheckpointError, match="nowhere/model.pth' does not exist"):
        train_net.main(
            _args("--eval-only", opts=["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path)])
        )


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"'{path}' is not a PyTorch or Detectron2"):
        SAMDETRCheckpointer(build_model(tiny_cfg())).load(str(path))


def test_checkpoint_without_model_state_is_named(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no model state_dict"):
        SAMDETRCheckpointer(build_model(tiny_cfg())).load(str(path))


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="Non-existent key: MODEL.SAM_DETR.NUM_CLASSSES"):
        train_net.setup(_args(opts=["MODEL.SAM_DETR.NUM_CLASSSES", "3"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY_CONFIG}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    parser = train_net.argument_parser()
    with pytest.raises(ValueError, match="Non-existent config key: SOLVER.BASE_LRR"):
        train_net.setup(parser.parse_args(["--config-file", str(bad)]))


def test_finetune_from_other_class_count(tmp_path, caplog):
    source = build_model(tiny_cfg("MODEL.SAM_DETR.NUM_CLASSES", "5"))
    path = str(tmp_path / "coco_like.pth")
    torch.save({"model": source.state_dict(), "iteration": 7}, path)

    target = build_model(tiny_cfg("MODEL.SAM_DETR.NUM_CLASSES", "3"))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO):
        SAMDETRCheckpointer(target).load(path)
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "has 5 classes" in lines[0] and ") 3;" in lines[0]
    others = [r.getMessage() for r in caplog.records if "re-initialised" not in r.getMessage()]
    assert not [m for m in others if "class_embed" in m], "class heads reported twice"

    heads = [k for k in before if k.split(".")[0] == "class_embed"]
    assert heads and all(before[k].shape[0] == 3 for k in heads)
    after, src = target.state_dict(), source.state_dict()
    for k in after:
        expected = before[k] if k in heads else src[k]
        assert torch.equal(after[k], expected), k


def test_class_head_names_cover_all_class_dimensions():
    model = build_model(tiny_cfg("MODEL.SAM_DETR.NUM_CLASSES", "3"))
    sized = [k for k, v in model.state_dict().items() if v.ndim and v.shape[0] == 3]
    assert sized and all(k.startswith("class_embed.") for k in sized)
    assert len(sized) == 2 * tiny_cfg().MODEL.SAM_DETR.DEC_LAYERS  # weight and bias per layer


def test_parser_keeps_detectron2_arguments():
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            "c.yaml",
            "--num-gpus",
            "8",
            "--num-machines",
            "2",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://h:1234",
            "--resume",
            "--eval-only",
            "A.B",
            "1",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert args.dist_url == "tcp://h:1234" and args.resume and args.eval_only
    assert args.opts == ["A.B", "1"]
