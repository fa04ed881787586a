"""What decides the content of the built-in synthetic dataset (:class:`SyntheticSpec`, its hash
names the cache folder) and one rendered sample. Rendering is in :mod:`.synthetic_render`,
files and the cache in :mod:`.synthetic`."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_SPEC",
    "SHAPES",
    "SPLITS",
    "TINY_SPEC",
    "SyntheticSample",
    "SyntheticSpec",
]

SPLITS: Tuple[str, ...] = ("train", "val")
SPEC_HASH_CHARS = 10
SHAPES: Tuple[str, ...] = ("circle", "triangle", "square", "cross")
# The default spec was made easier for the 15-minute CPU demo: 3 classes (a rotated square
# below ~16 px is hard to tell from a circle), objects up to 0.45 of the image side, at least
# 75% visible. Together these raised AP50 at iteration 700 from 6.5 to 8.6 (against 4 classes,
# 0.6 and 60%). "square" stays available.
DEFAULT_CLASSES: Tuple[str, ...] = ("circle", "triangle", "cross")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the content of the dataset; its hash names the cache folder.

    Sizes are in pixels of the square ``image_size x image_size`` images; an object's size is
    the diameter of the circle its shape is inscribed in, sampled uniformly between
    ``min_object_size`` and ``max_object_fraction * image_size`` (about two fifths of the
    boxes of the default spec are COCO-"small", under 32 x 32 px).
    """

    version: str = "v1"
    seed: int = 0
    image_size: int = 160
    num_train: int = 2000
    num_val: int = 200
    classes: Tuple[str, ...] = DEFAULT_CLASSES
    min_object_size: float = 12.0
    max_object_fraction: float = 0.45
    aspect_range: Tuple[float, float] = (0.7, 1.0)  # minor/major axis squeeze of a shape
    min_objects: int = 1
    max_objects: int = 10
    min_visible_fraction: float = 0.75

    def __post_init__(self) -> None:
        # Normalise types so that equal specs hash (and name their cache folder) equally.
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "aspect_range", tuple(float(a) for a in self.aspect_range))
        for name in ("min_object_size", "max_object_fraction", "min_visible_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))
        unknown = set(self.classes) - set(SHAPES)
        if unknown or len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"classes must be distinct names from {SHAPES}, got {self.classes}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self}")
        if not 0 < self.min_object_size <= self.max_object_size:
            raise ValueError(f"need 0 < min_object_size <= max object size, got {self}")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in (0, 1], got {self}")

    @property
    def max_object_size(self) -> float:
        """Largest object diameter in pixels."""
        return self.max_object_fraction * self.image_size

    def num_images(self, split: str) -> int:
        """Number of images of ``split`` ("train" or "val")."""
        return {"train": self.num_train, "val": self.num_val}[split]

    def to_dict(self) -> Dict[str, object]:
        """JSON-serialisable fields (tuples become lists)."""
        return dataclasses.asdict(self)

    def short_hash(self) -> str:
        """A stable hex digest of all fields, used in the cache folder name."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:SPEC_HASH_CHARS]


# ~2,200 images of 160 px: generated in seconds, small enough for a CPU demo to see each
# training image several times, large enough not to be memorised in one demo run.
DEFAULT_SPEC = SyntheticSpec()
# A few images for unit tests and smoke runs.
TINY_SPEC = SyntheticSpec(image_size=96, num_train=16, num_val=8)


@dataclass
class SyntheticSample:
    """One rendered image and its ground truth.

    ``image``: (H, W, 3) uint8 RGB. ``label_map``: (H, W) int16, index of the object that owns
    each pixel, -1 for background. ``boxes``: (N, 4) float64 XYWH in pixels, tight around the
    visible pixels. ``category_ids``: (N,) int64 in 1..K. ``areas``: (N,) visible pixel counts.
    ``full_areas``: (N,) pixel counts before occlusion. ``colours``: (N, 3) RGB fill colours.
    """

    image: np.ndarray
    label_map: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray
    areas: np.ndarray
    full_areas: np.ndarray
    colours: np.ndarray
