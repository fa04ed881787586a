"""Checks that a dataset fits the configured model before any training time is spent. The
classic DETR pitfall is a ``NUM_CLASSES`` left at COCO's 80 (or set to the largest category
id) for a custom dataset: training runs but learns the wrong problem. Here a disagreement
between ``MODEL.SAM_DETR.NUM_CLASSES`` and the dataset's classes is refused with both
numbers in the message."""

import logging
from typing import Any, Dict, Iterable, List

from detectron2.data import MetadataCatalog

__all__ = ["check_num_classes"]

logger = logging.getLogger(__name__)


def check_num_classes(
    dataset_name: str, dataset_dicts: Iterable[Dict[str, Any]], num_classes: int
) -> None:
    """Raise ``ValueError`` unless ``dataset_name`` has exactly ``num_classes`` classes.

    The dataset's classes are ``thing_classes`` of its metadata (set by
    ``register_coco_instances`` once loaded); without them the largest ``category_id`` of
    ``dataset_dicts`` must stay below ``num_classes``.
    """
    metadata = MetadataCatalog.get(dataset_name)
    thing_classes: List[str] = metadata.get("thing_classes", None)
    if thing_classes is not None:
        if len(thing_classes) != num_classes:
            raise ValueError(
                f"MODEL.SAM_DETR.NUM_CLASSES is {num_classes} but dataset '{dataset_name}' "
                f"has {len(thing_classes)} classes ({', '.join(map(str, thing_classes[:10]))}"
                f"{', ...' if len(thing_classes) > 10 else ''}). Set MODEL.SAM_DETR.NUM_CLASSES "
                f"{len(thing_classes)}."
            )
        return
    max_id = max(
        (a["category_id"] for d in dataset_dicts for a in d.get("annotations", [])), default=-1
    )
    if max_id >= num_classes:
        raise ValueError(
            f"MODEL.SAM_DETR.NUM_CLASSES is {num_classes} but dataset '{dataset_name}' has "
            f"category_id {max_id}, i.e. at least {max_id + 1} classes (contiguous ids "
            "0..K-1 expected)."
        )
    logger.info("Dataset '%s' has no thing_classes metadata; category ids fit.", dataset_name)
