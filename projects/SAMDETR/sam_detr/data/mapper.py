"""DETR's data augmentation as a Detectron2 dataset mapper. Training images are flipped
horizontally, then either resized to a random shortest side in ``INPUT.MIN_SIZE_TRAIN``
(longest side at most ``INPUT.MAX_SIZE_TRAIN``) or, with probability ``INPUT.CROP.PROB``,
first resized to one of ``INPUT.CROP.RESIZE_BEFORE_CROP``, randomly cropped to
``INPUT.CROP.SIZE`` and then resized the same way. Test images get a single shortest-side
resize. Boxes follow every transform; boxes left empty by a crop are dropped. A missing or
unreadable image raises :class:`ImageReadError` naming the file."""

import copy
import logging
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["DetrDatasetMapper", "ImageReadError", "build_detr_augmentation"]

logger = logging.getLogger(__name__)


class ImageReadError(OSError):
    """An image of the dataset is missing or cannot be decoded."""


def build_detr_augmentation(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """The DETR augmentation list configured by ``cfg.INPUT``.

    Training: optional flip (``INPUT.RANDOM_FLIP``), then with probability
    ``INPUT.CROP.PROB`` (only when ``INPUT.CROP.ENABLED``) a resize to
    ``INPUT.CROP.RESIZE_BEFORE_CROP`` followed by a ``RandomCrop(INPUT.CROP.TYPE,
    INPUT.CROP.SIZE)``, then the multi-scale resize. Test: ``ResizeShortestEdge`` to
    ``INPUT.MIN_SIZE_TEST`` with the longest side capped at ``INPUT.MAX_SIZE_TEST``.
    """
    if not is_train:
        return [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, sample_style="choice"
            )
        ]
    augs: List[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    if cfg.INPUT.CROP.ENABLED:
        crop_branch = T.AugmentationList(
            [
                T.ResizeShortestEdge(cfg.INPUT.CROP.RESIZE_BEFORE_CROP, sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
            ]
        )
        augs.append(T.RandomApply(crop_branch, prob=cfg.INPUT.CROP.PROB))
    augs.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN,
            cfg.INPUT.MAX_SIZE_TRAIN,
            sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        )
    )
    return augs


def read_image(file_name: str, image_format: str) -> np.ndarray:
    """Detectron2's ``read_image``, raising :class:`ImageReadError` naming the file."""
    try:
        return utils.read_image(file_name, format=image_format)
    except OSError as e:  # missing file, undecodable or truncated image
        raise ImageReadError(f"Cannot read image '{file_name}': {e}") from e


class DetrDatasetMapper(DatasetMapper):
    """Maps a Detectron2 dataset dict to the model's input with the DETR augmentation.

    Output: ``"image"`` a (C, H, W) uint8 tensor in ``INPUT.FORMAT``; in training also
    ``"instances"`` with ``gt_boxes`` (absolute XYXY in the augmented image) and
    ``gt_classes``, possibly empty (images without objects are kept, as DETR does).
    """

    @configurable
    def __init__(self, is_train: bool, **kwargs: Any) -> None:
        super().__init__(is_train, **kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": build_detr_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = read_image(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        # Images without objects still train the "no object" class.
        dataset_dict.setdefault("annotations", [])
        self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
