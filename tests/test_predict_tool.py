"""tools/predict.py as a process, with a tiny randomly initialised checkpoint, on real photographs
(scikit-image's astronaut, coffee and chelsea) given as a folder and as globs, and on a short
video, and on the images of a registered dataset drawn enlarged: the drawn images and frames
keep their input's size, the COCO results name the inputs and hold boxes inside the images,
unreadable files are skipped, named and turn the exit status to 1. In the test process:
``--webcam`` without a camera is a clear error; how the inputs are expanded and trailing config
overrides told apart from them."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from sam_detr.config import get_sam_detr_cfg
from skimage import data as photographs
from train_net_helpers import REPO, TINY_CONFIG, load_tool, run_train_net

PREDICT = os.path.join(REPO, "tools", "predict.py")
tool = load_tool("predict")
# file name -> scikit-image photograph (RGB), written as JPEG or PNG.
PHOTOS = {"astronaut.jpg": "astronaut", "coffee.png": "coffee", "chelsea.jpg": "chelsea"}
VIDEO_FRAMES, VIDEO_SIZE = 5, (96, 64)  # (width, height)
TIMEOUT = 120


@pytest.fixture(scope="module")
def files(module_tmp_dir):
    """A checkpoint of the tiny config, ``photos/`` (the photographs, a text file named .jpg
    and a truncated JPEG) and a short MJPG video of the cat."""
    root = module_tmp_dir("predict")
    cfg = get_sam_detr_cfg(TINY_CONFIG, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, root / "model.pth")
    photos = root / "photos"
    photos.mkdir()
    for name, photo in PHOTOS.items():
        assert cv2.imwrite(str(photos / name), getattr(photographs, photo)()[:, :, ::-1])
    (photos / "notes.jpg").write_text("not an image\n")
    jpeg = (photos / "chelsea.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    video = str(root / "cat.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, VIDEO_SIZE)
    cat = photographs.chelsea()[:, :, ::-1]
    for i in range(VIDEO_FRAMES):  # the cat sliding to the right
        writer.write(cv2.resize(np.roll(cat, 20 * i, axis=1), VIDEO_SIZE))
    writer.release()
    return root


def predict(files, *args):
    weights = ["MODEL.WEIGHTS", str(files / "model.pth"), "MODEL.DEVICE", "cpu"]
    command = ["--config-file", TINY_CONFIG, "--confidence-threshold", "0", *args, *weights]
    return run_train_net(command, timeout=TIMEOUT, script=PREDICT)


def image_sizes(paths):
    return {os.path.basename(p): cv2.imread(str(p)).shape for p in paths}


def check_results(results, sizes):
    """COCO results entries: known images, categories of the tiny model, boxes inside."""
    assert results
    for entry in results:
        assert set(entry) >= {"image_id", "file_name", "category_id", "bbox", "score"}
        height, width = sizes[entry["file_name"]][:2]
        x, y, w, h = entry["bbox"]
        assert 0 <= x and 0 <= y and 0 <= w and 0 <= h
        assert x + w <= width * (1 + 1e-6) and y + h <= height * (1 + 1e-6)
        assert 0 < entry["score"] <= 1 and entry["category_id"] in (0, 1)


def test_folder_of_photographs_with_unreadable_files(files, tmp_path):
    out, results = tmp_path / "drawn", tmp_path / "results.json"
    done = predict(
        files, "--input", str(files / "photos"), "--output", str(out), "--json", str(results)
    )
    assert done.returncode == 1, done.stdout[-3000:]
    assert "Processed 3 image(s)" in done.stdout and "frames per second" in done.stdout
    skipped = done.stdout[done.stdout.index("Skipped 2 unreadable input(s):") :]
    assert f"{files / 'photos' / 'notes.jpg'}: not an image file" in skipped
    assert f"{files / 'photos' / 'truncated.jpg'}: not a readable image" in skipped
    assert image_sizes(out.iterdir()) == image_sizes(files / "photos" / n for n in PHOTOS)
    entries = json.loads(results.read_text())
    photos = {
        str(files / "photos" / n): cv2.imread(str(files / "photos" / n)).shape for n in PHOTOS
    }
    check_results(entries, photos)
    assert {e["file_name"] for e in entries} == set(photos)
    assert len({e["image_id"] for e in entries}) == len(PHOTOS)


def test_globs_of_photographs(files, tmp_path):
    out = tmp_path / "drawn"
    globs = [str(files / "photos" / "*.png"), str(files / "photos" / "[ac]*.jpg")]
    done = predict(files, "--input", *globs, "--output", str(out))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Processed 3 image(s)" in done.stdout and "Skipped" not in done.stdout
    assert image_sizes(out.iterdir()) == image_sizes(files / "photos" / n for n in PHOTOS)


def test_video(files, tmp_path):
    out, results = tmp_path / "drawn.avi", tmp_path / "results.json"
    video = str(files / "cat.avi")
    done = predict(files, "--video-input", video, "--output", str(out), "--json", str(results))
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"Processed {VIDEO_FRAMES} frame(s)" in done.stdout
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.shape)
    assert frames == [(VIDEO_SIZE[1], VIDEO_SIZE[0], 3)] * VIDEO_FRAMES
    entries = json.loads(results.read_text())
    check_results(entries, {video: frames[0]})
    assert sorted({(e["image_id"], e["frame"]) for e in entries}) == [
        (i + 1, i) for i in range(VIDEO_FRAMES)
    ]


@pytest.mark.skipif(cv2.VideoCapture(0).isOpened(), reason="this machine has a camera")
def test_webcam_without_a_camera_is_a_clear_error():
    with pytest.raises(SystemExit, match="--webcam: OpenCV cannot open a camera"):
        tool.open_webcam()


def test_inputs_and_trailing_overrides(files, tmp_path):
    args = tool.parse_args(
        ["--config-file", "c.yaml", "--input", "a.jpg", "b/", "MODEL.WEIGHTS", "w.pth"]
    )
    assert args.input == ["a.jpg", "b/"] and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    run = tool.Run()
    photos = files / "photos"
    patterns = [str(photos / "coffee.png"), str(photos), str(tmp_path / "*.png"), "missing.jpg"]
    expanded = tool.expand_inputs(patterns, run)
    names = ["coffee.png", "astronaut.jpg", "chelsea.jpg", "notes.jpg", "truncated.jpg"]
    assert expanded == [str(photos / n) for n in names]  # coffee.png once
    assert [path for path, _ in run.skipped] == [str(tmp_path / "*.png"), "missing.jpg"]


def test_images_of_a_registered_dataset_enlarged(files, tmp_path):
    """``--dataset`` (as ``make demo`` draws its validation images), ``--max-images`` and
    ``--scale``: the first images of the built-in tiny synthetic split, drawn at twice their
    96-px size."""
    out = tmp_path / "drawn"
    done = predict(
        files,
        *("--dataset", "sam_detr_synthetic_tiny_val", "--max-images", "2", "--scale", "2"),
        *("--output", str(out)),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Processed 2 image(s)" in done.stdout
    drawn = sorted(out.iterdir())
    assert len(drawn) == 2
    assert all(cv2.imread(str(path)).shape[:2] == (192, 192) for path in drawn)
