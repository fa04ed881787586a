"""The built-in synthetic detection dataset on disk: coloured shapes on textured backgrounds
(:mod:`.synthetic_spec` says what decides them, :mod:`.synthetic_render` draws them).

:func:`generate` writes PNG images and one COCO json per split into a cache directory keyed by
a hash of the spec, built in a temporary sibling and moved into place with :func:`os.replace`
under a file lock, so a killed run never leaves a half dataset that looks complete and
concurrent ranks generate it once. Boxes are the tight box of the visible pixels (the COCO
convention) and ``area`` is the number of visible pixels."""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Tuple, Union

import cv2
import numpy as np

from ..utils.files import DIRECTORY_MODE, UMASK
from .synthetic_render import render_sample
from .synthetic_spec import DEFAULT_SPEC, SPLITS, SyntheticSpec

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms generate without a lock
    fcntl = None

__all__ = ["SplitFiles", "dataset_dir", "default_cache_root", "generate"]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "SAM_DETR_DATASETS"
DEFAULT_CACHE_ROOT = Path("~/.cache/sam_detr")
COMPLETE_MARKER = "spec.json"  # written last inside the temporary directory
PNG_COMPRESSION = 1  # zlib level 1: the noisy images barely compress better at 9, but slower


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
