"""The built-in synthetic detection dataset: coloured shapes on textured backgrounds.

Every image is rendered from ``(spec, split, index)`` alone by a numpy ``Generator`` seeded
with ``(spec.seed, split, index)``, so generation is deterministic, order-independent and any
image can be regenerated on its own. The class of an object is decided only by its shape
(circle, triangle, cross by default; square is available); its colour, size, aspect ratio and
rotation are sampled independently of the class. Objects are drawn largest first, later ones
on top, and a placement is rejected when it would leave an earlier object less than
``spec.min_visible_fraction`` visible, so nothing annotated is ever hidden. **Boxes are the
tight box of the visible pixels** (the COCO convention) and ``area`` is the number of visible
pixels. :func:`generate` writes PNG images and one COCO json per split into a cache directory
keyed by a hash of the spec, built in a temporary sibling and moved into place with
:func:`os.replace` under a file lock, so a killed run never leaves a half dataset that looks
complete and concurrent ranks generate it once.
Bump ``SyntheticSpec.version`` whenever the rendering code changes.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..utils.files import DIRECTORY_MODE, UMASK

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms generate without a lock
    fcntl = None

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_SPEC",
    "SHAPES",
    "SPLITS",
    "TINY_SPEC",
    "SplitFiles",
    "SyntheticSample",
    "SyntheticSpec",
    "dataset_dir",
    "default_cache_root",
    "generate",
    "render_preview",
    "render_sample",
]

logger = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ("train", "val")
SHAPES: Tuple[str, ...] = ("circle", "triangle", "square", "cross")
# The default spec was made easier for the 15-minute CPU demo: 3 classes (a rotated square
# below ~16 px is hard to tell from a circle), objects up to 0.45 of the image side, at least
# 75% visible. Together these raised AP50 at iteration 700 from 6.5 to 8.6 (against 4 classes,
# 0.6 and 60%). "square" stays available.
DEFAULT_CLASSES: Tuple[str, ...] = ("circle", "triangle", "cross")
CACHE_ENV_VAR = "SAM_DETR_DATASETS"
DEFAULT_CACHE_ROOT = Path("~/.cache/sam_detr")
COMPLETE_MARKER = "spec.json"  # written last inside the temporary directory
SPEC_HASH_CHARS = 10
PNG_COMPRESSION = 1  # zlib level 1: the noisy images barely compress better at 9, but slower

# Shape geometry. A shape of "size" s is inscribed in a circle of diameter s (before the aspect
# squeeze), so its box is never larger than s x s.
CIRCLE_VERTICES = 48
CROSS_ARM_HALF_WIDTH = 0.3  # half-width of a cross arm, relative to the arm length
POLYGON_SHIFT_BITS = 4  # cv2.fillPoly sub-pixel precision: 1/16 px
MIN_SHAPE_PIXELS = 16  # a rendered shape smaller than this is re-sampled
# Placement and colours.
PLACEMENT_ATTEMPTS = 30  # tries per object before it is dropped from the image
COLOUR_ATTEMPTS = 30  # tries for a colour that stands out from what it covers
MIN_COLOUR_CONTRAST = 70.0  # Euclidean RGB distance to the background/objects underneath
OBJECT_SHADING = 20.0  # max +- linear shading (over the image side) of an object's fill
# Background texture.
BACKGROUND_GRADIENT = 40.0  # max +- per-channel difference between gradient ends
BLOB_COUNT_RANGE = (2, 8)  # low-contrast blurred blobs per image, inclusive
BLOB_AXIS_RANGE = (0.05, 0.35)  # blob semi-axes, fraction of the image side
BLOB_AMPLITUDE = 30.0  # max +- per-channel blob offset, grey levels
BLOB_BLUR_SIGMA = 2.0  # px
STRIPE_PROB = 0.5  # chance an image gets a sinusoidal stripe pattern
STRIPE_AMPLITUDE_RANGE = (4.0, 14.0)  # grey levels
STRIPE_PERIOD_RANGE = (5.0, 40.0)  # px
EDGE_BLUR_SIGMA = 0.6  # px, whole-image blur that softens the aliased shape edges
NOISE_STD_RANGE = (3.0, 10.0)  # per-image std of the additive Gaussian noise, grey levels
# Preview.
PREVIEW_SCALE = 2
PREVIEW_BORDER = 4  # px between tiles
PREVIEW_BOX_COLOURS = ((255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0))
PREVIEW_LABELS = {"circle": "O", "triangle": "T", "square": "S", "cross": "X"}


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


class SplitFiles(NamedTuple):
    """Where one generated split lives: its COCO json and the folder of its images."""

    json_file: str
    image_root: str


def default_cache_root() -> Path:
    """``$SAM_DETR_DATASETS`` if set, else ``~/.cache/sam_detr``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT).expanduser()


def dataset_dir(spec: SyntheticSpec, root: Union[str, Path, None] = None) -> Path:
    """The cache folder of ``spec``: ``<root>/synthetic_<version>_<hash>``."""
    root = default_cache_root() if root is None else Path(root).expanduser()
    return root / f"synthetic_{spec.version}_{spec.short_hash()}"


def _split_files(directory: Path) -> Dict[str, SplitFiles]:
    return {s: SplitFiles(str(directory / f"{s}.json"), str(directory / s)) for s in SPLITS}


def _rng(spec: SyntheticSpec, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, SPLITS.index(split), index])


def _shape_polygon(shape: str, radius: float) -> np.ndarray:
    """Vertices (P, 2) of ``shape`` inscribed in a circle of ``radius`` around the origin."""
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * math.pi, CIRCLE_VERTICES, endpoint=False)
    elif shape == "triangle":
        angles = np.array([0.5, 0.5 + 2.0 / 3.0, 0.5 + 4.0 / 3.0]) * math.pi
    elif shape == "square":
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    else:  # cross: arm tips (length, +-half width) touch the circle
        length = radius / math.hypot(1.0, CROSS_ARM_HALF_WIDTH)
        w = CROSS_ARM_HALF_WIDTH * length
        quarter = np.array([[length, -w], [length, w], [w, w]])  # one arm, then a corner
        rot90 = np.array([[0.0, -1.0], [1.0, 0.0]])
        return np.concatenate([quarter @ np.linalg.matrix_power(rot90, k).T for k in range(4)])
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _render_shape_mask(
    shape: str, size: float, aspect: float, angle: float, centre: np.ndarray, image_size: int
) -> np.ndarray:
    """(H, W) bool mask of a shape of diameter ``size`` px, squeezed by ``aspect`` along its
    second axis, rotated by ``angle`` radians and centred at ``centre`` (x, y) px."""
    points = _shape_polygon(shape, size / 2.0) * np.array([1.0, aspect])
    cos, sin = math.cos(angle), math.sin(angle)
    points = points @ np.array([[cos, -sin], [sin, cos]]).T + centre
    # Pixel (c, r) covers [c, c + 1); cv2 samples pixel centres at integer coordinates.
    fixed = np.round((points - 0.5) * (1 << POLYGON_SHIFT_BITS)).astype(np.int32)
    mask = np.zeros((image_size, image_size), np.uint8)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=POLYGON_SHIFT_BITS)
    return mask.astype(bool)


def _linear_ramp(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W) float32 linear ramp along a random direction, about -0.5 to 0.5 (at most
    +-0.71 along a diagonal), rising by 1 per image side along the direction."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coords = np.arange(image_size, dtype=np.float32) / max(image_size - 1, 1)
    ramp = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    return ramp - 0.5 * (math.cos(angle) + math.sin(angle))


def _render_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W, 3) float32 background: colour gradient + blurred blobs + optional stripes."""
    size = image_size
    base = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
    delta = rng.uniform(-BACKGROUND_GRADIENT, BACKGROUND_GRADIENT, size=3).astype(np.float32)
    image = base + _linear_ramp(rng, size)[..., None] * delta

    blobs = np.zeros((size, size, 3), np.float32)
    for _ in range(rng.integers(BLOB_COUNT_RANGE[0], BLOB_COUNT_RANGE[1] + 1)):
        centre = tuple(int(v) for v in rng.integers(0, size, size=2))
        axes = tuple(int(v) for v in np.maximum(1, rng.uniform(*BLOB_AXIS_RANGE, 2) * size))
        colour = tuple(float(v) for v in rng.uniform(-BLOB_AMPLITUDE, BLOB_AMPLITUDE, 3))
        cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    image += cv2.GaussianBlur(blobs, (0, 0), BLOB_BLUR_SIGMA)

    if rng.random() < STRIPE_PROB:
        period = rng.uniform(*STRIPE_PERIOD_RANGE)
        amplitude = rng.uniform(*STRIPE_AMPLITUDE_RANGE)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        ramp = _linear_ramp(rng, size) * (size - 1)
        image += (amplitude * np.sin(2.0 * math.pi * ramp / period + phase))[..., None]
    return np.clip(image, 0.0, 255.0)


def _pick_colour(rng: np.random.Generator, under: Sequence[np.ndarray]) -> Tuple[np.ndarray, float]:
    """A uniform random RGB colour, re-drawn until it is at least MIN_COLOUR_CONTRAST away from
    every colour in ``under`` (what the object covers); the best of the tries otherwise."""
    best, best_contrast = None, -1.0
    for _ in range(COLOUR_ATTEMPTS):
        colour = rng.uniform(0.0, 255.0, size=3)
        contrast = min(float(np.linalg.norm(colour - u)) for u in under)
        if contrast > best_contrast:
            best, best_contrast = colour, contrast
        if contrast >= MIN_COLOUR_CONTRAST:
            break
    return best


def _place_object(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    shape: str,
    size: float,
    label_map: np.ndarray,
    visible: np.ndarray,
    full_areas: Sequence[int],
) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Try random poses of ``shape`` (diameter ``size`` px) until one leaves every placed object
    at least ``spec.min_visible_fraction`` visible. Returns ``(mask (H, W) bool, labels under
    the mask, pixels it hides of each placed object (N,))``, or None after PLACEMENT_ATTEMPTS."""
    radius = size / 2.0
    for _ in range(PLACEMENT_ATTEMPTS):
        aspect = rng.uniform(*spec.aspect_range)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        centre = rng.uniform(radius, spec.image_size - radius, size=2)
        mask = _render_shape_mask(shape, size, aspect, angle, centre, spec.image_size)
        if mask.sum() < MIN_SHAPE_PIXELS:
            continue
        covered = label_map[mask]
        hidden = np.bincount(covered[covered >= 0], minlength=len(visible))
        if np.all(visible - hidden >= spec.min_visible_fraction * np.asarray(full_areas)):
            return mask, covered, hidden
    return None


def render_sample(spec: SyntheticSpec, split: str, index: int) -> SyntheticSample:
    """Render image ``index`` of ``split`` from scratch; the same arguments give the same
    pixels and annotations whatever else was rendered before."""
    rng = _rng(spec, split, index)
    size = spec.image_size
    image = _render_background(rng, size)
    background = image.copy()  # kept for the contrast check of objects drawn on it
    label_map = np.full((size, size), -1, np.int16)

    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    sizes = rng.uniform(spec.min_object_size, spec.max_object_size, count)
    sizes = np.sort(sizes)[::-1]  # large objects first, so small ones lie on top
    classes, colours, full_areas = [], [], []
    visible = np.zeros(0, np.int64)  # visible pixel count of each placed object
    for obj_size in sizes:
        cls = int(rng.integers(len(spec.classes)))
        placed = _place_object(
            rng, spec, spec.classes[cls], obj_size, label_map, visible, full_areas
        )
        if placed is None:
            continue  # no valid placement: drop this object
        mask, covered, hidden = placed
        area = int(mask.sum())
        under = [colours[j] for j in np.unique(covered[covered >= 0])]
        if np.any(covered < 0):
            under.append(background[mask & (label_map < 0)].mean(axis=0))
        colour = _pick_colour(rng, under)
        shading = _linear_ramp(rng, size)[mask] * (2.0 * rng.uniform(0.0, OBJECT_SHADING))
        image[mask] = np.clip(colour[None, :] + shading[:, None], 0.0, 255.0)
        visible = np.append(visible - hidden, area)
        label_map[mask] = len(classes)
        classes.append(cls)
        colours.append(colour)
        full_areas.append(area)

    image = cv2.GaussianBlur(image, (0, 0), EDGE_BLUR_SIGMA)
    image += rng.uniform(*NOISE_STD_RANGE) * rng.standard_normal(image.shape, np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    boxes = np.zeros((len(classes), 4))
    for i in range(len(classes)):
        rows = np.flatnonzero(np.any(label_map == i, axis=1))
        cols = np.flatnonzero(np.any(label_map == i, axis=0))
        boxes[i] = [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
    return SyntheticSample(
        image=image,
        label_map=label_map,
        boxes=boxes,
        category_ids=np.asarray(classes, np.int64) + 1,
        areas=visible,
        full_areas=np.asarray(full_areas, np.int64),
        colours=np.asarray(colours).reshape(-1, 3),
    )


def _write_split(spec: SyntheticSpec, split: str, directory: Path) -> Tuple[int, int]:
    """Render ``split`` into ``directory/<split>/*.png`` and ``directory/<split>.json``;
    returns the numbers of images and annotations."""
    image_dir = directory / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(spec.num_images(split)):
        sample = render_sample(spec, split, index)
        file_name = f"{index:06d}.png"
        ok = cv2.imwrite(
            str(image_dir / file_name),
            np.ascontiguousarray(sample.image[..., ::-1]),
            [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION],
        )
        if not ok:
            raise OSError(f"could not write {image_dir / file_name}")
        image_id = index + 1
        size = spec.image_size
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for box, category_id, area in zip(sample.boxes, sample.category_ids, sample.areas):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [float(v) for v in box],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"SAM-DETR synthetic shapes, {split}", "spec": spec.to_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(spec.classes)
        ],
    }
    with open(directory / f"{split}.json", "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return len(images), len(annotations)


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file() and all(
        Path(f.json_file).is_file() for f in _split_files(directory).values()
    )


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path``; yields whether a lock is actually held."""
    if fcntl is None:  # pragma: no cover
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def generate(
    spec: SyntheticSpec = DEFAULT_SPEC, root: Union[str, Path, None] = None
) -> Dict[str, SplitFiles]:
    """Make sure the dataset of ``spec`` exists under ``root`` (default
    :func:`default_cache_root`) and return ``{split: SplitFiles}``.

    Generation happens at most once per spec: under a lock file, into a temporary sibling
    directory that is renamed into place only when complete. Temporary directories left by
    killed runs are removed by the next run.
    """
    final = dataset_dir(spec, root)
    if _is_complete(final):
        return _split_files(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{final.name}.tmp-"
    with _exclusive_lock(final.parent / f".{final.name}.lock") as locked:
        if _is_complete(final):  # another process generated it while we waited
            return _split_files(final)
        if locked:  # only the lock holder writes, so any temporary directory is stale
            for stale in final.parent.glob(tmp_prefix + "*"):
                logger.info("Removing stale partial dataset %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=final.parent))
        try:
            os.chmod(tmp, DIRECTORY_MODE & ~UMASK)  # mkdtemp makes it owner-only
            counts = {split: _write_split(spec, split, tmp) for split in SPLITS}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(spec.to_dict(), indent=2))
            if final.exists() and not _is_complete(final):
                shutil.rmtree(final)  # an incomplete folder not made by this function
            try:
                os.replace(tmp, final)
            except OSError:
                if not _is_complete(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # lost a lock-free race: keep theirs
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    summary = ", ".join(f"{s}: {n[0]} images / {n[1]} boxes" for s, n in counts.items())
    logger.info(
        "Generated synthetic dataset at %s in %.1fs (%s)",
        final,
        time.perf_counter() - start,
        summary,
    )
    return _split_files(final)


def render_preview(
    spec: SyntheticSpec,
    path: Union[str, Path],
    split: str = "train",
    indices: Optional[Sequence[int]] = None,
    columns: int = 4,
) -> Path:
    """Write a PNG grid of images ``indices`` (default the first ``2 * columns``) of ``split``
    with their ground-truth boxes, one box colour and letter (O, T, S, X) per class."""
    indices = list(range(2 * columns)) if indices is None else list(indices)
    tile = spec.image_size * PREVIEW_SCALE
    rows = math.ceil(len(indices) / columns)
    step = tile + PREVIEW_BORDER
    grid = np.full(
        (rows * step + PREVIEW_BORDER, columns * step + PREVIEW_BORDER, 3), 255, np.uint8
    )
    for k, index in enumerate(indices):
        sample = render_sample(spec, split, index)
        canvas = cv2.resize(sample.image, (tile, tile), interpolation=cv2.INTER_NEAREST).copy()
        font = cv2.FONT_HERSHEY_PLAIN
        for box, category_id in zip(sample.boxes, sample.category_ids):
            x, y, w, h = (box * PREVIEW_SCALE).astype(int)
            colour = PREVIEW_BOX_COLOURS[(category_id - 1) % len(PREVIEW_BOX_COLOURS)]
            letter = PREVIEW_LABELS[spec.classes[category_id - 1]]
            for thickness, line_colour in ((3, (0, 0, 0)), (1, colour)):  # outlined in black
                corner = (x + w - 1, y + h - 1)
                cv2.rectangle(canvas, (x, y), corner, line_colour, thickness)
                cv2.putText(canvas, letter, (x + 2, y + 11), font, 0.8, line_colour, thickness)
        top = PREVIEW_BORDER + (k // columns) * step
        left = PREVIEW_BORDER + (k % columns) * step
        grid[top : top + tile, left : left + tile] = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(grid[..., ::-1])):
        raise OSError(f"could not write {path}")
    return path
