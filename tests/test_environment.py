"""The environment that `make env` builds: Detectron2's trainer, data and evaluation modules
import; without compiled ops (the pb1-detectron2 fallback) a compiled op raises the clear error
naming it while Detectron2's environment report still works; the pycocotools COCO evaluator
(``use_fast_impl=False``) scores a hand-written dataset; ``sam_detr.environment`` reports the
facts computed here, in-process and as ``python -m sam_detr.environment``; the installer keeps
an importable Detectron2 (path a) without touching it. Real installs, no mocks."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import detectron2
import numpy as np
import pytest
import torch
import torchvision
from sam_detr import environment
from train_net_helpers import load_tool

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALLER = REPO_ROOT / "tools" / "install_detectron2.py"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
SUBPROCESS_TIMEOUT_S = 120
IMAGE_SIZE = (48, 64)  # (height, width) of the hand-written dataset's images
# Per image: COCO [x, y, w, h] boxes and their category ids (1-based, as in COCO files).
GT_BOXES: List[List[List[float]]] = [[[4, 6, 20, 16], [30, 10, 24, 30]], [[10, 12, 32, 20]]]
GT_CATEGORIES: List[List[int]] = [[1, 2], [2]]
PERFECT_AP = 100.0

requires_fallback = pytest.mark.skipif(
    environment.detectron2_origin() != environment.ORIGIN_FALLBACK,
    reason="the Detectron2 that imports is not the pb1-detectron2 fallback",
)


def test_trainer_data_and_evaluation_modules_import() -> None:
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    assert callable(build_detection_train_loader)
    assert issubclass(COCOEvaluator, object) and hasattr(DefaultTrainer, "train")


@requires_fallback
def test_compiled_op_raises_clear_error_naming_it() -> None:
    from detectron2 import _C
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 6.0, 0.0]]))
    with pytest.raises(RuntimeError, match="`box_iou_rotated` is unavailable") as error:
        pairwise_iou_rotated(boxes, boxes)
    assert "without its compiled C++/CUDA ops" in str(error.value)
    assert "SAM-DETR does not need it" in str(error.value)
    with pytest.raises(RuntimeError, match="`deform_conv_forward` is unavailable"):
        _C.deform_conv_forward()
    assert not hasattr(_C, "__wrapped__")  # dunder look-ups (pickle, inspect) stay normal


@requires_fallback
def test_detectron2_environment_report_works_on_the_placeholder() -> None:
    from detectron2.utils.collect_env import collect_env_info

    assert "pb1-detectron2 fallback without compiled ops" in collect_env_info()


def test_placeholder_marker_matches_the_installer() -> None:
    assert load_tool("install_detectron2").PLACEHOLDER_MARKER == environment.PLACEHOLDER_MARKER


def expected_facts() -> Dict[str, object]:
    """The facts computed directly, to compare with the summary."""
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda_build": torch.version.cuda,
    }


def test_summary_reports_the_facts() -> None:
    facts = environment.summary()
    for key, value in expected_facts().items():
        assert facts[key] == value, key
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["detectron2_compiled_ops"] == environment.has_compiled_ops()
    assert facts["detectron2_origin"] in (
        environment.ORIGIN_UPSTREAM,
        environment.ORIGIN_FALLBACK,
        environment.ORIGIN_PREINSTALLED,
    )
    if facts["detectron2_compiled_ops"]:
        assert facts["detectron2_origin"] != environment.ORIGIN_FALLBACK


def run_environment_module(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "sam_detr.environment", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    )
    return proc.stdout


def test_environment_module_prints_the_facts(capsys) -> None:
    environment.main(["--json"])  # in-process; the plain form runs as a process below
    assert json.loads(capsys.readouterr().out) == environment.summary()
    lines = dict(
        (key.strip(), value.strip())
        for key, value in (line.split(":", 1) for line in run_environment_module().splitlines())
    )
    facts = expected_facts()
    assert lines["torch"].startswith(f"{facts['torch']} (CUDA build: ")
    assert lines["torchvision"] == facts["torchvision"]
    assert lines["detectron2"] == f"{facts['detectron2']} ({environment.detectron2_origin()})"
    assert lines["compiled ops"] == ("yes" if environment.has_compiled_ops() else "no")
    assert lines["CUDA available"] == ("yes" if facts["cuda_available"] else "no")
    native = environment.summary()["cpu_native_bfloat16"]
    assert lines["CPU bfloat16"].startswith("native" if native else "not native")


def write_tiny_coco(root: Path) -> Path:
    """Two black images and a COCO json with GT_BOXES; returns the json's path."""
    height, width = IMAGE_SIZE
    images, annotations = [], []
    for index, (boxes, categories) in enumerate(zip(GT_BOXES, GT_CATEGORIES)):
        file_name = f"image_{index}.png"
        cv2.imwrite(str(root / file_name), np.zeros((height, width, 3), np.uint8))
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for box, category in zip(boxes, categories):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "category_id": category,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]
    path = root / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_coco_evaluator_without_compiled_ops_scores_perfect_predictions(tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    name = f"sam_detr_test_env_{tmp_path.name}"
    register_coco_instances(name, {}, str(write_tiny_coco(tmp_path)), str(tmp_path))
    dataset = DatasetCatalog.get(name)  # also sets the contiguous category-id mapping
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), use_fast_impl=False)
    evaluator.reset()
    for record in dataset:
        annotations = record["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(PERFECT_AP)
    assert results["bbox"]["AP50"] == pytest.approx(PERFECT_AP)


def test_installer_keeps_an_importable_detectron2() -> None:
    proc = subprocess.run(
        [sys.executable, str(INSTALLER), "--no-upstream", "-c", str(CONSTRAINTS)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(a) keeping the installed, importable detectron2" in proc.stderr
