"""Ground truth as the matcher and the losses read it."""

from typing import Dict, List, Tuple

import torch
from detectron2.structures import Instances
from torchvision.ops import box_convert

__all__ = ["prepare_targets"]


def prepare_targets(
    instances: List[Instances], image_sizes: List[Tuple[int, int]], num_classes: int
) -> List[Dict[str, torch.Tensor]]:
    """Per image ``labels (T,)`` and ``boxes (T, 4)`` cx, cy, w, h normalised by the image's
    unpadded size (h, w); a class outside ``[0, num_classes)`` is refused."""
    targets = []
    for inst, (h, w) in zip(instances, image_sizes):
        labels = inst.gt_classes
        if len(labels) and int(labels.max()) >= num_classes:
            raise ValueError(
                f"Ground-truth class {int(labels.max())} is out of range for "
                f"MODEL.SAM_DETR.NUM_CLASSES={num_classes}; set NUM_CLASSES to the "
                "dataset's number of classes."
            )
        boxes = inst.gt_boxes.tensor
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        targets.append({"labels": labels, "boxes": box_convert(boxes / scale, "xyxy", "cxcywh")})
    return targets
