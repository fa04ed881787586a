#!/usr/bin/env python
"""Detect objects in images, a video or a webcam stream with a trained SAM-DETR and draw them:
this project's counterpart of Detectron2's ``demo/demo.py``. Runs ``SAMDETRPredictor`` with a
train_net.py config and ``MODEL.WEIGHTS``, keeps the detections scoring above
``--confidence-threshold`` (it becomes ``MODEL.SAM_DETR.SCORE_THRESH_TEST``) and draws them with
Detectron2's ``Visualizer`` at the image's own size, labelled with the classes of
``DATASETS.TEST[0]`` (class indices without one).

Inputs (one kind per run):
  --input PATH...     image files, folders (their image files, sorted, not recursive) and
                      globs (quoted; ``**`` recurses); config overrides may follow directly,
                      the first ``KEY.NAME`` that is not a path ends the inputs
  --video-input FILE  a video file, frame by frame
  --webcam            the first camera OpenCV opens (an error where there is none); Ctrl-C stops
  --dataset NAME      the images of a registered dataset (e.g. sam_detr_synthetic_val), in order
  --max-images N      only the first N images (of --input or --dataset)
  --scale S           draw at S times the image's size (default 1; the demo's 160-px images: 3)

Outputs (optional):
  --output PATH  a folder (created; drawn images keep their input's name, a video its stem
                 with .mp4 or .avi), or a file when a single image or a video is given and
                 PATH has an image (or .mp4/.avi) extension
  --json FILE    the detections as a COCO results list: ``image_id`` (1-based position of
                 the image among the inputs, or of the frame in the video), ``file_name``
                 (plus ``frame``, 0-based, for a video), ``category_id`` (the dataset's id
                 where the metadata maps it, else the class index), ``bbox`` [x, y, width,
                 height] in the image's pixels, ``score``

Inputs that cannot be read (missing files, globs or folders matching no image, files that are
not images or are truncated, videos OpenCV cannot open) are skipped with a warning naming
them; the others are processed, then a summary lists the skipped inputs and the exit status is
1. A progress bar runs over the images or frames (on a terminal); the frames per second are
printed at the end.

Examples:
  python tools/predict.py --config-file configs/sam_detr_R50.yaml \\
      --input photos/ 'more/**/*.jpg' --output output/predictions --json output/dets.json \\
      MODEL.WEIGHTS sam_detr_r50_e12.pth
  python tools/predict.py --config-file output/demo/config.yaml --input image.png \\
      --output drawn.png --confidence-threshold 0.3 MODEL.WEIGHTS output/demo/model_final.pth
  python tools/predict.py --config-file configs/sam_detr_R50.yaml --video-input clip.mp4 \\
      --output clip_drawn.mp4 MODEL.WEIGHTS sam_detr_r50_e12.pth MODEL.DEVICE cpu
  python tools/predict.py --config-file output/demo/config.yaml --dataset sam_detr_synthetic_val \\
      --max-images 8 --scale 3 --output output/demo/predictions \\
      MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
import glob
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

# Detectron2 v0.6 and fvcore call torch.jit.script, which torch deprecates, when imported:
# that one warning is hidden (unless -W or PYTHONWARNINGS say otherwise).
if not sys.warnoptions:
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import cv2
import numpy as np
import tqdm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image, UnidentifiedImageError
from sam_detr import SAMDETRPredictor
from sam_detr.config import get_sam_detr_cfg
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger("sam_detr.predict")

DEFAULT_CONFIDENCE_THRESHOLD = 0.5
# Files of a folder input that are read as images.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Video containers written, with the OpenCV codec each is written with (both are in every
# OpenCV build); another input container is written as the first.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
# Frame rate written when a capture does not report one (webcams often do not).
FALLBACK_FPS = 30.0
WEBCAM_INDEX = 0
WEBCAM_NAME = "webcam"
# What PIL raises for files that are not images, truncated ones and oversized ones.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# A trailing config override such as MODEL.WEIGHTS (see split_overrides).
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="images, folders or globs")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first camera")
    source.add_argument(
        "--dataset", metavar="NAME", help="the images of a registered dataset, in its order"
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N", help="only the first N images of the inputs"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="drawing scale of the output images (default: the image's own size)",
    )
    parser.add_argument("--output", metavar="PATH", help="a folder, or a file for one input")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=DEFAULT_CONFIDENCE_THRESHOLD,
        help="detections scoring above it are kept (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the detections as COCO results")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    if args.input:
        args.input, args.opts = split_overrides(args.input, args.opts)
        if not args.input:
            parser.error("--input: no image, folder or glob given before the overrides")
    return args


def split_overrides(inputs: List[str], opts: List[str]) -> Tuple[List[str], List[str]]:
    """``--input a.jpg MODEL.WEIGHTS w.pth`` gives ``--input`` every word: the inputs end at
    the first config key (``KEY.NAME`` in capitals) that is not an existing path."""
    for i, word in enumerate(inputs):
        if CONFIG_KEY.match(word) and not os.path.exists(word):
            return inputs[:i], inputs[i:] + list(opts)
    return inputs, list(opts)


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of ``--config-file`` and the overrides (on the CPU where CUDA is missing),
    with ``--confidence-threshold`` as the model's score threshold."""
    cfg = get_sam_detr_cfg(args.config_file, args.opts)
    cfg.MODEL.SAM_DETR.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


@dataclass
class Run:
    """What a run did: the skipped inputs with their reason, the COCO results, the timing."""

    skipped: List[Tuple[str, str]] = field(default_factory=list)
    results: List[Dict] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    predictor_seconds: float = 0.0

    def skip(self, path: str, reason: str) -> None:
        logger.warning("Skipping %s: %s", path, reason)
        self.skipped.append((path, reason))


def expand_inputs(patterns: Sequence[str], run: Run) -> List[str]:
    """Image files of ``patterns`` (files, folders, globs) in order, each once; patterns that
    name nothing are recorded in ``run`` as skipped."""
    files: List[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            found = [f for m in matches for f in ([m] if os.path.isfile(m) else folder_images(m))]
            if not found:
                run.skip(pattern, "the glob matches no file")
        elif os.path.isdir(pattern):
            found = folder_images(pattern)
            if not found:
                run.skip(pattern, f"the folder holds no {'/'.join(IMAGE_EXTENSIONS)} file")
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = []
            run.skip(pattern, "no such file or folder")
        files += found
    return list(dict.fromkeys(files))


def folder_images(folder: str) -> List[str]:
    names = sorted(os.listdir(folder))
    paths = [os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    return [p for p in paths if os.path.isfile(p)]


def output_file(output: Optional[str], extensions: Sequence[str]) -> Optional[str]:
    """``output`` when it names a file to write (not a folder, one of ``extensions``)."""
    if output is None or os.path.isdir(output):
        return None
    return output if os.path.splitext(output)[1].lower() in extensions else None


class Drawer:
    """The predictor and the drawing of its detections."""

    def __init__(self, cfg: CfgNode, scale: float = 1.0) -> None:
        self.predictor = SAMDETRPredictor(cfg)
        self.scale = scale
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(dataset)
        to_contiguous = self.metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
        self.category_ids = {index: dataset_id for dataset_id, index in to_contiguous.items()}

    def __call__(self, image_bgr: np.ndarray, run: Run) -> Tuple[Instances, np.ndarray]:
        """Detections of a BGR uint8 image and the image with them drawn (BGR, ``scale`` times
        its size)."""
        start = time.perf_counter()
        instances = self.predictor(image_bgr)["instances"].to("cpu")
        run.predictor_seconds += time.perf_counter() - start
        visualizer = Visualizer(image_bgr[:, :, ::-1], self.metadata, scale=self.scale)
        drawn = visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        return instances, np.ascontiguousarray(drawn)

    def coco_results(self, instances: Instances, image_id: int, **names) -> List[Dict]:
        """COCO results entries of ``instances``: bbox [x, y, w, h] in float64 (exact)."""
        boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
        boxes[:, 2:] -= boxes[:, :2]
        return [
            {
                "image_id": image_id,
                **names,
                "category_id": self.category_ids.get(int(cls), int(cls)),
                "bbox": box.tolist(),
                "score": float(score),
            }
            for box, score, cls in zip(boxes, instances.scores, instances.pred_classes)
        ]


def unique_path(folder: str, name: str, taken: set) -> str:
    """``folder/name``, with ``-2``, ``-3``... before the extension if this run wrote it."""
    stem, extension = os.path.splitext(name)
    path, count = os.path.join(folder, name), 1
    while path in taken:
        count += 1
        path = os.path.join(folder, f"{stem}-{count}{extension}")
    taken.add(path)
    return path


def write_image(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f"OpenCV cannot write {path}.")


def predict_images(drawer: Drawer, files: List[str], output: Optional[str], run: Run) -> None:
    single_file = output_file(output, IMAGE_EXTENSIONS) if len(files) == 1 else None
    folder = None if single_file or output is None else output
    if folder:
        os.makedirs(folder, exist_ok=True)
    taken: set = set()
    for image_id, path in enumerate(tqdm.tqdm(files, unit="image", disable=None), start=1):
        try:
            image = read_image(path, format="BGR")
        except UnidentifiedImageError:
            run.skip(path, "not an image file")
            continue
        except UNREADABLE_IMAGE_ERRORS as error:
            run.skip(path, f"not a readable image ({type(error).__name__}: {error})")
            continue
        start = time.perf_counter()
        instances, drawn = drawer(image, run)
        if output is not None:
            write_image(single_file or unique_path(folder, os.path.basename(path), taken), drawn)
        run.seconds += time.perf_counter() - start
        run.frames += 1
        run.results += drawer.coco_results(instances, image_id, file_name=path)
        logger.info("%s: %d detections", path, len(instances))


def frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def video_writer(path: str, capture: cv2.VideoCapture, size: Tuple[int, int]) -> cv2.VideoWriter:
    codec = VIDEO_CODECS[os.path.splitext(path)[1].lower()]
    fps = capture.get(cv2.CAP_PROP_FPS) or FALLBACK_FPS
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write a {codec} video to {path}.")
    return writer


def predict_stream(
    drawer: Drawer, capture: cv2.VideoCapture, name: str, output: Optional[str], run: Run
) -> None:
    """Every frame of ``capture`` (a video file or a camera called ``name``) until it ends or
    Ctrl-C; drawn frames go to the video file ``output`` (None: not written)."""
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    progress = tqdm.tqdm(total=count if count > 0 else None, unit="frame", disable=None)
    writer, index = None, -1
    try:
        for index, frame in enumerate(frames(capture)):
            start = time.perf_counter()
            instances, drawn = drawer(frame, run)
            if output is not None:
                if writer is None:
                    writer = video_writer(output, capture, (frame.shape[1], frame.shape[0]))
                writer.write(drawn)
            run.seconds += time.perf_counter() - start
            run.frames += 1
            run.results += drawer.coco_results(instances, index + 1, file_name=name, frame=index)
            progress.update()
    except KeyboardInterrupt:
        logger.info("Stopped after %d frames of %s.", index + 1, name)
    finally:
        progress.close()
        if writer is not None:
            writer.release()
    if index < 0:
        run.skip(name, "no frame could be read")
    elif writer is not None:
        logger.info("%s: %d frames, drawn into %s", name, index + 1, output)


def stream_output(output: Optional[str], name: str) -> Optional[str]:
    """The video file to write for the stream ``name``: ``output`` itself when it is one,
    else ``output/<stem>`` with the input's extension if written here (else .mp4)."""
    if output is None or output_file(output, tuple(VIDEO_CODECS)):
        return output
    if os.path.splitext(output)[1] and not os.path.isdir(output):
        raise SystemExit(f"--output {output}: a video is written as {' or '.join(VIDEO_CODECS)}.")
    os.makedirs(output, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(name))
    extension = extension.lower() if extension.lower() in VIDEO_CODECS else next(iter(VIDEO_CODECS))
    return os.path.join(output, stem + extension)


def open_webcam() -> cv2.VideoCapture:
    capture = cv2.VideoCapture(WEBCAM_INDEX)
    if not capture.isOpened():
        raise SystemExit(
            f"--webcam: OpenCV cannot open a camera (index {WEBCAM_INDEX}) on this machine: "
            "none is connected, or it is busy or not permitted. Give --input or --video-input."
        )
    return capture


def write_json(path: str, results: List[Dict]) -> None:
    """Written whole: a temporary file renamed over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(results, f)
    os.replace(partial, path)


def main(args: argparse.Namespace) -> int:
    """Run the predictor on the inputs of ``args``; 1 when an input was skipped, else 0."""
    run = Run()
    if args.dataset:
        args.input = [record["file_name"] for record in DatasetCatalog.get(args.dataset)]
    if args.input:
        files = expand_inputs(args.input, run)[: args.max_images]
        if args.output and len(files) > 1 and output_file(args.output, IMAGE_EXTENSIONS):
            raise SystemExit(f"--output {args.output} is a file, but {len(files)} images match.")
    else:  # opened before the model is built, so that a missing camera fails at once
        name = WEBCAM_NAME if args.webcam else args.video_input
        capture = open_webcam() if args.webcam else cv2.VideoCapture(args.video_input)
        output = stream_output(args.output, name)
    drawer = Drawer(setup_cfg(args), args.scale)
    with logging_redirect_tqdm(loggers=[logging.getLogger("sam_detr")]):
        if args.input:
            predict_images(drawer, files, args.output, run)
        elif capture.isOpened():
            predict_stream(drawer, capture, name, output, run)
            capture.release()
        else:
            run.skip(name, "OpenCV cannot open it as a video")
    if args.json:
        write_json(args.json, run.results)
    kind = "image(s)" if args.input else "frame(s)"
    fps = run.frames / run.seconds if run.seconds else 0.0
    model_fps = run.frames / run.predictor_seconds if run.predictor_seconds else 0.0
    print(
        f"Processed {run.frames} {kind} in {run.seconds:.2f} s: {fps:.2f} frames per second "
        f"({model_fps:.2f} for the predictor alone); {len(run.results)} detections scoring "
        f"above {args.confidence_threshold:g}"
        + (f", output in {args.output}" if args.output else "")
        + (f", COCO results in {args.json}" if args.json else ""),
        flush=True,
    )
    if run.skipped:
        print(f"Skipped {len(run.skipped)} unreadable input(s):", file=sys.stderr)
        for path, reason in run.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    setup_logger(name="sam_detr")
    sys.exit(main(parse_args()))
