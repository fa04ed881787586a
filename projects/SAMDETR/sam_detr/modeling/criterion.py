"""SAM-DETR's set criterion: Hungarian matching per decoder layer, then sigmoid focal loss
on the class logits and L1 + GIoU on the matched boxes, normalised by the number of
target boxes averaged over all workers, each multiplied by its weight."""

from typing import Dict, List, Optional, Tuple, Union

import torch
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher, Indices, Targets

# Guards GIoU's divisions for degenerate boxes; far below float32 resolution of real areas.
_GIOU_EPS = 1e-12

# The loss normaliser: a number on one process, a device tensor with several.
NumBoxes = Union[float, torch.Tensor]


class SetCriterion(nn.Module):
    """Weighted DETR losses of the last layer (``loss_ce`` ...) and of the earlier decoder
    layers (``loss_ce_0`` ... for layer 0), as the official implementation names them."""

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float,
        l1_weight: float,
        giou_weight: float,
        focal_alpha: float,
        focal_gamma: float,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def __repr__(self) -> str:
        return (
            f"SetCriterion(num_classes={self.num_classes}, weights={self.weights}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"matcher={self.matcher!r})"
        )

    def loss_labels(
        self, logits: torch.Tensor, targets: Targets, indices: Indices, num_boxes: NumBoxes
    ) -> torch.Tensor:
        """Sigmoid focal loss over all ``(B, N, K)`` logits; matched ones are positives."""
        batch_idx, src_idx = _matched_predictions(indices)
        onehot = torch.zeros_like(logits)
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        onehot[batch_idx, src_idx, labels] = 1
        loss = sigmoid_focal_loss(
            logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        return loss / num_boxes

    def loss_boxes(
        self, boxes: torch.Tensor, targets: Targets, indices: Indices, num_boxes: NumBoxes
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """L1 and GIoU losses of the matched ``(cx, cy, w, h)`` boxes."""
        src = boxes[_matched_predictions(indices)]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        loss_l1 = F.l1_loss(src, tgt, reduction="sum")
        loss_giou = generalized_box_iou_loss(
            box_convert(src, "cxcywh", "xyxy"),
            box_convert(tgt, "cxcywh", "xyxy"),
            reduction="sum",
            eps=_GIOU_EPS,
        )
        return loss_l1 / num_boxes, loss_giou / num_boxes

    def layer_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: Targets,
        num_boxes: NumBoxes,
        indices: Optional[Indices] = None,
    ) -> Dict[str, torch.Tensor]:
        """Unweighted losses of one decoder layer's ``(B, N, K)`` logits, ``(B, N, 4)`` boxes,
        given its matching ``indices`` (None: matched here)."""
        if indices is None:
            indices = self.matcher(logits, boxes, targets)
        loss_bbox, loss_giou = self.loss_boxes(boxes, targets, indices, num_boxes)
        return {
            "loss_ce": self.loss_labels(logits, targets, indices, num_boxes),
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
        }

    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Targets
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: ``(L, B, N, K)``, boxes ``(L, B, N, 4)``: outputs of the L decoder layers
                to supervise (the last one last).
            targets: per image ``labels (T,)`` int64 in [0, K) and ``boxes (T, 4)``.
        Returns:
            weighted losses, computed in float32.
        """
        logits, boxes = logits.float(), boxes.float()
        num_boxes = _average_num_boxes(targets, logits.device)
        # All layers matched at once: one wait on the device, whatever the number of layers.
        matches = self.matcher.match_layers(logits, boxes, targets)
        losses: Dict[str, torch.Tensor] = {}
        last = len(logits) - 1
        for layer, (layer_logits, layer_boxes, indices) in enumerate(zip(logits, boxes, matches)):
            suffix = "" if layer == last else f"_{layer}"
            for name, value in self.layer_losses(
                layer_logits, layer_boxes, targets, num_boxes, indices
            ).items():
                losses[name + suffix] = value * self.weights[name]
        return losses


def _matched_predictions(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image index, prediction index) of every matched prediction."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch_idx, torch.cat([src for src, _ in indices])


def _average_num_boxes(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> NumBoxes:
    """Target boxes per worker, averaged over all workers, at least 1: a number on one
    process; with several, a 0-dim float32 tensor on ``device`` (summed over the workers
    there, never read by the host)."""
    num_boxes = float(sum(len(t["labels"]) for t in targets))
    if comm.get_world_size() == 1:
        return max(num_boxes, 1.0)
    # torch.full, not torch.tensor: filled on the device, no copy from the host.
    total = torch.full((), num_boxes, dtype=torch.float32, device=device)
    torch.distributed.all_reduce(total)
    return torch.clamp(total / comm.get_world_size(), min=1)
