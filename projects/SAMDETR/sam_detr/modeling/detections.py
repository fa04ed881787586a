"""Detections from the last decoder layer's outputs: the best (query, class) pairs by sigmoid
score (DETR with focal loss: every query may give several classes)."""

from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances

from .box_ops import cxcywh_to_pixel_xyxy

__all__ = ["detections", "top_detections"]


def top_detections(
    logits: torch.Tensor, detections_per_image: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k = min(detections_per_image, N * K)`` best (query, class) pairs by sigmoid score
    of ``logits (B, N, K)``: scores, query indices and classes, each ``(B, k)``."""
    N, K = logits.shape[-2:]
    k = min(detections_per_image, N * K)
    scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
    return scores, index // K, index % K


def detections(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    detections_per_image: int,
    score_threshold: float,
) -> List[Instances]:
    """:func:`top_detections` scoring above ``score_threshold``; ``logits (B, N, K)``, ``boxes
    (B, N, 4)`` cx, cy, w, h in [0, 1] -> boxes in absolute XYXY of each (unpadded) image."""
    scores, query, labels = top_detections(logits, detections_per_image)
    results = []
    for i, (h, w) in enumerate(image_sizes):
        keep = scores[i] > score_threshold
        result = Instances((h, w))
        result.pred_boxes = Boxes(cxcywh_to_pixel_xyxy(boxes[i, query[i][keep]], (h, w)))
        result.scores = scores[i][keep]
        result.pred_classes = labels[i][keep]
        results.append(result)
    return results
