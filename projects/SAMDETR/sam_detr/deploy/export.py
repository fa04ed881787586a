"""Export of a trained SAM-DETR for deployment (ONNX, ``torch.export``): a module taking one
image and returning its top-k detections as plain tensors, and the one explicit step that
makes a loaded model traceable.

``ExportableSAMDETR`` takes one image ``(3, H, W)`` float in ``INPUT.FORMAT`` channel order
with pixel values in [0, 255], already resized to the test size (the resize stays outside the
graph, as in Detectron2's export), any H and W. It returns the ``k`` best (query, class)
pairs as :meth:`SAMDETR.inference` ranks them (boxes XYXY in input pixels, clipped to the
image as Detectron2's ``detector_postprocess`` clips the predictor's; scores; classes), and
the raw outputs of the last decoder layer for verification. No score threshold is
applied inside (it would make the output size data-dependent).
"""

from typing import Dict, Tuple

import torch
from torch import nn
from torchvision.ops import box_convert

from ..modeling.detections import top_detections
from ..modeling.meta_arch import SAMDETR
from ..modeling.roi_align import traceable_roi_align
from ..modeling.semantics_aligner import SemanticsAligner
from .batchnorm_folding import prepare_for_inference

__all__ = ["EXPORT_OUTPUTS", "ExportableSAMDETR", "prepare_for_export"]

# Names of the exported graph's outputs, in order.
EXPORT_OUTPUTS = ("boxes", "scores", "classes", "pred_logits", "pred_boxes")


def prepare_for_export(model: SAMDETR) -> SAMDETR:
    """Inference preparation (eval mode, frozen BatchNorm folded) plus the traceable RoIAlign
    (:func:`.roi_align.traceable_roi_align`, same numbers) in every Semantics Aligner. Call
    once, after the weights are loaded."""
    prepare_for_inference(model)
    for module in model.modules():
        if isinstance(module, SemanticsAligner):
            module.roi_align = traceable_roi_align
    return model


class ExportableSAMDETR(nn.Module):
    """``image (3, H, W)`` -> ``boxes (k, 4)`` XYXY in input pixels clipped to the image (x in
    [0, W], y in [0, H]), ``scores (k,)``, ``classes (k,)`` int64, ``pred_logits (N, K)`` and
    ``pred_boxes (N, 4)`` (cx, cy, w, h in [0, 1], unclipped) of the last decoder layer;
    ``k = min(TEST.DETECTIONS_PER_IMAGE, N * K)``."""

    def __init__(self, model: SAMDETR) -> None:
        super().__init__()
        self.model = prepare_for_export(model)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        height, width = image.shape[-2:]
        pixels = model.normalize(image)[None]
        mask = torch.zeros_like(pixels[:, 0], dtype=torch.bool)  # one image: no padding
        logits, boxes = model.forward_outputs(pixels, mask)
        logits, boxes = logits[-1], boxes[-1]  # (1, N, K), (1, N, 4)
        scores, query, classes = top_detections(logits, model.detections_per_image)
        # Clipped as Detectron2's Boxes.clip (x to [0, W], y to [0, H]); clamping the
        # normalised coordinates to [0, 1] first gives the same floats, with constant bounds.
        xyxy = box_convert(boxes[0, query[0]], "cxcywh", "xyxy").clamp(0, 1).unflatten(-1, (2, 2))
        xyxy = torch.stack((xyxy[..., 0] * width, xyxy[..., 1] * height), dim=-1).flatten(-2)
        return xyxy, scores[0], classes[0], logits[0], boxes[0]


def dynamic_image_shapes() -> Dict[str, Dict[int, object]]:
    """``dynamic_shapes`` of ``torch.export`` for the image: height and width dynamic, their
    range inferred by the exporter (``Dim.AUTO``)."""
    return {"image": {1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO}}
