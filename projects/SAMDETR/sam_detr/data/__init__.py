"""The built-in synthetic detection dataset. Importing this package registers
``sam_detr_synthetic_{train,val}`` (and the tiny ``sam_detr_synthetic_tiny_{train,val}``) in
Detectron2's catalogs; the images are generated on first use (see :mod:`.synthetic`)."""

from .builtin import register_builtin_datasets, register_synthetic_datasets
from .synthetic import SplitFiles, dataset_dir, default_cache_root, generate
from .synthetic_render import render_preview, render_sample
from .synthetic_spec import DEFAULT_SPEC, SPLITS, TINY_SPEC, SyntheticSample, SyntheticSpec

register_builtin_datasets()

__all__ = [
    "DEFAULT_SPEC",
    "SPLITS",
    "TINY_SPEC",
    "SplitFiles",
    "SyntheticSample",
    "SyntheticSpec",
    "dataset_dir",
    "default_cache_root",
    "generate",
    "register_builtin_datasets",
    "register_synthetic_datasets",
    "render_preview",
    "render_sample",
]
