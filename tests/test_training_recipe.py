"""The pieces of the DETR training recipe that need no SAM-DETR model: the DETR augmentation
mapper (output sizes, boxes following flip/resize/crop, empty images, zero-area boxes,
unreadable images), the optimiser (parameter groups, backbone multiplier), the training
step's full-model gradient clipping, the choice of precision, and the schedules of the paper
configs."""

import itertools
import math
import os
import platform
import re

import cv2
import numpy as np
import pytest
import sam_detr.modeling.autocast as autocast_module
import sam_detr.utils.cpu as cpu_module
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from sam_detr import add_sam_detr_config
from sam_detr.data.mapper import DetrDatasetMapper, ImageReadError
from sam_detr.engine.precision import (
    MixedPrecision,
    Precision,
    ScaledMixedPrecision,
    build_precision,
)
from sam_detr.engine.solver import build_optimizer
from sam_detr.engine.train_step import SAMDETRTrainStep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
PAPER_CONFIGS = sorted(f for f in os.listdir(CONFIGS) if re.match(r"sam_detr_R50.*\.yaml$", f))
COCO_TRAIN2017_IMAGES = 118287
# Distinct colours (BGR) of the boxes painted into the test image, one per class.
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def paper_cfg(name="Base-SAM-DETR.yaml"):
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    return cfg


@pytest.fixture
def painted_image(tmp_path):
    """A 640x480 image with four solid boxes and its dataset dict (XYWH boxes)."""
    h, w = 480, 640
    image = np.zeros((h, w, 3), np.uint8)
    boxes = [(20, 30, 200, 150), (300, 40, 320, 100), (100, 250, 150, 200), (500, 300, 120, 160)]
    annos = []
    for cls, (x, y, bw, bh) in enumerate(boxes):
        image[y : y + bh, x : x + bw] = COLORS[cls]
        annos.append({"bbox": [x, y, bw, bh], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cls})
    path = str(tmp_path / "painted.png")
    cv2.imwrite(path, image)
    return {"file_name": path, "height": h, "width": w, "image_id": 0, "annotations": annos}


def test_train_mapper_sizes_and_boxes(painted_image):
    cfg = paper_cfg()
    mapper = DetrDatasetMapper(cfg, is_train=True)
    min_sizes, max_size = set(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN
    aspect_ratios, flipped = set(), 0
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(40):
        out = mapper(painted_image)
        image = out["image"].permute(1, 2, 0).numpy()[:, :, ::-1]  # RGB -> BGR
        h, w = image.shape[:2]
        assert max(h, w) <= max_size
        assert min(h, w) in min_sizes or max(h, w) >= max_size - 1
        aspect_ratios.add(round(w / h, 2))
        inst = out["instances"]
        assert (inst.gt_boxes.area() > 0).all()
        for box, cls in zip(inst.gt_boxes.tensor.numpy(), inst.gt_classes.tolist()):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            inner = image[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
            if inner.size:  # the box lies on its own colour after every transform
                assert np.abs(inner.mean((0, 1)) - COLORS[cls]).max() < 10
            if cls == 0:  # box 0 starts in the left half of the image
                flipped += int((x0 + x1) / 2 > w / 2)
    assert len(aspect_ratios) > 2, "the crop branch never ran"
    assert 0 < flipped < 40, "horizontal flip never or always applied"


def test_test_mapper_size(painted_image):
    cfg = paper_cfg()
    out = DetrDatasetMapper(cfg, is_train=False)(painted_image)
    assert tuple(out["image"].shape[1:]) == (800, 1067)
    assert "instances" not in out and "annotations" not in out


def test_empty_image_and_zero_area_boxes(painted_image):
    cfg = paper_cfg()
    mapper = DetrDatasetMapper(cfg, is_train=True)
    empty = dict(painted_image, annotations=[])
    assert len(mapper(empty)["instances"]) == 0
    no_key = {k: v for k, v in painted_image.items() if k != "annotations"}
    assert len(mapper(no_key)["instances"]) == 0
    degenerate = dict(
        painted_image,
        annotations=[
            {"bbox": [10, 10, 0, 0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [50, 60, 0, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        ],
    )
    assert len(mapper(degenerate)["instances"]) == 0


@pytest.mark.parametrize("content", [None, b"", b"definitely not an image"])
def test_missing_or_unreadable_image_is_named(painted_image, tmp_path, content):
    path = str(tmp_path / "broken.jpg")
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    mapper = DetrDatasetMapper(paper_cfg(), is_train=True)
    with pytest.raises(ImageReadError, match=re.escape(path)):
        mapper(dict(painted_image, file_name=path))


class _ToyDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        self.backbone[0].weight.requires_grad_(False)  # frozen like res2
        self.head = torch.nn.Linear(8, 4)

    def forward(self, batch):
        features = self.backbone(torch.stack(batch)).mean((2, 3))
        return {"loss_a": self.head(features).square().sum() * 100, "loss_b": features.sum()}


def test_optimizer_groups():
    cfg = paper_cfg()
    model = _ToyDetector()
    opt = build_optimizer(cfg, model)
    assert type(opt) is torch.optim.AdamW  # full-model clipping is the step's, not the optimizer's
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-5, 1e-4])
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in opt.param_groups)
    backbone_group = min(opt.param_groups, key=lambda g: g["lr"])
    assert len(backbone_group["params"]) == 3  # conv bias, BN weight and bias; not frozen


def test_train_step_clips_the_full_model_gradient_norm():
    cfg = paper_cfg()
    torch.manual_seed(0)
    model = _ToyDetector()
    opt = build_optimizer(cfg, model)
    batch = [torch.randn(3, 12, 12) for _ in range(2)]
    step = SAMDETRTrainStep(
        model,
        opt,
        loader_factory=lambda seed, start: itertools.repeat(batch),
        precision=Precision(),
        seed=0,
        clip_norm=cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
    )
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0) as storage:
        step.run_step()
    params = [p for g in opt.param_groups for p in g["params"]]
    total = torch.norm(torch.stack([p.grad.norm() for p in params]))
    assert total == pytest.approx(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE, rel=1e-4)
    assert storage.history("grad_norm").latest() > 10 * total  # clipped from the raw norm
    assert storage.history("total_loss").latest() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_float16_scaling_with_the_fused_optimizer_skips_overflowing_steps():
    """float16 with gradient scaling (the CUDA recipe; CPU autocast runs float16 as well) and
    the fused AdamW: a step whose scaled gradients overflow updates nothing and is not counted
    as a failure, the scale is halved; at a scale that fits, the step updates the weights."""
    cfg = paper_cfg()
    batch = [torch.randn(3, 12, 12) for _ in range(2)]
    for init_scale, overflows in ((2.0**40, True), (1.0, False)):
        torch.manual_seed(0)
        model = _ToyDetector()
        opt = build_optimizer(cfg, model)
        assert opt.defaults["fused"]
        precision = ScaledMixedPrecision("cpu")
        precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        step = SAMDETRTrainStep(
            model,
            opt,
            loader_factory=lambda seed, start: itertools.repeat(batch),
            precision=precision,
            seed=0,
            clip_norm=cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
        )
        before = [p.detach().clone() for p in model.head.parameters()]
        with EventStorage(0) as storage:
            step.run_step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.head.parameters()))
        assert unchanged == overflows and step.skipped_steps == 0
        assert precision.scaler.get_scale() == (init_scale / 2 if overflows else init_scale)
        # Overflows are counted apart, and the scale the step used is logged.
        assert precision.overflow_skips == int(overflows)
        assert storage.history("fp16_overflow_skips").latest() == int(overflows)
        assert storage.history("loss_scale").latest() == init_scale
        assert step.state_dict()["overflow_skips"] == int(overflows)


def test_precision_choice(monkeypatch):
    # As on this machine's CPU (native bfloat16), wherever the suite runs.
    monkeypatch.setattr(autocast_module, "cpu_has_native_bfloat16", lambda: True)
    assert str(build_precision(False, "auto", "cpu", scale=True)) == "float32"
    cpu = build_precision(True, "auto", "cpu", scale=True)
    assert isinstance(cpu, MixedPrecision) and cpu.dtype == torch.bfloat16
    assert not isinstance(cpu, ScaledMixedPrecision)
    gpu = build_precision(True, "auto", "cuda", scale=True)
    assert isinstance(gpu, ScaledMixedPrecision) and gpu.dtype == torch.float16
    assert type(build_precision(True, "auto", "cuda", scale=False)) is MixedPrecision
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        build_precision(True, "float16", "cpu", scale=True)
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE must be"):
        build_precision(True, "fp8", "cpu", scale=True)


def test_auto_precision_stays_float32_where_bfloat16_is_emulated(monkeypatch, caplog):
    """A CPU without native bfloat16 (most laptops; this machine has it, so its detection is
    replaced here) trains "auto" mixed precision in float32, and says so; an explicit
    bfloat16 is still honoured."""
    monkeypatch.setattr(autocast_module, "cpu_has_native_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger=autocast_module.__name__):
        chosen = build_precision(True, "auto", "cpu", scale=True)
    assert type(chosen) is Precision and "running in float32" in caplog.text
    assert isinstance(build_precision(True, "bfloat16", "cpu", scale=True), MixedPrecision)
    assert type(build_precision(True, "auto", "cuda", scale=True)) is ScaledMixedPrecision


@pytest.mark.skipif(
    platform.machine().lower() not in cpu_module.X86_MACHINES
    or not os.path.exists("/proc/cpuinfo"),
    reason="needs Linux's CPU flags on x86",
)
def test_native_bfloat16_detection_agrees_with_the_cpu_flags():
    """On x86, bfloat16 is native with AVX512-BF16 or AMX-BF16 only; oneDNN's own check also
    says yes on AVX512 CPUs without them (where it emulates bfloat16, slower than float32)."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    expected = ("avx512_bf16" in flags or "amx_bf16" in flags) and bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    assert cpu_module.cpu_has_native_bfloat16() == expected


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_schedule_arithmetic(name):
    cfg = paper_cfg(name)
    batch = cfg.SOLVER.IMS_PER_BATCH
    assert batch == (8 if "DC5" in name else 16)
    epochs, drop = (50, 40) if name.endswith("_50ep.yaml") else (12, 10)
    iters_per_epoch = math.ceil(COCO_TRAIN2017_IMAGES / batch)
    assert cfg.SOLVER.MAX_ITER == epochs * iters_per_epoch
    assert tuple(cfg.SOLVER.STEPS) == (drop * iters_per_epoch,)
    assert cfg.SOLVER.CHECKPOINT_PERIOD == iters_per_epoch
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-4)
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.1)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == pytest.approx(0.1)
    assert cfg.SOLVER.GAMMA == pytest.approx(0.1)
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-4)
