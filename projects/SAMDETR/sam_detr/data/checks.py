"""Checks that a dataset fits the model before any training or evaluation time is spent.

- ``NUM_CLASSES`` must equal the dataset's number of classes (the classic DETR pitfall is 80
  left for a custom dataset, or the largest category id).
- Refused, naming the dataset, file, image id and annotation: duplicated image ids (in the
  json file of ``--coco-dataset``, as pycocotools keeps one silently; in the loaded dicts of
  any dataset), category ids the json file or the metadata does not declare (Detectron2's
  COCO loader raises a bare ``KeyError``), boxes with non-finite coordinates or a negative
  width or height (a broken file, or boxes in another format than COCO's
  ``[x, y, width, height]``).
- Boxes of zero width or height, or entirely outside their image, carry nothing to learn:
  with ``DATASETS.INVALID_BOXES "drop"`` (default) they are dropped from training with one
  summary warning (counts and a first example); at evaluation the warning says that the COCO
  evaluator, which reads the json file, counts them as missed. ``"error"`` refuses them.
- Images without objects are allowed.
"""

import json
import logging
import math
import numbers
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.structures import BoxMode

from ..config import INVALID_BOX_CHOICES, check_choice

__all__ = [
    "DatasetError",
    "check_annotations",
    "check_coco_json",
    "check_num_classes",
    "load_checked_dataset",
    "load_coco_dataset",
]

logger = logging.getLogger(__name__)

# DATASETS.INVALID_BOXES values.
DROP, ERROR = INVALID_BOX_CHOICES
# Kinds of invalid boxes that the policy applies to.
ZERO_SIZE = "of zero width or height"
OUTSIDE = "entirely outside its image"
# How many file names, class names and category ids an error message lists.
SHOWN_FILES = 3
SHOWN_CLASSES = 10
SHOWN_CATEGORIES = 20


class DatasetError(ValueError):
    """The dataset cannot be used as it is (the message names the file and the annotation)."""


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
                f"has {len(thing_classes)} classes "
                f"({', '.join(map(str, thing_classes[:SHOWN_CLASSES]))}"
                f"{', ...' if len(thing_classes) > SHOWN_CLASSES else ''}). Set "
                f"MODEL.SAM_DETR.NUM_CLASSES {len(thing_classes)}."
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


def _source(dataset_name: str) -> str:
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    return f"dataset '{dataset_name}'" + (f" ({json_file})" if json_file else "")


def _where(dataset_name: str, record: Dict[str, Any], index: int, anno: Dict[str, Any]) -> str:
    ann_id = f"annotation id {anno['id']}" if "id" in anno else f"annotation #{index}"
    return (
        f"{_source(dataset_name)}, image id {record.get('image_id')} "
        f"({record.get('file_name')}), {ann_id}"
    )


def _xywh(anno: Dict[str, Any]) -> List[float]:
    box = [float(v) for v in anno["bbox"]]
    mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode != BoxMode.XYWH_ABS:
        box = list(BoxMode.convert(box, mode, BoxMode.XYWH_ABS))
    return box


def _refuse_duplicated_ids(dataset_name: str, images: Iterable[Tuple[Any, Any]]) -> None:
    """Raise if an image id of ``images`` (``(image id, file name)`` pairs) repeats."""
    images = list(images)
    ids = Counter(image_id for image_id, _ in images)
    duplicated = [i for i, n in ids.items() if n > 1]
    if duplicated:
        files = [str(name) for image_id, name in images if image_id == duplicated[0]]
        raise DatasetError(
            f"{_source(dataset_name)}: {len(duplicated)} image ids occur more than once, e.g. "
            f"image id {duplicated[0]} for {', '.join(files[:SHOWN_FILES])}. Image ids must "
            "be unique (COCO evaluation matches detections to images by id)."
        )


def _box_problem(
    dataset_name: str, record: Dict[str, Any], index: int, anno: Dict[str, Any], classes: int
) -> Optional[str]:
    """The policy-governed problem of one annotation (None if fine); raises for the others."""

    def where() -> str:
        return _where(dataset_name, record, index, anno)

    category = anno.get("category_id")
    integral = isinstance(category, numbers.Integral) and not isinstance(category, bool)
    if classes and not (integral and 0 <= category < classes):
        raise DatasetError(
            f"{where()}: category id {category} is not one of the dataset's {classes} classes."
        )
    if "bbox" not in anno or len(anno["bbox"]) != 4:
        raise DatasetError(f"{where()}: no 4-number 'bbox' ({anno.get('bbox')}).")
    x, y, w, h = box = _xywh(anno)
    if not all(math.isfinite(v) for v in box):
        raise DatasetError(f"{where()}: bbox {anno['bbox']} has a non-finite coordinate.")
    if w < 0 or h < 0:
        raise DatasetError(
            f"{where()}: bbox {anno['bbox']} has a negative width or height. COCO boxes are "
            "[x, y, width, height]; a file with [x1, y1, x2, y2] boxes must be converted."
        )
    if w == 0 or h == 0:
        return ZERO_SIZE
    height, width = record.get("height"), record.get("width")
    if height and width and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return OUTSIDE
    return None


def check_annotations(
    dataset_name: str, dicts: Sequence[Dict[str, Any]], invalid_boxes: str, training: bool
) -> List[Dict[str, Any]]:
    """Check ``dicts`` of ``dataset_name`` (see the module docstring); return them with the
    policy-governed invalid boxes dropped (training) or kept (evaluation)."""
    check_choice("DATASETS.INVALID_BOXES", invalid_boxes, INVALID_BOX_CHOICES)
    _refuse_duplicated_ids(
        dataset_name, ((d["image_id"], d.get("file_name")) for d in dicts if "image_id" in d)
    )
    classes = len(MetadataCatalog.get(dataset_name).get("thing_classes", []) or [])
    counts: Counter = Counter()
    example: Dict[str, str] = {}
    checked = []
    for record in dicts:
        kept = []
        for index, anno in enumerate(record.get("annotations", [])):
            problem = _box_problem(dataset_name, record, index, anno, classes)
            if problem is None:
                kept.append(anno)
                continue
            where = _where(dataset_name, record, index, anno)
            if invalid_boxes == ERROR:
                raise DatasetError(
                    f"{where}: bbox {anno['bbox']} is {problem}. Fix the annotation, or set "
                    'DATASETS.INVALID_BOXES "drop" to leave such boxes out of training.'
                )
            counts[problem] += 1
            example.setdefault(problem, f"{where}: bbox {anno['bbox']}")
        if training and len(kept) != len(record.get("annotations", [])):
            record = dict(record, annotations=kept)
        checked.append(record)
    if counts:
        summary = "; ".join(f"{n} {p} (e.g. {example[p]})" for p, n in counts.items())
        consequence = (
            "dropped from training"
            if training
            else "kept: COCO evaluation reads the json file and counts them as missed"
        )
        logger.warning(
            '%s: %d invalid boxes %s: %s. Set DATASETS.INVALID_BOXES "error" to refuse them.',
            _source(dataset_name),
            sum(counts.values()),
            consequence,
            summary,
        )
    return checked


def check_coco_json(json_file: str, dataset_name: str) -> None:
    """Refuse a COCO json file with duplicated image ids (pycocotools would silently keep one
    of them) or with annotations of undeclared categories."""
    with open(json_file) as f:
        coco = json.load(f)
    _refuse_duplicated_ids(
        dataset_name, ((im["id"], im.get("file_name")) for im in coco.get("images", []))
    )
    known = {c["id"] for c in coco.get("categories", [])}
    unknown = [a for a in coco.get("annotations", []) if a.get("category_id") not in known]
    if unknown:
        first = unknown[0]
        raise DatasetError(
            f"{_source(dataset_name)}: {len(unknown)} annotations have a category id that "
            f"'categories' does not declare, e.g. annotation id {first.get('id')} of image id "
            f"{first.get('image_id')} with category_id {first.get('category_id')} (declared: "
            f"{sorted(known)[:SHOWN_CATEGORIES]}). Add the category or fix the annotation."
        )


def load_coco_dataset(json_file: str, image_root: str, dataset_name: str) -> List[Dict[str, Any]]:
    """Detectron2's ``load_coco_json`` after :func:`check_coco_json`, keeping annotation ids
    (named by the checks). The loader of ``train_net.py --coco-dataset``."""
    check_coco_json(json_file, dataset_name)
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])


def load_checked_dataset(
    names: Sequence[str],
    num_classes: int,
    invalid_boxes: str,
    training: bool,
    filter_empty: bool = False,
) -> List[Dict[str, Any]]:
    """Detectron2 dicts of the datasets ``names`` (``filter_empty``: without images that have
    no object), checked (see the module docstring)."""
    dicts: List[Dict[str, Any]] = []
    for name in names:
        try:
            loaded = get_detection_dataset_dicts([name], filter_empty=False)
        except KeyError:  # Detectron2's COCO loader: an undeclared category id
            json_file = MetadataCatalog.get(name).get("json_file", None)
            if json_file:
                check_coco_json(json_file, name)  # raises the error naming the annotation
            raise
        check_num_classes(name, loaded, num_classes)
        dicts.extend(check_annotations(name, loaded, invalid_boxes, training))
    if len(names) > 1:
        check_metadata_consistency("thing_classes", list(names))
    # After the checks, which may have dropped every box of an image. (Detectron2's
    # filter_images_with_only_crowd_annotations does the same, with another signature in 0.6.)
    if filter_empty:
        kept = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d.get("annotations", []))]
        logger.info("Left out %d images without objects.", len(dicts) - len(kept))
        dicts = kept
    return dicts
