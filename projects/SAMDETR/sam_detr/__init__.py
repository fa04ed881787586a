"""SAM-DETR (Zhang et al., CVPR 2022) as a Detectron2 project.

Importing the package registers the ``SAMDETR`` meta-architecture and the built-in
synthetic datasets, and exposes ``add_sam_detr_config`` and ``SAMDETRPredictor``.
"""

from . import data  # noqa: F401  (registers the built-in synthetic datasets)
from .config import add_sam_detr_config
from .deploy.predictor import SAMDETRPredictor
from .modeling.meta_arch import SAMDETR

__all__ = ["SAMDETR", "SAMDETRPredictor", "add_sam_detr_config"]
