"""Detectron2's ``DefaultPredictor`` on a real image file for the demo config and every paper
config (randomly initialised: ``MODEL.WEIGHTS ""``; paper configs at a small test size),
``MODEL.SAM_DETR.SCORE_THRESH_TEST`` dropping low-scoring detections, and ``SAMDETRPredictor``
refusing arrays that are not H x W x 3 uint8 BGR and empty weights (the model itself refusing
other channel counts and warning about float images in [0, 1])."""

import collections
import os

import cv2
import detectron2.utils.logger
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from sam_detr import SAMDETRPredictor, add_sam_detr_config
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


@pytest.fixture(scope="module")
def demo_predictor():
    return SAMDETRPredictor(_cfg(DEMO_CONFIG, "MODEL.SAM_DETR.STRICT_WEIGHTS", "False"))


def test_predictor_refuses_empty_weights():
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty: the predictor would detect"):
        SAMDETRPredictor(_cfg(DEMO_CONFIG))


@pytest.mark.parametrize(
    "convert, message",
    [
        (
            lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
            r"shape \(96, 128\)\. .*COLOR_GRAY2BGR",
        ),
        (lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), r"\(96, 128, 4\)\. .*COLOR_BGRA2BGR"),
        (lambda bgr: bgr[..., :2], r"shape \(96, 128, 2\)\.$"),
        (lambda bgr: bgr.astype(np.float32) / 255, r"dtype float32\. .*\* 255"),
        (lambda bgr: bgr.astype(np.int32), r"dtype int32\.$"),
        (lambda bgr: bgr[:0], r"empty image"),
    ],
    ids=["gray", "bgra", "two-channel", "float-unit", "int32", "empty"],
)
def test_predictor_refuses_arrays_it_cannot_use(demo_predictor, image_file, convert, message):
    with pytest.raises(ValueError, match=message) as err:
        demo_predictor(convert(cv2.imread(image_file)))
    assert "H x W x 3 uint8 array in BGR order" in str(err.value) or "empty" in str(err.value)


def test_predictor_refuses_non_arrays(demo_predictor, image_file):
    with pytest.raises(TypeError, match="got a list"):
        demo_predictor(cv2.imread(image_file).tolist())


def test_predictor_matches_default_predictor_on_valid_input(demo_predictor, image_file, tmp_path):
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": demo_predictor.model.state_dict()}, weights)
    cfg = _cfg(DEMO_CONFIG, "MODEL.WEIGHTS", weights)
    image = cv2.imread(image_file)
    ours = SAMDETRPredictor(cfg)(image)["instances"]
    theirs = DefaultPredictor(cfg)(image)["instances"]
    assert len(ours) > 0
    torch.testing.assert_close(ours.scores, theirs.scores)
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_model_checks_what_reaches_it(caplog, monkeypatch):
    # The warning is logged once per process (Detectron2's log_first_n): count afresh.
    monkeypatch.setattr(detectron2.utils.logger, "_LOG_COUNTER", collections.Counter())
    model = build_model(_cfg(DEMO_CONFIG)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"\(3, H, W\) tensor.*\(4, 32, 32\)"):
        model([{"image": torch.zeros(4, 32, 32)}])
    with torch.no_grad():
        model([{"image": torch.rand(3, 32, 32)}])
    assert "float image with values in [0, 1]" in caplog.text
