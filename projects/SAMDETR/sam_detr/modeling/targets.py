"""Ground truth as the matcher and the losses read it."""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torchvision.ops import box_convert

__all__ = ["check_classes", "prepare_targets"]


def prepare_targets(
    instances: List[Instances],
    image_sizes: List[Tuple[int, int]],
    num_classes: int,
    device: torch.device,
) -> List[Dict[str, torch.Tensor]]:
    """Per image ``labels (T,)`` and ``boxes (T, 4)`` cx, cy, w, h normalised by the image's
    unpadded size (h, w), on ``device``; a class outside ``[0, num_classes)`` is refused.

    ``instances`` are read where they are (the data loader's are on the host, so checking the
    classes makes the device wait for nothing) and the results copied without blocking."""
    check_classes([inst.gt_classes for inst in instances], num_classes)
    targets = []
    for inst, (h, w) in zip(instances, image_sizes):
        boxes = inst.gt_boxes.tensor
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        boxes = box_convert(boxes / scale, "xyxy", "cxcywh")
        targets.append(
            {
                "labels": inst.gt_classes.to(device, non_blocking=True),
                "boxes": boxes.to(device, non_blocking=True),
            }
        )
    return targets


def check_classes(labels: Sequence[torch.Tensor], num_classes: int) -> None:
    """Refuse a class ``>= num_classes`` among the images' ``labels`` (one read for the batch;
    a read of host memory for the data loader's instances)."""
    labels = torch.cat([torch.as_tensor(x).reshape(-1) for x in labels])
    largest = int(labels.max()) if len(labels) else -1
    if largest >= num_classes:
        raise ValueError(
            f"Ground-truth class {largest} is out of range for "
            f"MODEL.SAM_DETR.NUM_CLASSES={num_classes}; set NUM_CLASSES to the "
            "dataset's number of classes."
        )
