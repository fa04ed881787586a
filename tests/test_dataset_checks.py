"""Dataset checks on real COCO json files (written, edited, registered with ``--coco-dataset``
and loaded through Detectron2's COCO loader): broken annotations are refused with the file,
image id and annotation id in the message; boxes of zero size or outside their image are
dropped from training with one summary warning, or refused with ``INVALID_BOXES "error"``;
images without objects stay."""

import itertools
import json
import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from sam_detr.data.checks import DatasetError, load_checked_dataset
from train_net_helpers import IMAGE_SIZE, write_tiny_coco

import train_net

NUM_CLASSES = 2
_names = itertools.count()


def dataset_with(tmp_path, edit):
    """Write the tiny COCO dataset, apply ``edit(coco)`` to its json, register it; return its
    registered name and the json path."""
    root = str(tmp_path / "data")
    json_file = write_tiny_coco(root, num_images=6, seed=2)
    with open(json_file) as f:
        coco = json.load(f)
    edit(coco)
    with open(json_file, "w") as f:
        json.dump(coco, f)
    name = f"checks_{next(_names)}"
    train_net.register_coco_datasets([[name, json_file, os.path.join(root, "images")]])
    return name, json_file


def first_real_annotation(coco):
    return next(a for a in coco["annotations"] if a["area"] > 0)


def load(name, policy="drop", training=True, filter_empty=False):
    return load_checked_dataset(
        [name], NUM_CLASSES, policy, training=training, filter_empty=filter_empty
    )


@pytest.mark.parametrize(
    "bbox, message",
    [
        ([50, 10, -20, 30], "has a negative width or height"),
        ([5, 5, float("nan"), 10], "has a non-finite coordinate"),
        ([5, 5, 10], "no 4-number 'bbox'"),
    ],
)
def test_broken_boxes_are_refused_naming_file_image_and_annotation(tmp_path, bbox, message):
    def edit(coco):
        first_real_annotation(coco)["bbox"] = bbox

    name, json_file = dataset_with(tmp_path, edit)
    with open(json_file) as f:
        anno = first_real_annotation(json.load(f))
    for policy in ("drop", "error"):
        with pytest.raises(DatasetError) as err:
            load(name, policy)
        text = str(err.value)
        assert message in text and json_file in text
        assert f"image id {anno['image_id']}" in text and f"annotation id {anno['id']}" in text


def test_unknown_category_is_refused_naming_the_annotation(tmp_path):
    def edit(coco):
        first_real_annotation(coco)["category_id"] = 42

    name, json_file = dataset_with(tmp_path, edit)
    with open(json_file) as f:
        anno = first_real_annotation(json.load(f))
    with pytest.raises(DatasetError) as err:
        load(name)
    text = str(err.value)
    assert json_file in text and "category_id 42" in text and "declared: [1, 7]" in text
    assert f"annotation id {anno['id']} of image id {anno['image_id']}" in text


def test_duplicated_image_ids_are_refused(tmp_path):
    def edit(coco):
        coco["images"][2]["id"] = coco["images"][1]["id"]

    name, json_file = dataset_with(tmp_path, edit)
    with pytest.raises(DatasetError, match="image ids occur more than once") as err:
        load(name)
    assert json_file in str(err.value) and "0001.png" in str(err.value)

    # A dataset registered with a loader of its own (no json file): its dicts are checked.
    records = [{"file_name": f"{i}.png", "image_id": i // 2, "annotations": []} for i in range(4)]
    custom = f"checks_custom_{next(_names)}"
    DatasetCatalog.register(custom, lambda: records)
    MetadataCatalog.get(custom).set(thing_classes=["a", "b"])
    with pytest.raises(DatasetError, match="2 image ids occur more than once, e.g. image id 0"):
        load(custom)


def _degenerate(coco):
    """Image 1 keeps its zero-area box (written by write_tiny_coco); one box moves outside."""
    first_real_annotation(coco)["bbox"] = [IMAGE_SIZE + 5, 3, 10, 10]


def test_degenerate_boxes_are_dropped_from_training_with_one_warning(tmp_path, caplog):
    name, json_file = dataset_with(tmp_path, _degenerate)
    with open(json_file) as f:
        coco = json.load(f)
    with caplog.at_level(logging.WARNING):
        dicts = load(name)
    warnings = [r.getMessage() for r in caplog.records if "invalid boxes" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 invalid boxes dropped from training" in warnings[0]
    assert "1 of zero width or height" in warnings[0]
    assert "1 entirely outside its image" in warnings[0]
    kept = sum(len(d["annotations"]) for d in dicts)
    assert kept == len(coco["annotations"]) - 2
    assert len(dicts) == len(coco["images"])  # images without objects stay
    emptied = [d for d in dicts if not d["annotations"]]
    assert emptied
    # With FILTER_EMPTY_ANNOTATIONS, images left without boxes by the checks go as well.
    filtered = load(name, filter_empty=True)
    assert len(filtered) == len(dicts) - len(emptied)
    assert all(d["annotations"] for d in filtered)


def test_degenerate_boxes_at_evaluation_are_kept_and_reported(tmp_path, caplog):
    name, json_file = dataset_with(tmp_path, _degenerate)
    with open(json_file) as f:
        coco = json.load(f)
    with caplog.at_level(logging.WARNING):
        dicts = load(name, training=False)
    assert "counts them as missed" in caplog.text
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])


def test_degenerate_boxes_are_refused_on_request(tmp_path):
    name, json_file = dataset_with(tmp_path, _degenerate)
    with pytest.raises(DatasetError, match="is (of zero width or height|entirely outside)") as err:
        load(name, policy="error")
    assert json_file in str(err.value) and 'DATASETS.INVALID_BOXES "drop"' in str(err.value)


def test_unknown_policy_is_named(tmp_path):
    name, _ = dataset_with(tmp_path, lambda coco: None)
    with pytest.raises(ValueError, match="DATASETS.INVALID_BOXES must be one of"):
        load(name, policy="ignore")
