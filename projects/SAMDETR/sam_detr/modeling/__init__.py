"""The model of the paper: the ``SAMDETR`` meta-architecture (registered in Detectron2's
``META_ARCH_REGISTRY`` on import) and its parts, one concept per module. Imports nothing from
the machinery that trains, saves, loads data for or ships the model."""

from .meta_arch import SAMDETR

__all__ = ["SAMDETR"]
