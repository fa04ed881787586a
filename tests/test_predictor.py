"""Detectron2's ``DefaultPredictor`` on a real image file for the demo config and every paper
config (randomly initialised: ``MODEL.WEIGHTS ""``; paper configs at a small test size), and
``MODEL.SAM_DETR.SCORE_THRESH_TEST`` dropping low-scoring detections."""

import os

import cv2
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from sam_detr import add_sam_detr_config
from train_net_helpers import REPO, write_tiny_coco

CONFIGS = os.path.join(REPO, "configs")
PAPER_CONFIGS = sorted(
    f for f in os.listdir(CONFIGS) if f.startswith("sam_detr_") and f.endswith(".yaml")
)
DEMO_CONFIG = os.path.join("demo", "sam_detr_R18_synthetic.yaml")
# Paper configs run at this shortest side to stay quick on a CPU.
SMALL_TEST_SIZE = 128


def _cfg(name, *overrides):
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"] + list(overrides))
    return cfg


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A JPEG file on disk with shapes on noise, 96x128 (not square, not the test size)."""
    root = tmp_path_factory.mktemp("image")
    write_tiny_coco(str(root), num_images=2, seed=3)
    image = cv2.imread(str(root / "images" / "0001.png"))
    image = cv2.resize(image, (128, 96))
    path = str(root / "photo.jpg")
    cv2.imwrite(path, image)
    return path


def _check(outputs, cfg, height, width):
    inst = outputs["instances"]
    assert inst.image_size == (height, width)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())
    assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = inst.pred_boxes.tensor
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert (inst.pred_classes < cfg.MODEL.SAM_DETR.NUM_CLASSES).all()


def test_demo_config_predictor(image_file):
    cfg = _cfg(DEMO_CONFIG)
    image = cv2.imread(image_file)
    _check(DefaultPredictor(cfg)(image), cfg, *image.shape[:2])


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_predictor(name, image_file):
    cfg = _cfg(name, "INPUT.MIN_SIZE_TEST", str(SMALL_TEST_SIZE))
    image = cv2.imread(image_file)
    _check(DefaultPredictor(cfg)(image), cfg, *image.shape[:2])


def test_score_threshold_drops_low_scores(image_file, tmp_path):
    cfg = _cfg(DEMO_CONFIG)
    image = cv2.imread(image_file)
    predictor = DefaultPredictor(cfg)
    scores = predictor(image)["instances"].scores.sort().values
    threshold = float(scores[len(scores) // 2])
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": predictor.model.state_dict()}, weights)

    cfg = _cfg(
        DEMO_CONFIG, "MODEL.WEIGHTS", weights, "MODEL.SAM_DETR.SCORE_THRESH_TEST", str(threshold)
    )
    kept = DefaultPredictor(cfg)(image)["instances"]
    assert 0 < len(kept) < len(scores)
    assert (kept.scores > threshold).all()
