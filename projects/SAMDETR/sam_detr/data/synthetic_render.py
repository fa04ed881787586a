"""Rendering of the synthetic dataset: every image from ``(spec, split, index)`` alone, by a numpy
``Generator`` seeded with ``(spec.seed, split, index)``; coloured shapes, largest first, on
textured backgrounds; boxes tight around the visible pixels. Also a preview sheet with the
boxes drawn. Bump ``SyntheticSpec.version`` whenever this code changes."""

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .synthetic_spec import SPLITS, SyntheticSample, SyntheticSpec

__all__ = ["render_preview", "render_sample"]


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
