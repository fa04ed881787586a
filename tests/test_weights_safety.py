"""Weights files never run code: a crafted ``.pkl`` or ``.pth`` whose unpickling would create a
file is refused, naming the file and the Python global, by the checkpointer, by train_net.py
(training start and ``--eval-only``, in subprocesses) and by the predictor; a Detectron2-format
ImageNet ``.pkl`` converted from torchvision's ResNet-50 as Detectron2's
``convert-torchvision-to-d2.py`` does loads into the R50 backbone as with plain pickle; and
``MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS`` loads pickles that name other globals."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from sam_detr import add_sam_detr_config
from sam_detr.checkpoint.checkpointer import SAMDETRCheckpointer
from sam_detr.deploy.predictor import SAMDETRPredictor
from sam_detr.weights import UnsafeCheckpointError
from train_net_helpers import (
    REPO,
    TINY_CONFIG,
    make_tiny_datasets,
    run_train_net,
    tiny_cfg,
    tiny_dataset_args,
    tiny_overrides,
)

OPT_IN = "MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS True"


class _CreatesFile:
    """Unpickling it creates ``path`` (as a crafted weights file could do anything)."""

    def __init__(self, path, how):
        self.path, self.how = str(path), how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.path, "w"))
        return (os.system, (f"touch {self.path}",))


# name -> (how the file creates the marker, the global it names, how it is written)
CRAFTED = {
    "evil.pkl": ("open", "io.open", "pickle"),
    "evil.pth": ("system", "posix.system", "torch"),
    "legacy.pth": ("system", "posix.system", "pickle"),
}


def crafted(folder, name):
    """``(path of the crafted file, path of the file its unpickling creates)``."""
    how, _, writer = CRAFTED[name]
    marker = folder / f"{name}.created"
    path = folder / name
    if writer == "torch":
        torch.save({"model": {"w": torch.zeros(2)}, "x": _CreatesFile(marker, how)}, path)
    else:
        data = {"model": {"w": np.zeros(2, np.float32)}, "__author__": _CreatesFile(marker, how)}
        with open(path, "wb") as f:
            pickle.dump(data, f)
    return str(path), marker


def assert_refused(message, path, name):
    assert f"'{path}'" in message and f"'{CRAFTED[name][1]}'" in message, message
    assert "MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS True" in message


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_checkpointer_refuses_crafted_file(tmp_path, name):
    path, marker = crafted(tmp_path, name)
    for fine_tuning in (False, True):
        model = build_model(tiny_cfg())
        with pytest.raises(UnsafeCheckpointError) as err:
            SAMDETRCheckpointer(model, fine_tuning=fine_tuning).load(path)
        assert_refused(str(err.value), path, name)
        assert not marker.exists()
    # The file is a real attack: plain pickle (the opt-in) creates the marker.
    with pytest.raises(Exception):
        SAMDETRCheckpointer(build_model(tiny_cfg()), trust_pickle=True).load(path)
    assert marker.exists()


def test_predictor_refuses_crafted_file(tmp_path):
    path, marker = crafted(tmp_path, "evil.pkl")
    with pytest.raises(UnsafeCheckpointError) as err:
        SAMDETRPredictor(tiny_cfg("MODEL.WEIGHTS", path))
    assert_refused(str(err.value), path, "evil.pkl")
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_data(module_tmp_dir):
    return make_tiny_datasets(str(module_tmp_dir("safety_data")))


@pytest.mark.parametrize("name,eval_only", [("evil.pkl", False), ("evil.pth", True)])
def test_train_net_refuses_crafted_file(tiny_data, tmp_path, name, eval_only):
    path, marker = crafted(tmp_path, name)
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(tiny_data)
    args += ["--eval-only"] if eval_only else []
    r = run_train_net(
        args + tiny_overrides(str(tmp_path / "out")) + ["MODEL.WEIGHTS", path], timeout=120
    )
    assert r.returncode != 0
    assert "UnsafeCheckpointError" in r.stdout
    assert_refused(r.stdout, path, name)
    assert not marker.exists()


def _pickled_torch_tensors(model, path):
    """A ``.pkl`` of torch tensors (it names ``torch._utils._rebuild_tensor_v2``)."""
    with open(path, "wb") as f:
        pickle.dump({"model": model.state_dict(), "__author__": "me"}, f)
    return str(path)


def test_opt_in_loads_other_globals(tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_cfg())
    path = _pickled_torch_tensors(source, tmp_path / "tensors.pkl")
    with pytest.raises(UnsafeCheckpointError, match="'torch._utils._rebuild_tensor_v2'"):
        SAMDETRCheckpointer(build_model(tiny_cfg())).load(path)
    target = build_model(tiny_cfg())
    SAMDETRCheckpointer(target, trust_pickle=True).load(path)
    predictor = SAMDETRPredictor(tiny_cfg("MODEL.WEIGHTS", path, *OPT_IN.split()))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
        assert torch.equal(predictor.model.state_dict()[k], v), k


def torchvision_r50_pkl(path):
    """torchvision's ResNet-50 in Detectron2's format, renamed as Detectron2's
    ``tools/convert-torchvision-to-d2.py`` does (the ``R-50.pkl`` of the R50 configs): every
    tensor, the ImageNet classifier (``stem.fc``) and BatchNorm's ``num_batches_tracked``
    included, which the loading leaves out."""
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    blobs = {}
    for k, v in state.items():
        name = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        blobs[name] = v.numpy()
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)
    return str(path), state


def test_torchvision_r50_pkl_loads_as_with_plain_pickle(tmp_path, caplog):
    path, torchvision_state = torchvision_r50_pkl(tmp_path / "R-50.pkl")
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "sam_detr_R50.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    models = []
    for _ in range(2):  # the same initialisation of what the file does not hold
        torch.manual_seed(2)
        models.append(build_model(cfg))
    ours, upstream = models
    with caplog.at_level(logging.INFO):
        SAMDETRCheckpointer(ours, fine_tuning=True).load(path)
    assert "Backbone-only checkpoint" in caplog.text
    extras = [k for k in torchvision_state if k.startswith("fc.") or "num_batches" in k]
    assert f"Left out {len(extras)} tensors of the ImageNet file" in caplog.text
    # Detectron2's own reading (plain pickle) of the same file, loaded the same way.
    plain = DetectionCheckpointer(upstream)._load_file(path)
    checkpointer = SAMDETRCheckpointer(upstream, fine_tuning=True)
    checkpointer._load_file = lambda _: plain
    checkpointer.load(path)
    for k, v in upstream.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    backbone = ours.state_dict()
    assert torch.equal(backbone["backbone.stem.conv1.weight"], torchvision_state["conv1.weight"])
    assert torch.equal(
        backbone["backbone.res5.2.conv3.norm.running_var"],
        torchvision_state["layer4.2.bn3.running_var"],
    )
