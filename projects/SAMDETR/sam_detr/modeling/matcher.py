"""Hungarian matching between predictions and ground truth (scipy), with DETR's costs:
the focal-loss class cost, L1 on normalised cx, cy, w, h, and negative GIoU."""

from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from .host_transfer import to_device, to_host

# Keeps log() finite in the focal class cost (official value).
_LOG_EPS = 1e-8
# Matching cost that replaces a non-finite one (larger than any finite cost of a sane model).
NON_FINITE_COST = 1e8

Targets = List[Dict[str, torch.Tensor]]
Indices = List[Tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of the N predictions of each image to its targets."""

    def __init__(
        self,
        *,
        cost_class: float,
        cost_bbox: float,
        cost_giou: float,
        focal_alpha: float,
        focal_gamma: float,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all matching costs are 0; set at least one.")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma})"
        )

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Targets) -> Indices:
        """
        Args:
            logits: ``(B, N, K)`` class logits.
            boxes: ``(B, N, 4)`` cx, cy, w, h in [0, 1].
            targets: per image ``labels (T,)`` int64 and ``boxes (T, 4)`` cx, cy, w, h.
        Returns:
            per image ``(prediction indices, target indices)``, each ``(min(N, T),)`` int64 on
            the device of ``logits``.
        """
        return self.match_layers(logits[None], boxes[None], targets)[0]

    @torch.no_grad()
    def match_layers(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Targets
    ) -> List[Indices]:
        """The matching of every decoder layer, with one copy of all layers' costs to the host
        and one copy of all indices back (the host waits once, whatever the layers).

        Args:
            logits: ``(L, B, N, K)`` class logits of L decoder layers.
            boxes: ``(L, B, N, 4)`` cx, cy, w, h in [0, 1].
            targets: as :meth:`forward`'s.
        Returns:
            per layer, what :meth:`forward` returns.
        """
        L, B, N = logits.shape[:3]
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64, device=logits.device)
            return [[(empty, empty) for _ in range(B)] for _ in range(L)]
        prob = logits.flatten(0, 2).float().sigmoid()
        out_boxes = boxes.flatten(0, 2).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()

        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob**gamma * -(1 - prob + _LOG_EPS).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + _LOG_EPS).log()
        cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
        cost_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class
        cost = to_host((cost + self.cost_giou * cost_giou).view(L, B, N, -1))
        # Non-finite predictions (a diverged forward pass) are matched last; their losses are
        # non-finite too, and the training step skips the update.
        cost = torch.nan_to_num(
            cost, nan=NON_FINITE_COST, posinf=NON_FINITE_COST, neginf=-NON_FINITE_COST
        )
        per_image = cost.split(sizes, -1)
        matched = [
            linear_sum_assignment(c[layer, i])
            for layer in range(L)
            for i, c in enumerate(per_image)
        ]
        lengths = [len(i) for i, _ in matched]
        flat = torch.as_tensor(
            np.concatenate([np.stack(pair).astype(np.int64) for pair in matched], axis=1)
        )
        pairs = iter(to_device(flat, logits.device).split(lengths, dim=1))
        return [[tuple(next(pairs)) for _ in range(B)] for _ in range(L)]
