"""Registration of the synthetic dataset in Detectron2's ``DatasetCatalog``/``MetadataCatalog``.

A spec is registered under ``<prefix>_train`` and ``<prefix>_val``; the catalog function
generates the dataset on first use (:func:`.synthetic.generate`) and then reads it with
``load_coco_json``, so registering costs nothing. The cache root is resolved when registering,
so the metadata's ``json_file`` points where the data will be. Registering the same names again
with the same spec and root is a no-op; with a different one it replaces the registration.
"""

import functools
import logging
from pathlib import Path
from typing import Dict, List, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import dataset_dir, generate
from .synthetic_spec import DEFAULT_SPEC, SPLITS, TINY_SPEC, SyntheticSpec

__all__ = [
    "DEFAULT_PREFIX",
    "TINY_PREFIX",
    "register_builtin_datasets",
    "register_synthetic_datasets",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "sam_detr_synthetic"  # -> sam_detr_synthetic_train, sam_detr_synthetic_val
TINY_PREFIX = "sam_detr_synthetic_tiny"

# dataset name -> (spec, cache folder) it was registered with
_REGISTERED: Dict[str, Tuple[SyntheticSpec, Path]] = {}


def _load_split(spec: SyntheticSpec, root: Path, split: str, name: str) -> List[Dict]:
    """Detectron2 dicts of one split, generating the dataset first if needed."""
    files = generate(spec, root)[split]
    return load_coco_json(files.json_file, files.image_root, name)


def register_synthetic_datasets(
    spec: SyntheticSpec = DEFAULT_SPEC,
    prefix: str = DEFAULT_PREFIX,
    root: Union[str, Path, None] = None,
) -> Dict[str, str]:
    """Register ``spec`` as ``<prefix>_train`` / ``<prefix>_val`` with its data cached under
    ``root`` (default ``$SAM_DETR_DATASETS`` or ``~/.cache/sam_detr``, read now).

    Returns ``{split: dataset name}``. Safe to call repeatedly.
    """
    directory = dataset_dir(spec, root)
    names = {}
    for split in SPLITS:
        name = f"{prefix}_{split}"
        names[split] = name
        if _REGISTERED.get(name) == (spec, directory) and name in DatasetCatalog.list():
            continue
        if name in DatasetCatalog.list():
            logger.info("Re-registering dataset %s for %s", name, directory)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name, functools.partial(_load_split, spec, directory.parent, split, name)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(spec.classes),
            json_file=str(directory / f"{split}.json"),
            image_root=str(directory / split),
            evaluator_type="coco",
        )
        _REGISTERED[name] = (spec, directory)
    return names


def register_builtin_datasets() -> None:
    """Register the default spec and the tiny spec under their fixed names."""
    register_synthetic_datasets(DEFAULT_SPEC, DEFAULT_PREFIX)
    register_synthetic_datasets(TINY_SPEC, TINY_PREFIX)
