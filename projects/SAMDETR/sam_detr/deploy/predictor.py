"""``SAMDETRPredictor``: Detectron2's ``DefaultPredictor`` that checks its input first, loads
weights strictly with :class:`.checkpoint.SAMDETRCheckpointer` and prepares the model for
inference (:func:`.inference.prepare_for_inference`; ``TEST.AMP.ENABLED`` for bfloat16 /
float16).

``DefaultPredictor`` takes one ``H x W x 3`` uint8 array in BGR order (what ``cv2.imread``
returns), whatever ``INPUT.FORMAT`` is. Other arrays fail deep inside Detectron2 (a 2-D
grayscale image, BGRA) or, worse, run and return garbage (a float image in [0, 1]). RGB given
as BGR cannot be detected from the array: convert with ``image[:, :, ::-1]``.
"""

from typing import Any, Dict

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ..checkpoint.checkpointer import SAMDETRCheckpointer
from ..utils.denormals import apply_denormal_mode
from .batchnorm_folding import prepare_for_inference

__all__ = ["SAMDETRPredictor", "build_test_resize", "check_bgr_image", "model_input"]

EXPECTED_INPUT = "an H x W x 3 uint8 array in BGR order (as cv2.imread returns)"
# Channel counts with a known conversion to BGR (OpenCV constants named in the message).
CONVERSIONS = {1: "cv2.COLOR_GRAY2BGR", 4: "cv2.COLOR_BGRA2BGR"}


def check_bgr_image(image: Any) -> None:
    """Raise ``ValueError`` (``TypeError`` for non-arrays) unless ``image`` is an
    ``H x W x 3`` uint8 array, saying what was given and how to convert it."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"The predictor takes {EXPECTED_INPUT}, got a {type(image).__name__}.")
    channels = image.shape[2] if image.ndim == 3 else 1 if image.ndim == 2 else None
    if image.ndim not in (2, 3) or channels != 3:
        hint = (
            f" Convert it first: cv2.cvtColor(image, {CONVERSIONS[channels]})."
            if channels in CONVERSIONS
            else ""
        )
        raise ValueError(
            f"The predictor takes {EXPECTED_INPUT}, got an array of shape {image.shape}.{hint}"
        )
    if image.dtype != np.uint8:
        hint = (
            " For a float image in [0, 1]: (image * 255).round().astype(np.uint8)."
            if image.dtype.kind == "f"
            else ""
        )
        raise ValueError(f"The predictor takes {EXPECTED_INPUT}, got dtype {image.dtype}.{hint}")
    if 0 in image.shape:
        raise ValueError(f"The predictor got an empty image of shape {image.shape}.")


def build_test_resize(cfg: CfgNode) -> T.ResizeShortestEdge:
    """The test-time resize of ``DefaultPredictor``: shortest side ``INPUT.MIN_SIZE_TEST``,
    longest at most ``INPUT.MAX_SIZE_TEST``."""
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)


def model_input(image_bgr: np.ndarray, resize: T.Augmentation, input_format: str) -> torch.Tensor:
    """What the predictor gives the model for a BGR uint8 image: resized, in ``input_format``
    channel order, ``(3, H, W)`` float32."""
    image = resize.get_transform(image_bgr).apply_image(image_bgr)
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


class SAMDETRPredictor(DefaultPredictor):
    """``DefaultPredictor`` with input checks, strict weight loading and frozen BatchNorm
    folded into the convolutions (see the module)."""

    def __init__(self, cfg: CfgNode) -> None:  # pylint: disable=super-init-not-called
        # DefaultPredictor.__init__ would load the weights with the lenient checkpointer.
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {cfg.INPUT.FORMAT!r}.")
        if not cfg.MODEL.WEIGHTS and cfg.MODEL.SAM_DETR.STRICT_WEIGHTS:
            raise ValueError(
                "MODEL.WEIGHTS is empty: the predictor would detect with random weights. Set "
                "it to a checkpoint (or MODEL.SAM_DETR.STRICT_WEIGHTS False to accept random "
                "weights, e.g. for timing)."
            )
        self.cfg = cfg.clone()
        apply_denormal_mode(cfg)
        self.model = build_model(self.cfg)
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        trust = cfg.MODEL.SAM_DETR.TRUST_PICKLED_WEIGHTS
        SAMDETRCheckpointer(self.model, trust_pickle=trust).load(cfg.MODEL.WEIGHTS)
        prepare_for_inference(self.model)
        self.aug = build_test_resize(cfg)
        self.input_format = cfg.INPUT.FORMAT

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """Detections ``{"instances": Instances}`` of one ``H x W x 3`` uint8 BGR image."""
        check_bgr_image(original_image)
        return super().__call__(original_image)
