#!/usr/bin/env python
"""Detect objects with an exported SAM-DETR (``tools/export_model.py --format onnx``) using
onnxruntime alone: no PyTorch, no Detectron2, no project code; numpy, OpenCV and onnxruntime.
What the model needs (test resize, input format, class names, score threshold) is read from
the ONNX file's metadata. Prints the detections and draws them into ``--output``.

Example: python tools/onnx_predict.py image1.jpg image2.png --model output/demo/export/model.onnx \
    --output output/demo/onnx_predictions --min-score 0.3

The resize is OpenCV's bilinear one; Detectron2's predictor resizes with Pillow, so scores can
differ slightly from ``SAMDETRPredictor``'s on the same file.
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import onnxruntime

BOX_COLOR = (0, 200, 0)  # BGR
TEXT_SCALE = 0.4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", required=True, help="model.onnx from tools/export_model.py")
    parser.add_argument("--output", help="folder for the drawn images (default: none drawn)")
    parser.add_argument(
        "--min-score", type=float, help="default: the model's MODEL.SAM_DETR.SCORE_THRESH_TEST"
    )
    return parser.parse_args(argv)


class OnnxDetector:
    """An exported SAM-DETR and the metadata written with it."""

    def __init__(self, path: str) -> None:
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"input_format", "min_size_test", "max_size_test"} - set(meta)
        if missing:
            raise SystemExit(
                f"{path} lacks the metadata {sorted(missing)}: export it with "
                "tools/export_model.py."
            )
        self.info = {key: json.loads(value) for key, value in meta.items()}

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Shortest side to ``min_size_test``, longest at most ``max_size_test``
        (Detectron2's ``ResizeShortestEdge`` sizes)."""
        h, w = image.shape[:2]
        short, longest = self.info["min_size_test"], self.info["max_size_test"]
        scale = short / min(h, w)
        if max(h, w) * scale > longest:
            scale = longest / max(h, w)
        size = (int(w * scale + 0.5), int(h * scale + 0.5))
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)

    def __call__(self, image_bgr: np.ndarray, min_score: float) -> Dict[str, np.ndarray]:
        """Detections of one BGR uint8 image scoring above ``min_score``, boxes XYXY in its
        pixels (inside the image)."""
        resized = self.resize(image_bgr)
        pixels = resized[:, :, ::-1] if self.info["input_format"] == "RGB" else resized
        tensor = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        boxes, scores, classes = self.session.run(["boxes", "scores", "classes"], {"image": tensor})
        # As the predictor (detector_postprocess): the boxes come clipped to the image from
        # the graph; those left empty are dropped.
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep = (scores > min_score) & nonempty
        scale = np.array(
            [image_bgr.shape[1] / resized.shape[1], image_bgr.shape[0] / resized.shape[0]]
        )
        return {
            "boxes": boxes[keep] * np.tile(scale, 2),
            "scores": scores[keep],
            "classes": classes[keep],
        }

    def class_name(self, index: int) -> str:
        names = self.info.get("class_names")
        return names[index] if names else str(index)


def draw(
    image: np.ndarray, detections: Dict[str, np.ndarray], detector: OnnxDetector
) -> np.ndarray:
    drawn = image.copy()
    for box, score, cls in zip(detections["boxes"], detections["scores"], detections["classes"]):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(drawn, (x0, y0), (x1, y1), BOX_COLOR, 1)
        label = f"{detector.class_name(int(cls))} {score:.2f}"
        cv2.putText(
            drawn, label, (x0, max(y0 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, TEXT_SCALE, BOX_COLOR
        )
    return drawn


def main(args: argparse.Namespace) -> List[Dict[str, np.ndarray]]:
    detector = OnnxDetector(args.model)
    min_score = (
        detector.info.get("score_threshold", 0.0) if args.min_score is None else args.min_score
    )
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    results = []
    for path in args.images:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"Cannot read image '{path}'.")
        detections = detector(image, min_score)
        results.append(detections)
        print(f"{path}: {len(detections['scores'])} detections with score > {min_score:g}")
        for box, score, cls in zip(
            detections["boxes"], detections["scores"], detections["classes"]
        ):
            coords = ", ".join(f"{v:.1f}" for v in box)
            print(f"  {detector.class_name(int(cls))} {score:.3f} [{coords}]")
        if args.output:
            cv2.imwrite(
                os.path.join(args.output, os.path.basename(path)), draw(image, detections, detector)
            )
    return results


if __name__ == "__main__":
    main(parse_args())
