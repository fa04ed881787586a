#!/usr/bin/env python
"""Export a trained SAM-DETR to ONNX (``model.onnx``) or to a ``torch.export`` program
(``model.pt2``), in the manner of Detectron2's ``tools/deploy/export_model.py``, and check the
exported model against PyTorch.

The exported model takes one image ``(3, H, W)`` float32 in ``INPUT.FORMAT`` channel order,
pixel values in [0, 255], resized to the test size (shortest side ``INPUT.MIN_SIZE_TEST``,
longest at most ``INPUT.MAX_SIZE_TEST``; the resize is not in the graph), any H and W. It
returns ``boxes (k, 4)`` XYXY in input pixels, clipped to the image as the predictor's,
``scores (k,)``, ``classes (k,)`` (the k best query-class pairs, as ``SAMDETR.inference``),
and the last decoder layer's ``pred_logits (N, K)`` and ``pred_boxes (N, 4)``. What a runtime
needs to know (test resize, input format, class names, score threshold) is written into the
ONNX file's metadata and into ``export_info.json`` beside the model.

After exporting, the exported model (run by onnxruntime, or loaded back with
``torch.export.load``) and the PyTorch model (its ordinary inference path) process the
``--sample-image``, or the first ``--verify-images`` images of ``DATASETS.TEST[0]``, and the
largest differences are printed; beyond ``--tolerance`` the tool fails.

Example: python tools/export_model.py --config-file output/demo/config.yaml --format onnx \
    --output output/demo/export MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import cv2
import numpy as np
import sam_detr.data  # noqa: F401  (registers the built-in synthetic datasets)
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.logger import setup_logger
from sam_detr.checkpoint.checkpointer import SAMDETRCheckpointer
from sam_detr.config import get_sam_detr_cfg
from sam_detr.deploy.export import EXPORT_OUTPUTS, ExportableSAMDETR, dynamic_image_shapes
from sam_detr.deploy.predictor import build_test_resize, model_input
from sam_detr.modeling.box_ops import cxcywh_to_pixel_xyxy
from sam_detr.modeling.detections import top_detections
from sam_detr.utils.denormals import apply_denormal_mode

logger = logging.getLogger("sam_detr.export_model")

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
INFO_FILE = "export_info.json"
DEFAULT_VERIFY_IMAGES = 8
# Largest accepted difference of the raw logits and boxes (boxes in normalised units).
DEFAULT_TOLERANCE = 1e-4
# Compared raw outputs: (exported output, key of SAMDETR.inference(do_postprocess=False)).
RAW_OUTPUTS = (("pred_logits", "pred_logits"), ("pred_boxes", "pred_boxes"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--output", required=True, help="folder for the model and its info")
    parser.add_argument("--sample-image", metavar="PATH", help="image to trace and verify with")
    parser.add_argument(
        "--verify-images",
        type=int,
        default=DEFAULT_VERIFY_IMAGES,
        help="without --sample-image: first images of DATASETS.TEST[0] to verify with",
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX: simplify the graph with onnxscript's optimiser (constant folding, "
        "fusions; a quarter of the demo model's export time). onnxruntime optimises the graph "
        "again when it loads it",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser.parse_args(argv)


def export_info(cfg) -> Dict:
    """What a runtime needs besides the graph (stored as ONNX metadata and in a json file)."""
    dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
    classes = MetadataCatalog.get(dataset).get("thing_classes", None) if dataset else None
    return {
        "input": "image (3, H, W) float32, pixel values in [0, 255], channel order input_format",
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "outputs": list(EXPORT_OUTPUTS),
        "boxes": "XYXY in pixels of the (resized) input image, clipped to it",
        "class_names": list(classes) if classes else None,
        "score_threshold": cfg.MODEL.SAM_DETR.SCORE_THRESH_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
    }


def sample_images(args: argparse.Namespace, cfg) -> List[str]:
    if args.sample_image:
        return [args.sample_image]
    if not len(cfg.DATASETS.TEST):
        raise SystemExit("Give --sample-image: DATASETS.TEST is empty, nothing to verify with.")
    records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[: args.verify_images]
    return [r["file_name"] for r in records]


def read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"Cannot read image '{path}'.")
    return image


class OnnxRunner:
    """The exported ONNX file, run by onnxruntime on the CPU."""

    def __init__(self, path: str) -> None:
        import onnx
        import onnxruntime

        onnx.checker.check_model(path)
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, image: torch.Tensor) -> Dict[str, np.ndarray]:
        return dict(zip(EXPORT_OUTPUTS, self.session.run(None, {"image": image.numpy()})))


class ProgramRunner:
    """The ``.pt2`` file, loaded back with ``torch.export.load``."""

    def __init__(self, path: str) -> None:
        self.module = torch.export.load(path).module()

    def __call__(self, image: torch.Tensor) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            return {k: v.numpy() for k, v in zip(EXPORT_OUTPUTS, self.module(image))}


def export(
    wrapper: ExportableSAMDETR,
    example: torch.Tensor,
    fmt: str,
    path: str,
    info: Dict,
    optimize: bool = True,
) -> None:
    """Write the exported model to ``path`` (atomically: a temporary name, then a rename);
    ``optimize``: simplify an ONNX graph (see ``--optimize``)."""
    stem, extension = os.path.splitext(os.path.basename(path))
    partial = os.path.join(os.path.dirname(path), f".{stem}.partial{extension}")
    with torch.no_grad():
        if fmt == "onnx":
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes=dynamic_image_shapes(),
                input_names=["image"],
                output_names=list(EXPORT_OUTPUTS),
                optimize=optimize,
            )
            model = program.model_proto
            for key, value in info.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            import onnx

            onnx.save(model, partial)
        else:
            program = torch.export.export(
                wrapper, (example,), dynamic_shapes=dynamic_image_shapes()
            )
            torch.export.save(program, partial, extra_files={INFO_FILE: json.dumps(info)})
    os.replace(partial, path)


def verify(model, runner, images: List[torch.Tensor], tolerance: float) -> float:
    """Largest difference of the raw outputs between PyTorch's inference path and the
    exported model over ``images``. The detections must agree as well: the same scores, and
    the same classes and boxes (clipped to the image, as the predictor's) at every rank whose
    score does not tie with a neighbour's within ``tolerance``."""
    worst = 0.0
    for image in images:
        with torch.no_grad():
            ours = model.inference([{"image": image}], do_postprocess=False)
            scores, query, classes = top_detections(ours["pred_logits"], model.detections_per_image)
        theirs = runner(image)
        for exported_name, key in RAW_OUTPUTS:
            difference = np.abs(ours[key][0].numpy() - theirs[exported_name]).max()
            worst = max(worst, float(difference))
        scores = scores[0].numpy()
        worst = max(worst, float(np.abs(scores - theirs["scores"]).max()))
        gaps = np.abs(np.diff(scores)) > tolerance
        untied = np.concatenate([gaps, [True]]) & np.concatenate([[True], gaps])
        if (classes[0].numpy()[untied] != theirs["classes"][untied]).any():
            raise SystemExit("The exported model ranks its detections differently from PyTorch.")
        height, width = image.shape[-2:]
        boxes = Boxes(cxcywh_to_pixel_xyxy(ours["pred_boxes"][0][query[0]], (height, width)))
        boxes.clip((height, width))  # as detector_postprocess clips the predictor's boxes
        boxes = boxes.tensor.numpy()
        # In normalised units, as the raw boxes.
        box_error = np.abs(boxes[untied] - theirs["boxes"][untied]).max(initial=0.0)
        worst = max(worst, float(box_error) / max(height, width))
    if not worst <= tolerance:
        raise SystemExit(
            f"The exported model differs from PyTorch by {worst:.3g} (> --tolerance "
            f"{tolerance:g}) on its raw outputs or scores: do not deploy it."
        )
    return worst


def main(args: argparse.Namespace) -> str:
    cfg = get_sam_detr_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # exported for CPU runtimes; the graph itself is device-neutral
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.SAM_DETR.STRICT_WEIGHTS:
        raise SystemExit(
            "MODEL.WEIGHTS is empty: the export would hold random weights. Set it to a "
            "checkpoint (or MODEL.SAM_DETR.STRICT_WEIGHTS False to export random weights)."
        )
    apply_denormal_mode(cfg)
    model = build_model(cfg)
    trust = cfg.MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS
    SAMDETRCheckpointer(model, trust_pickle=trust).load(cfg.MODEL.WEIGHTS)
    reference = build_model(cfg)  # the ordinary inference path, for verification
    reference.load_state_dict(model.state_dict())
    reference.eval()
    wrapper = ExportableSAMDETR(model).eval()
    resize = build_test_resize(cfg)
    images = [
        model_input(read_image(p), resize, cfg.INPUT.FORMAT) for p in sample_images(args, cfg)
    ]
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, FORMATS[args.format])
    info = export_info(cfg)
    export(wrapper, images[0], args.format, path, info, optimize=args.optimize)
    with open(os.path.join(args.output, INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
    runner = OnnxRunner(path) if args.format == "onnx" else ProgramRunner(path)
    worst = verify(reference, runner, images, args.tolerance)
    print(
        f"Exported {path}; largest difference to PyTorch over {len(images)} image(s) of "
        f"sizes {sorted({tuple(i.shape[1:]) for i in images})}: {worst:.2e} (raw logits and "
        f"boxes, tolerance {args.tolerance:g})",
        flush=True,
    )
    return path


if __name__ == "__main__":
    setup_logger(name="sam_detr")
    main(parse_args())
