"""Tests of the built-in synthetic detection dataset (``sam_detr.data``).

The properties the issue asks for (shape-decided classes, 1-10 objects, small to large boxes,
occlusion, textured backgrounds, colour independent of class) are measured on images of the
default spec rendered in memory; file-level behaviour (determinism, COCO json, Detectron2
registration, atomic and concurrent generation) uses a few-image spec in a temporary cache.
"""

import dataclasses
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools.coco import COCO
from sam_detr.data import (
    DEFAULT_SPEC,
    TINY_SPEC,
    SyntheticSample,
    SyntheticSpec,
    dataset_dir,
    generate,
    register_synthetic_datasets,
    render_preview,
    render_sample,
    synthetic,
)
from train_net_helpers import load_tool

FILE_SPEC = dataclasses.replace(TINY_SPEC, num_train=10, num_val=4)
PROPERTY_IMAGES = 300  # default-spec images rendered for the statistical checks
COCO_SMALL_AREA = 32 * 32
LARGE_SIDE_FRACTION = 0.3  # a "large" box has a side of at least this fraction of the image
TEXTURE_BLOCK = 8  # px; block means average the per-pixel noise away
MIN_TEXTURE_STD = 3.0  # grey levels between background block means (noise alone gives < 1.3)
MIN_BACKGROUND_STD = 4.0  # grey levels of object-free pixels
MAX_CLASS_COLOUR_DEVIATION = 25.0  # grey levels of a class mean colour from the overall mean
CHANCE_MARGIN = 0.1  # colour-only classification may beat chance by at most this much


@pytest.fixture(scope="module")
def samples() -> List[SyntheticSample]:
    return [render_sample(DEFAULT_SPEC, "train", i) for i in range(PROPERTY_IMAGES)]


def _tree_bytes(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _read_rgb(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate(FILE_SPEC, tmp_path / "a")
    b = generate(FILE_SPEC, tmp_path / "b")
    tree_a = _tree_bytes(Path(a["train"].json_file).parent)
    tree_b = _tree_bytes(Path(b["train"].json_file).parent)
    assert len(tree_a) == FILE_SPEC.num_train + FILE_SPEC.num_val + 3  # 2 jsons + spec.json
    assert tree_a == tree_b


def test_any_image_regenerates_alone(tmp_path: Path) -> None:
    files = generate(FILE_SPEC, tmp_path)["train"]
    coco = COCO(files.json_file)
    for index in (7, 2):  # out of order, after other renders
        sample = render_sample(FILE_SPEC, "train", index)
        on_disk = _read_rgb(os.path.join(files.image_root, f"{index:06d}.png"))
        np.testing.assert_array_equal(sample.image, on_disk)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        np.testing.assert_array_equal([a["bbox"] for a in anns], sample.boxes)
        np.testing.assert_array_equal([a["category_id"] for a in anns], sample.category_ids)
    train0 = render_sample(FILE_SPEC, "train", 0).image
    assert not np.array_equal(train0, render_sample(FILE_SPEC, "val", 0).image)
    other_seed = dataclasses.replace(FILE_SPEC, seed=FILE_SPEC.seed + 1)
    assert not np.array_equal(train0, render_sample(other_seed, "train", 0).image)


def test_objects_counts_classes_and_sizes(samples: List[SyntheticSample]) -> None:
    spec = DEFAULT_SPEC
    assert len(spec.classes) >= 3
    counts = np.array([len(s.boxes) for s in samples])
    assert counts.min() >= 1 and counts.max() <= 10
    assert counts.min() == spec.min_objects and counts.max() == spec.max_objects
    categories = np.concatenate([s.category_ids for s in samples])
    assert set(categories.tolist()) == set(range(1, len(spec.classes) + 1))
    boxes = np.concatenate([s.boxes for s in samples])
    assert np.all(boxes[:, 2:] > 0)
    assert np.all(boxes[:, :2] >= 0)
    assert np.all(boxes[:, :2] + boxes[:, 2:] <= spec.image_size)
    areas = boxes[:, 2] * boxes[:, 3]
    small = np.mean(areas < COCO_SMALL_AREA)
    large = np.mean(boxes[:, 2:].max(axis=1) >= LARGE_SIDE_FRACTION * spec.image_size)
    assert 0.1 < small < 0.6, small
    assert large > 0.1, large
    assert boxes[:, 2:].min() < 16  # down to tiny objects


def test_boxes_are_visible_extent_and_occlusion_is_partial(
    samples: List[SyntheticSample],
) -> None:
    images_with_overlap = 0
    for s in samples:
        for i, box in enumerate(s.boxes):
            rows = np.flatnonzero(np.any(s.label_map == i, axis=1))
            cols = np.flatnonzero(np.any(s.label_map == i, axis=0))
            x0, y0 = cols[0], rows[0]
            np.testing.assert_array_equal(box, [x0, y0, cols[-1] + 1 - x0, rows[-1] + 1 - y0])
            assert s.areas[i] == np.count_nonzero(s.label_map == i)
        # nothing annotated is hidden beyond the limit, and every object is annotated
        assert np.all(s.areas >= DEFAULT_SPEC.min_visible_fraction * s.full_areas)
        assert set(np.unique(s.label_map)) - {-1} == set(range(len(s.boxes)))
        x0, y0 = s.boxes[:, 0], s.boxes[:, 1]
        x1, y1 = x0 + s.boxes[:, 2], y0 + s.boxes[:, 3]
        iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
        ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
        overlap = (iw > 0) & (ih > 0) & ~np.eye(len(x0), dtype=bool)
        images_with_overlap += bool(overlap.any())
    assert images_with_overlap > 0.3 * len(samples)
    assert sum(np.any(s.areas < s.full_areas) for s in samples) > 0.2 * len(samples)


def test_background_is_noisy_and_textured(samples: List[SyntheticSample]) -> None:
    size, block = DEFAULT_SPEC.image_size, TEXTURE_BLOCK
    for s in samples:
        background = s.label_map < 0
        assert s.image[background].std(axis=0).mean() > MIN_BACKGROUND_STD
        free_blocks = background.reshape(size // block, block, size // block, block).all((1, 3))
        if free_blocks.sum() < 4:
            continue
        means = s.image.reshape(size // block, block, size // block, block, 3).mean((1, 3))
        assert means[free_blocks].std(axis=0).mean() > MIN_TEXTURE_STD


def test_colour_does_not_predict_class(samples: List[SyntheticSample]) -> None:
    colours, labels = [], []
    for s in samples:
        for i, category_id in enumerate(s.category_ids):
            colours.append(s.image[s.label_map == i].mean(axis=0))
            labels.append(category_id)
    colours, labels = np.array(colours), np.array(labels)
    classes = np.unique(labels)
    centroids = np.array([colours[labels == c].mean(axis=0) for c in classes])
    assert np.abs(centroids - colours.mean(axis=0)).max() < MAX_CLASS_COLOUR_DEVIATION
    distances = np.linalg.norm(colours[:, None] - centroids[None], axis=2)
    accuracy = np.mean(classes[distances.argmin(axis=1)] == labels)
    majority = np.bincount(labels).max() / len(labels)
    assert accuracy < max(1.0 / len(classes), majority) + CHANCE_MARGIN


def test_json_is_valid_coco(tmp_path: Path) -> None:
    files = generate(FILE_SPEC, tmp_path)
    for split, split_files in files.items():
        coco = COCO(split_files.json_file)
        assert len(coco.getImgIds()) == FILE_SPEC.num_images(split)
        assert sorted(coco.getCatIds()) == list(range(1, len(FILE_SPEC.classes) + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(FILE_SPEC.classes)
        for image in coco.loadImgs(coco.getImgIds()):
            assert os.path.isfile(os.path.join(split_files.image_root, image["file_name"]))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            assert 1 <= len(anns) <= FILE_SPEC.max_objects
            for a in anns:
                x, y, w, h = a["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= image["width"] and y + h <= image["height"]
                assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h


def test_registration_and_detectron2_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"sam_detr_synthetic_train", "sam_detr_synthetic_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("sam_detr_synthetic_val").evaluator_type == "coco"
    monkeypatch.setenv("SAM_DETR_DATASETS", str(tmp_path))
    names = register_synthetic_datasets(FILE_SPEC, prefix="test_synthetic")
    assert register_synthetic_datasets(FILE_SPEC, prefix="test_synthetic") == names  # no raise
    try:
        assert not dataset_dir(FILE_SPEC).exists()  # registration alone generates nothing
        records = DatasetCatalog.get(names["train"])
        assert len(records) == FILE_SPEC.num_train
        for r in records:
            assert os.path.isfile(r["file_name"]) and r["height"] == FILE_SPEC.image_size
            assert 1 <= len(r["annotations"]) <= FILE_SPEC.max_objects
            for a in r["annotations"]:
                assert a["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= a["category_id"] < len(FILE_SPEC.classes)  # contiguous ids
        meta = MetadataCatalog.get(names["val"])
        assert meta.thing_classes == list(FILE_SPEC.classes)
        assert meta.evaluator_type == "coco"
        assert meta.json_file.startswith(str(tmp_path)) and os.path.isfile(meta.json_file)
        assert len(DatasetCatalog.get(names["val"])) == FILE_SPEC.num_val
        other = dataclasses.replace(FILE_SPEC, num_val=2)
        register_synthetic_datasets(other, prefix="test_synthetic")  # replaces, no raise
        assert len(DatasetCatalog.get(names["val"])) == 2
    finally:
        for name in names.values():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _generate_then_die(spec: SyntheticSpec, root: str, after: int) -> None:
    """Child process: start generating, then exit hard after ``after`` images."""
    real_render = synthetic.render_sample
    calls = []

    def render_then_die(*args):
        if len(calls) == after:
            os._exit(1)  # like SIGKILL: no cleanup, no exception handlers
        calls.append(1)
        return real_render(*args)

    synthetic.render_sample = render_then_die
    generate(spec, root)


def _generate_together(spec: SyntheticSpec, root: str, barrier) -> None:
    barrier.wait()  # both ranks start generating at the same moment
    generate(spec, root)


def test_killed_generation_leaves_no_dataset(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_generate_then_die, args=(FILE_SPEC, str(tmp_path), 3))
    child.start()
    child.join()
    assert child.exitcode == 1
    final = dataset_dir(FILE_SPEC, tmp_path)
    assert not final.exists()
    assert list(tmp_path.glob(f".{final.name}.tmp-*"))  # the killed run's partial directory
    files = generate(FILE_SPEC, tmp_path)
    assert len(COCO(files["train"].json_file).getImgIds()) == FILE_SPEC.num_train
    assert not list(tmp_path.glob(f".{final.name}.tmp-*"))  # stale directory cleaned up


def test_failed_generation_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_render(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(synthetic, "render_sample", broken_render)
    with pytest.raises(RuntimeError):
        generate(FILE_SPEC, tmp_path)
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    args = (FILE_SPEC, str(tmp_path), barrier)
    workers = [ctx.Process(target=_generate_together, args=args) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0]
    final = dataset_dir(FILE_SPEC, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, f".{final.name}.lock"])
    reference = generate(FILE_SPEC, tmp_path / "reference")
    assert _tree_bytes(final) == _tree_bytes(Path(reference["train"].json_file).parent)


def test_spec_is_validated_and_keys_the_cache(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(classes=("circle", "hexagon"))
    with pytest.raises(ValueError):
        SyntheticSpec(min_objects=0)
    bigger = dataclasses.replace(FILE_SPEC, image_size=FILE_SPEC.image_size + 1)
    assert dataset_dir(FILE_SPEC, tmp_path) != dataset_dir(bigger, tmp_path)
    same = dataclasses.replace(FILE_SPEC, classes=list(FILE_SPEC.classes), min_object_size=12)
    assert same == FILE_SPEC and dataset_dir(same, tmp_path) == dataset_dir(FILE_SPEC, tmp_path)


def test_preview_and_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = render_preview(FILE_SPEC, tmp_path / "grid.png", indices=range(6), columns=3)
    grid = cv2.imread(str(path))
    assert grid.shape[0] > 2 * FILE_SPEC.image_size and grid.shape[1] > 3 * FILE_SPEC.image_size

    tool = load_tool("make_synthetic_dataset")
    argv = ["x", "--out", str(tmp_path / "tool"), "--num-train", "3", "--num-val", "2"]
    argv += ["--image-size", "64", "--preview", str(tmp_path / "tool.png")]
    monkeypatch.setattr(sys, "argv", argv)
    tool.main()
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    assert (tmp_path / "tool.png").is_file()
    written = list((tmp_path / "tool").glob("synthetic_*/val.json"))
    assert len(written) == 1 and len(json.loads(written[0].read_text())["images"]) == 2
