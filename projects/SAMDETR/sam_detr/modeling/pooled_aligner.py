"""Table 2's naive re-sampling: the new query of every head is the RoI region pooled to one
d-dim vector (average or maximum), positioned at the reference box centre."""

import torch

from .layer_spec import SAMLayerSpec
from .semantics_aligner import SemanticsAligner

__all__ = ["AvgPoolAligner", "MaxPoolAligner", "PooledAligner"]


class PooledAligner(SemanticsAligner):
    """Pools the RoI region (:meth:`pool`) into one query shared by the heads."""

    def __init__(self, spec: SAMLayerSpec) -> None:
        super().__init__(spec)
        self.add_reweighting(spec.reweighting)

    @staticmethod
    def pool(region: torch.Tensor) -> torch.Tensor:
        """``(K, d, R, R) -> (K, d)``."""
        raise NotImplementedError

    def resample(self, region, memory, reference_boxes, valid_ratio):
        B, N, _ = reference_boxes.shape
        content = self.pool(region).view(B, N, 1, self.dim)
        return content, reference_boxes[..., None, :2], None


class AvgPoolAligner(PooledAligner):
    """``QUERY_RESAMPLING avg_pool``: the RoI's average."""

    @staticmethod
    def pool(region: torch.Tensor) -> torch.Tensor:
        return region.mean(dim=(-2, -1))


class MaxPoolAligner(PooledAligner):
    """``QUERY_RESAMPLING max_pool``: the RoI's maximum."""

    @staticmethod
    def pool(region: torch.Tensor) -> torch.Tensor:
        return region.amax(dim=(-2, -1))
