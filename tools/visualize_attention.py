#!/usr/bin/env python
"""Draw what a decoder layer looks at (the paper's Fig. 4): for the top detections of the first
images of ``DATASETS.TEST[0]``, the predicted box, the query's reference box and its salient
points (one colour per head), and each head's cross-attention weights over the image as a
heat map; for the baseline DETR (no Semantics Aligner), its boxes and attention maps.

The attention weights are recomputed from the inputs of the layer's cross-attention
(``attention_weights``, a path used only here); the model runs its fast path unchanged. One PNG
per (image, detection) is written into ``--output``.

Example: python tools/visualize_attention.py --config-file output/demo/config.yaml \
    --output output/demo/attention MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
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
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from sam_detr import SAMDETRPredictor
from sam_detr.config import get_sam_detr_cfg
from sam_detr.deploy.predictor import model_input
from torch.nn import functional as F
from torchvision.ops import box_convert

logger = logging.getLogger("sam_detr.visualize_attention")

DEFAULT_NUM_IMAGES = 4
DEFAULT_DETECTIONS = 2
# Images are drawn with their shorter side at least this many pixels (synthetic ones are 160).
MIN_DRAW_SIDE = 320
PANEL_INCHES = 2.6
PANEL_COLUMNS = 3
HEATMAP_ALPHA = 0.6
POINT_SIZE = 40


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES)
    parser.add_argument(
        "--detections", type=int, default=DEFAULT_DETECTIONS, help="top queries per image"
    )
    parser.add_argument(
        "--layer", type=int, default=-1, help="decoder layer (0-based; -1: the last)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser.parse_args(argv)


class LayerRecorder:
    """Forward hooks recording (of image 0), for decoder layer ``index``, the size ``(H, W)`` of
    the encoded map it reads (multi-scale: its level's), its cross-attention weights
    ``(M, N, H*W)`` and, with SAM, the reference boxes ``(N, 4)`` and salient points
    ``(N, M, 2)``."""

    def __init__(self, model: torch.nn.Module, index: int) -> None:
        self.record: Dict[str, torch.Tensor] = {}
        self.level = model.transformer.decoder_levels[index]
        layer = model.transformer.decoder[index]
        model.transformer.encoder.register_forward_hook(self._map_size)
        layer.cross_attn.register_forward_hook(self._attention)
        aligner = getattr(layer, "semantics_aligner", None)  # absent in the baseline DETR
        if aligner is not None:
            aligner.register_forward_hook(self._aligner)

    def _map_size(self, module, args, output) -> None:
        self.record["map_size"] = output[self.level].size  # the encoded levels

    def _attention(self, module, args, output) -> None:
        self.record["attention"] = module.attention_weights(*args)[0].float()

    def _aligner(self, module, args, output) -> None:
        self.record["reference_boxes"] = args[2][0].float()
        self.record["points"] = output.points[0].float()


def run(predictor: SAMDETRPredictor, recorder: LayerRecorder, image: np.ndarray):
    """The model input (RGB uint8, as resized), raw outputs and the recorded layer."""
    tensor = model_input(image, predictor.aug, predictor.input_format)
    with torch.no_grad():
        outputs = predictor.model.inference([{"image": tensor}], do_postprocess=False)
    rgb = tensor.permute(1, 2, 0).numpy().astype(np.uint8)
    return (
        (rgb if predictor.input_format == "RGB" else rgb[:, :, ::-1]),
        outputs,
        dict(recorder.record),
    )


def _box_patch(plt, box_xyxy, color, style):
    x0, y0, x1, y1 = box_xyxy
    return plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=2, ls=style)


def draw(
    path: str,
    rgb: np.ndarray,
    query: int,
    label: str,
    box: torch.Tensor,
    record: Dict[str, torch.Tensor],
) -> None:
    """One figure: the detection (box, reference box, salient points) and one heat map per
    head (its salient point marked), in the manner of the paper's Fig. 4."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    h, w = rgb.shape[:2]
    scale = max(1.0, MIN_DRAW_SIDE / min(h, w))
    rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_NEAREST)
    size = torch.tensor([rgb.shape[1], rgb.shape[0]], dtype=torch.float32)
    attention = record["attention"][:, query].view(-1, *record["map_size"])  # (M, H', W')
    heads = len(attention)
    colors = plt.cm.tab10(np.arange(heads) % 10)
    points = record["points"][query] * size if "points" in record else None
    rows = -(-(heads + 1) // PANEL_COLUMNS)
    fig, axes = plt.subplots(
        rows, PANEL_COLUMNS, figsize=(PANEL_INCHES * PANEL_COLUMNS, PANEL_INCHES * rows)
    )
    axes = axes.ravel()
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(rgb)
    axes[0].add_patch(_box_patch(plt, (box * size.repeat(2)).tolist(), "lime", "-"))
    if "reference_boxes" in record:
        reference = box_convert(record["reference_boxes"][query], "cxcywh", "xyxy")
        axes[0].add_patch(_box_patch(plt, (reference * size.repeat(2)).tolist(), "yellow", "--"))
        axes[0].scatter(points[:, 0], points[:, 1], c=colors, s=POINT_SIZE, edgecolors="white")
    axes[0].set_title(label, fontsize="small")
    heat = F.interpolate(attention[:, None], size=rgb.shape[:2], mode="bilinear")[:, 0]
    for m in range(heads):
        ax = axes[m + 1]
        ax.imshow(rgb)
        ax.imshow(heat[m].numpy(), cmap="jet", alpha=HEATMAP_ALPHA)
        if points is not None:
            ax.scatter(points[m, 0], points[m, 1], c=[colors[m]], s=POINT_SIZE, edgecolors="white")
        ax.set_title(f"head {m}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args: argparse.Namespace) -> List[str]:
    cfg = get_sam_detr_cfg(args.config_file, args.opts)
    cfg.freeze()
    predictor = SAMDETRPredictor(cfg)
    decoder = predictor.model.transformer.decoder
    layer = args.layer % len(decoder)
    recorder = LayerRecorder(predictor.model, layer)
    class_names = predictor.metadata.get("thing_classes", None)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(cfg.DATASETS.TEST[0])[: args.num_images]:
        image = cv2.imread(record["file_name"])
        if image is None:
            raise FileNotFoundError(f"Cannot read image '{record['file_name']}'")
        rgb, outputs, recorded = run(predictor, recorder, image)
        scores, classes = outputs["pred_logits"][0].sigmoid().max(dim=-1)
        boxes = box_convert(outputs["pred_boxes"][0], "cxcywh", "xyxy")
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        for rank, query in enumerate(scores.argsort(descending=True)[: args.detections].tolist()):
            name = class_names[classes[query]] if class_names else str(int(classes[query]))
            label = f"{name} {scores[query]:.2f} (query {query}, layer {layer})"
            path = os.path.join(args.output, f"{stem}_top{rank}.png")
            draw(path, rgb, query, label, boxes[query], recorded)
            written.append(path)
    logger.info("Wrote %d attention pictures to %s", len(written), args.output)
    return written


if __name__ == "__main__":
    setup_logger(name="sam_detr")
    main(parse_args())
