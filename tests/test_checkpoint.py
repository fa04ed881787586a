"""Checkpoint files and weight loading, on real files: saves are atomic and readable, weights
that are not finite are never written, truncated and empty files are named as damaged,
``--resume`` skips a damaged newest checkpoint, and loading is strict for evaluation and
prediction (ours, Detectron2's plain checkpointer and DefaultPredictor alike) with the two
training relaxations (backbone-only ``.pkl`` start, class-count change) and the config key
that turns strictness off."""

import logging
import os
import pickle
import stat

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from sam_detr.checkpoint.checkpointer import SAMDETRCheckpointer
from sam_detr.weights import CheckpointError, DamagedCheckpointError, WeightsMismatchError
from train_net_helpers import TINY_CONFIG, tiny_cfg

import train_net


def tiny_model(*overrides):
    torch.manual_seed(0)
    return build_model(tiny_cfg(*overrides))


def saved(model, path, **extra):
    torch.save({"model": model.state_dict(), **extra}, path)
    return str(path)


def assert_same_weights(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for k in keys if keys is not None else sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_is_atomic_readable_and_tags_last(tmp_path):
    model = tiny_model()
    checkpointer = SAMDETRCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    mode = stat.S_IMODE(os.stat(tmp_path / "model_0000001.pth").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's private 0600
    loaded = build_model(tiny_cfg())
    assert SAMDETRCheckpointer(loaded).load(str(tmp_path / "model_0000001.pth"))["iteration"] == 1
    assert_same_weights(loaded, model)


def test_non_finite_weights_are_never_saved(tmp_path):
    model = tiny_model()
    checkpointer = SAMDETRCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()
    with torch.no_grad():
        model.class_embed[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="class_embed.0.weight") as err:
        checkpointer.save("model_0000003")
    assert "model_0000001.pth' and last_checkpoint are intact" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before


@pytest.mark.parametrize("keep", [0, 1000, 0.5])
def test_truncated_or_empty_checkpoint_is_named_damaged(tmp_path, keep):
    path = saved(tiny_model(), tmp_path / "model.pth")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(DamagedCheckpointError, match=f"'{path}' is (empty|a damaged)") as err:
        SAMDETRCheckpointer(tiny_model()).load(path)
    assert "convert" not in str(err.value)


def test_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"'{path}' is not a PyTorch or Detectron2") as err:
        SAMDETRCheckpointer(tiny_model()).load(str(path))
    assert not isinstance(err.value, DamagedCheckpointError)
    assert "convert_official_checkpoint.py" in str(err.value)


def test_checkpoint_without_model_state_is_named(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no model state_dict"):
        SAMDETRCheckpointer(tiny_model()).load(str(path))


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, caplog):
    model = tiny_model()
    checkpointer = SAMDETRCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    checkpointer.save("model_0000003", iteration=3)
    newest = tmp_path / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[:5000])  # damaged on disk after the save
    (tmp_path / ".model_0000005.pth.abc.tmp").write_bytes(b"partial")  # an interrupted save
    (tmp_path / ".notes.tmp").write_text("a user's file")

    fresh = build_model(tiny_cfg())
    with caplog.at_level(logging.WARNING):
        resumer = SAMDETRCheckpointer(fresh, str(tmp_path), fine_tuning=True)
        resumer.remove_interrupted_saves()
        resumed = resumer.resume_or_load("", resume=True)
    assert resumed["iteration"] == 1  # what Detectron2's resume_or_load returns
    assert all(torch.equal(v, good[k]) for k, v in fresh.state_dict().items())
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "Cannot resume from" in messages and "model_0000003.pth" in messages
    assert "a damaged or incomplete checkpoint" in messages
    assert not (tmp_path / ".model_0000005.pth.abc.tmp").exists()
    assert (tmp_path / ".notes.tmp").read_text() == "a user's file"


def test_resume_without_checkpoint_loads_nothing(tmp_path):
    assert SAMDETRCheckpointer(tiny_model(), str(tmp_path)).resume_last() is None


def test_resume_with_only_damaged_checkpoints_stops(tmp_path):
    """Not a silent restart from MODEL.WEIGHTS, whose first save would bury the run."""
    checkpointer = SAMDETRCheckpointer(tiny_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints in .* can be loaded"):
        SAMDETRCheckpointer(tiny_model(), str(tmp_path)).resume_last()


def test_resume_is_never_fine_tuning(tmp_path):
    """A run resumed with another NUM_CLASSES than its checkpoints is refused (re-initialised
    heads and an optimiser state of other shapes would follow)."""
    SAMDETRCheckpointer(tiny_model(), str(tmp_path)).save("model_0000001", iteration=1)
    other = SAMDETRCheckpointer(
        tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "5"), str(tmp_path), fine_tuning=True
    )
    with pytest.raises(WeightsMismatchError, match="classes, the model 5"):
        other.resume_last()
    assert other.fine_tuning


def test_eval_refuses_another_class_count(tmp_path):
    path = saved(tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "5"), tmp_path / "five.pth")
    parser = train_net.argument_parser()
    args = parser.parse_args(
        ["--config-file", TINY_CONFIG, "--eval-only"]
        + ["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "out")]
        + ["MODEL.SAM_DETR.NUM_CLASSES", "3", "DATASETS.TEST", "()"]
    )
    with pytest.raises(WeightsMismatchError) as err:
        train_net.main(args)
    message = str(err.value)
    assert "The checkpoint has 5 classes, the model 3" in message
    assert "MODEL.SAM_DETR.NUM_CLASSES 5" in message
    assert "class_embed.0.weight (5, 64) in the checkpoint, (3, 64) in the model" in message


def test_class_head_of_another_width_is_not_a_class_count_change(tmp_path):
    source = tiny_model("MODEL.SAM_DETR.HIDDEN_DIM", "32", "MODEL.SAM_DETR.NHEADS", "4")
    path = saved(source, tmp_path / "narrow.pth")
    with pytest.raises(WeightsMismatchError) as err:
        SAMDETRCheckpointer(tiny_model(), fine_tuning=True).load(path)
    assert "classes" not in str(err.value)
    message = str(err.value)
    assert "input_proj.0.weight (32, 256, 1, 1) in the checkpoint, (64, 256, 1, 1)" in message
    assert "in all)" in message  # every mis-shaped tensor is counted


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    state = tiny_model().state_dict()
    state.pop("reference_boxes.weight")
    state["extra.weight"] = torch.zeros(2)
    path = str(tmp_path / "edited.pth")
    torch.save({"model": state}, path)
    for fine_tuning in (False, True):
        with pytest.raises(WeightsMismatchError) as err:
            SAMDETRCheckpointer(tiny_model(), fine_tuning=fine_tuning).load(path)
        assert "missing in the checkpoint: reference_boxes.weight" in str(err.value)
        assert "not in the model: extra.weight" in str(err.value)


def test_plain_detectron2_loading_is_strict_too(tmp_path):
    """Detectron2's own checkpointer (as DefaultPredictor uses it) drops mis-shaped tensors and
    loads with strict=False: the model's loading hook refuses the result."""
    path = saved(tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "5"), tmp_path / "five.pth")
    with pytest.raises(WeightsMismatchError, match="missing in the checkpoint: class_embed.0"):
        DetectionCheckpointer(tiny_model()).load(path)
    cfg = tiny_cfg("MODEL.WEIGHTS", path)
    with pytest.raises(WeightsMismatchError, match="SAMDETRPredictor"):
        DefaultPredictor(cfg)


def test_strict_weights_false_loads_what_fits(tmp_path, caplog):
    source = tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "5")
    path = saved(source, tmp_path / "five.pth")
    target = tiny_model("MODEL.SAM_DETR.STRICT_WEIGHTS", "False")
    with caplog.at_level(logging.WARNING):
        SAMDETRCheckpointer(target).load(path)
    assert "class_embed.0.weight" in caplog.text  # Detectron2's warning about the shapes
    same = [k for k in target.state_dict() if not k.startswith("class_embed.")]
    assert_same_weights(target, source, same)


def test_finetune_from_other_class_count(tmp_path, caplog):
    source = tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "5")
    path = saved(source, tmp_path / "coco_like.pth", iteration=7)
    target = tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "3")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO):
        SAMDETRCheckpointer(target, fine_tuning=True).load(path)
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "has 5 classes" in lines[0] and ") 3;" in lines[0]
    others = [r.getMessage() for r in caplog.records if "re-initialised" not in r.getMessage()]
    assert not [m for m in others if "class_embed" in m], "class heads reported twice"
    heads = [k for k in before if k.split(".")[0] == "class_embed"]
    assert heads and all(before[k].shape[0] == 3 for k in heads)
    after, src = target.state_dict(), source.state_dict()
    for k in after:
        assert torch.equal(after[k], before[k] if k in heads else src[k]), k


def test_class_head_names_cover_all_class_dimensions():
    model = tiny_model("MODEL.SAM_DETR.NUM_CLASSES", "3")
    sized = [k for k, v in model.state_dict().items() if v.ndim and v.shape[0] == 3]
    assert sized and all(k.startswith("class_embed.") for k in sized)
    assert len(sized) == 2 * tiny_cfg().MODEL.SAM_DETR.DEC_LAYERS  # weight and bias per layer


def test_backbone_only_pkl_starts_training_but_not_evaluation(tmp_path, caplog):
    """An ImageNet-style Detectron2 model-zoo ``.pkl`` (backbone names without the
    ``backbone.`` prefix, numpy arrays, matched by Detectron2's name heuristics)."""
    source = tiny_model()
    blobs = {
        k[len("backbone.") :]: v.numpy()
        for k, v in source.state_dict().items()
        if k.startswith("backbone.")
    }
    path = str(tmp_path / "R-18.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)

    torch.manual_seed(3)
    target = build_model(tiny_cfg())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO):
        SAMDETRCheckpointer(target, fine_tuning=True).load(path)
    assert "Backbone-only checkpoint" in caplog.text
    for k, v in target.state_dict().items():
        expected = source.state_dict()[k] if k.startswith("backbone.") else before[k]
        assert torch.equal(v, expected), k
    with pytest.raises(WeightsMismatchError, match="missing in the checkpoint: input_proj"):
        SAMDETRCheckpointer(build_model(tiny_cfg())).load(path)
