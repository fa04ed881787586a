"""Shared access to ``../shared/fixtures/official_sam_detr`` (outputs of the official
SAM-DETR implementation): the path, a skip marker for when it is absent, and a builder of
our model loaded with a converted fixture checkpoint at the fixture's reduced sizes."""

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from sam_detr.checkpoint.official import convert_state_dict, detect_variant, load_official
from sam_detr.config import get_sam_detr_cfg
from sam_detr.utils.tf32 import apply_tf32_mode
from torchvision.ops import box_convert

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "official_sam_detr"
VARIANTS = ["r50_smca_e12", "r50_dc5_e50"]
# Multi-scale fixtures (deformable encoder over res3-res5, six decoder layers).
MS_VARIANTS = ["r50_ms_smca_e12"]
# Decoder layers of each fixture's reduced model (see the fixtures' README).
DECODER_LAYERS = {"r50_smca_e12": 2, "r50_dc5_e50": 2, "r50_ms_smca_e12": 6}

requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason=f"official SAM-DETR fixtures not found at {FIXTURES} (developer-only data)",
)


def fixture_model(stem: str, coco_classes: bool) -> Tuple[torch.nn.Module, Dict]:
    """Our model with the converted official checkpoint ``stem``, and the fixture's io."""
    ckpt = load_official(FIXTURES / f"{stem}.pth")
    variant = detect_variant(ckpt)
    state, unknown = convert_state_dict(
        ckpt["model"], coco_classes=coco_classes, multiscale=variant.multiscale
    )
    assert not unknown
    overrides = variant.override_list() + [
        "MODEL.SAM_DETR.NUM_CLASSES", state["class_embed.0.weight"].shape[0],
        "MODEL.SAM_DETR.DROPOUT", 0.0,
        "MODEL.PIXEL_MEAN", [0.0, 0.0, 0.0],  # fixture images are already normalised
        "MODEL.PIXEL_STD", [1.0, 1.0, 1.0],
        "MODEL.WEIGHTS", "",
        "MODEL.DEVICE", "cpu",
        "ALLOW_TF32", False,  # exact float32 (parity), were this run on a GPU
    ]  # fmt: skip
    cfg = get_sam_detr_cfg(str(REPO_ROOT / "configs" / variant.config_name), overrides)
    apply_tf32_mode(cfg)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model, torch.load(FIXTURES / f"{stem}_io.pth")


def fixture_batch(io: Dict, with_targets: bool, dtype=torch.float32) -> List[Dict]:
    """Detectron2 inputs for the fixture images, with ``instances`` from its targets."""
    batch = []
    for image, target in zip(io["images"], io["targets"]):
        item = {"image": image.to(dtype)}
        if with_targets:
            H, W = image.shape[-2:]
            scale = torch.tensor([W, H, W, H], dtype=dtype)
            inst = Instances((H, W))
            inst.gt_boxes = Boxes(box_convert(target["boxes"].to(dtype), "cxcywh", "xyxy") * scale)
            inst.gt_classes = target["labels"]
            item["instances"] = inst
        batch.append(item)
    return batch
