"""Export (tools/export_model.py): R50-DC5 with SMCA (random weights, smaller transformer)
and a tiny multi-scale model with SMCA exported to ONNX (the first with the ONNX graph
optimiser, the second without), and the tiny config exported to a
``torch.export`` program, compute, on images of three sizes, what the PyTorch model's
ordinary inference path computes; the files are written whole and carry their metadata; the
tool, run as a process on a tiny checkpoint and without the ONNX graph optimiser (as ``make
demo``), checks its ONNX file on a sample image, and tools/onnx_predict.py runs that file
without PyTorch or Detectron2; the traceable RoIAlign equals the CPU one."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model
from sam_detr.config import get_sam_detr_cfg
from sam_detr.deploy.export import ExportableSAMDETR
from sam_detr.modeling.roi_align import roi_align, traceable_roi_align
from train_net_helpers import REPO, TINY_CONFIG, load_tool

tool = load_tool("export_model")
SIZES = [(96, 128), (128, 96), (112, 160)]  # (H, W): landscape, portrait, another map size
TOLERANCE = 1e-4
CONFIGS = {
    "tiny": (TINY_CONFIG, []),
    # The paper's backbone with dilation and SMCA, a smaller transformer (export time).
    "R50_DC5_SMCA": (
        os.path.join(REPO, "configs", "sam_detr_R50_DC5_SMCA.yaml"),
        ["MODEL.SAM_DETR.ENC_LAYERS", 1, "MODEL.SAM_DETR.DEC_LAYERS", 2,
         "MODEL.SAM_DETR.NUM_QUERIES", 30],
    ),
    # Multi-scale (deformable encoder over res3 + res4, one decoder layer on each) with SMCA.
    "tiny_MS_SMCA": (
        TINY_CONFIG,
        ["MODEL.RESNETS.OUT_FEATURES", ["res3", "res4"],
         "MODEL.SAM_DETR.IN_FEATURES", ["res3", "res4"],
         "MODEL.SAM_DETR.DECODER_IN_FEATURES", ["res4", "res3"], "MODEL.SAM_DETR.SMCA", True],
    ),
}  # fmt: skip
# (config, format) pairs exported here: ONNX (the stricter exporter; it traces the model with
# torch.export first, as the .pt2 format does) of the larger models, the .pt2 program (saved,
# loaded back and run) of the tiny one; the tiny model's ONNX export is the tool test's.
EXPORTS = [("tiny", "pt2"), ("R50_DC5_SMCA", "onnx"), ("tiny_MS_SMCA", "onnx")]
# ONNX graphs simplified by onnxscript's optimiser (the tool's default); the others are
# exported as make demo does (the optimiser took 15-20 of the multi-scale model's 43-48 s).
OPTIMIZED = {"R50_DC5_SMCA"}


def models(config):
    path, overrides = CONFIGS[config]
    cfg = get_sam_detr_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    reference = build_model(cfg)
    reference.load_state_dict(model.state_dict())
    return ExportableSAMDETR(model).eval(), reference.eval()


def images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) * 255 for h, w in SIZES]


@pytest.fixture(scope="module")
def exported(module_tmp_dir):
    """``exported(config, fmt)``: the path of that model exported once for this module, in
    a folder of its own."""
    paths = {}

    def export(config, fmt):
        if (config, fmt) not in paths:
            folder = module_tmp_dir(f"{config}_{fmt}")
            path = str(folder / tool.FORMATS[fmt])
            info = {"input_format": "RGB"}
            tool.export(models(config)[0], images()[0], fmt, path, info, config in OPTIMIZED)
            assert os.listdir(folder) == [tool.FORMATS[fmt]]  # no partial file left
            paths[config, fmt] = path
        return paths[config, fmt]

    return export


@pytest.mark.parametrize("config,fmt", EXPORTS)
def test_exported_model_computes_what_pytorch_computes(config, fmt, exported):
    path = exported(config, fmt)
    _, reference = models(config)
    runner = tool.OnnxRunner(path) if fmt == "onnx" else tool.ProgramRunner(path)
    # Other sizes than the traced one, and other pixel values.
    worst = tool.verify(reference, runner, images(seed=1), TOLERANCE)
    assert worst < TOLERANCE
    with torch.no_grad():
        expected = reference.inference([{"image": images(seed=1)[2]}], do_postprocess=False)
    outputs = runner(images(seed=1)[2])
    np.testing.assert_allclose(outputs["pred_logits"], expected["pred_logits"][0], atol=TOLERANCE)
    np.testing.assert_allclose(outputs["pred_boxes"], expected["pred_boxes"][0], atol=TOLERANCE)
    assert outputs["boxes"].shape == (reference.detections_per_image, 4)
    check_boxes_as_the_predictor(outputs, reference, images(seed=1)[2])
    if fmt == "onnx":
        meta = {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}
        assert meta == {"input_format": "RGB"}


def check_boxes_as_the_predictor(outputs, reference, image):
    """The exported boxes lie inside the image, some on its border (the clipping is at work),
    and equal the boxes of the ordinary inference path (clipped by detector_postprocess) at
    every rank whose score does not tie with a neighbour's."""
    height, width = image.shape[-2:]
    boxes = outputs["boxes"]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all()
    assert (boxes[:, 1::2] <= height).all()
    assert (
        (boxes[:, :2] == 0).any() or (boxes[:, 2] == width).any() or (boxes[:, 3] == height).any()
    )
    with torch.no_grad():
        predicted = reference.inference([{"image": image}])[0]["instances"]
    assert len(predicted) == len(boxes)  # SCORE_THRESH_TEST 0, no box empty
    gaps = np.abs(np.diff(predicted.scores.numpy())) > TOLERANCE
    untied = np.concatenate([gaps, [True]]) & np.concatenate([[True], gaps])
    np.testing.assert_allclose(
        boxes[untied],
        predicted.pred_boxes.tensor.numpy()[untied],
        atol=TOLERANCE * max(height, width),
    )


def test_verification_fails_on_a_wrong_model(exported):
    path = exported("tiny", "pt2")
    _, reference = models("tiny")  # the exported weights (seeded)
    with torch.no_grad():
        reference.class_embed[-1].bias += 0.01  # the exported weights no longer match
    with pytest.raises(SystemExit, match="differs from PyTorch by 0.01 "):
        tool.verify(reference, tool.ProgramRunner(path), images(), TOLERANCE)


@pytest.mark.parametrize("height,width", [(20, 20), (25, 38), (50, 76), (7, 3)])
def test_traceable_roi_align_equals_the_cpu_roi_align(height, width):
    torch.manual_seed(0)
    features = torch.randn(2, 8, height, width, dtype=torch.float64)
    centers = torch.rand(2, 30, 2) * torch.tensor([width, height])
    sizes = torch.rand(2, 30, 2) * torch.tensor([width, height])  # up to the whole map
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)
    expected = roi_align(features, boxes, 7)
    torch.testing.assert_close(
        traceable_roi_align(features, boxes, 7), expected, rtol=0, atol=1e-12
    )


def test_export_tool_and_onnx_predict_on_a_checkpoint(tmp_path):
    """The tools end to end, as processes: a checkpoint, a sample image, metadata, drawing."""
    import cv2

    wrapper, _ = models("tiny")
    weights = tmp_path / "model.pth"
    torch.save({"model": wrapper.model.state_dict()}, weights)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "projects", "SAMDETR"))
    out = tmp_path / "export"
    export = [sys.executable, os.path.join(REPO, "tools", "export_model.py")]
    export += ["--config-file", TINY_CONFIG, "--output", str(out), "--sample-image", str(image)]
    export += ["--no-optimize"]  # as make demo; R50_DC5_SMCA above is exported optimised
    export += ["MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "()"]
    done = subprocess.run(export, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "largest difference to PyTorch over 1 image(s) of sizes [(64, 85)]" in done.stdout
    info = json.loads((out / tool.INFO_FILE).read_text())
    assert info["min_size_test"] == 64 and info["input_format"] == "RGB"
    # onnx_predict: onnxruntime only (checked by importing neither torch nor detectron2).
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert 'torch' not in sys.modules and 'detectron2' not in sys.modules, 'imported'"
    )
    predict = [sys.executable, "-c", code, os.path.join(REPO, "tools", "onnx_predict.py")]
    predict += [str(image), "--model", str(out / "model.onnx"), "--output", str(tmp_path / "drawn")]
    predict += ["--min-score", "0"]
    done = subprocess.run(predict, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{image}: 10 detections with score > 0" in done.stdout
    assert cv2.imread(str(tmp_path / "drawn" / "image.png")).shape == (90, 120, 3)
