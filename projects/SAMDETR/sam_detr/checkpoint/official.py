"""Conversion of checkpoints of the official SAM-DETR implementation
(github.com/ZhangGongjie/SAM-DETR) into checkpoints of this project: parameter renaming
(torchvision ResNet -> Detectron2 ResNet, decoder layer parts -> Semantics Aligner and
attention modules), COCO's 91 category-id logits -> Detectron2's 80 contiguous classes,
and the choice of the matching config from the official training arguments (single-scale
R50 / R50-DC5 and multi-scale R50-MS, with or without SMCA)."""

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

# Official training runs of at least this many epochs have no input-projection GroupNorm.
OFFICIAL_NO_GN_MIN_EPOCHS = 25
# Outputs per salient point of the official point predictor with SMCA: (x, y) + 2 scales.
_POINT_OUTPUTS_SMCA = 4
# The official multi-scale decoder assigns levels to exactly this many layers.
OFFICIAL_MS_DEC_LAYERS = 6
# Prefix of the duplicate box heads the official model also registers under its decoder.
_DUPLICATE_BOX_HEADS = "transformer.decoder.bbox_embed."

# (official pattern, our replacement), applied in order, first match wins.
_RENAMES: List[Tuple[str, str]] = [
    (r"^backbone\.0\.body\.conv1\.", "backbone.stem.conv1."),
    (r"^backbone\.0\.body\.bn1\.", "backbone.stem.conv1.norm."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.conv(\d)\.", "backbone.res{s}.\\2.conv\\3."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.bn(\d)\.", "backbone.res{s}.\\2.conv\\3.norm."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.0\.", "backbone.res{s}.\\2.shortcut."),
    (
        r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.1\.",
        "backbone.res{s}.\\2.shortcut.norm.",
    ),
    (r"^input_proj\.0\.(\d)\.", "input_proj.\\1."),  # single-scale only, see below
    (r"^query_embed\.", "reference_boxes."),
    (r"^transformer\.level_embed$", "transformer.encoder.level_embed"),
    (r"^transformer\.encoder\.layers\.", "transformer.encoder."),
    (r"^bbox_embed\.", "transformer.bbox_embed."),
    (r"^class_embed\.", "class_embed."),
]
# Parts of an official decoder layer -> ours.
_DECODER_PARTS: Dict[str, str] = {
    "sa_qcontent_proj": "self_attn.q_content_proj",
    "sa_qpos_proj": "self_attn.q_pos_proj",
    "sa_kcontent_proj": "self_attn.k_content_proj",
    "sa_kpos_proj": "self_attn.k_pos_proj",
    "sa_v_proj": "self_attn.v_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "ca_qcontent_proj": "cross_attn.q_content_proj",
    "ca_kcontent_proj": "cross_attn.k_content_proj",
    "ca_v_proj": "cross_attn.v_proj",
    "ca_qpos_sine_proj": "cross_attn.q_pos_proj",
    "ca_kpos_sine_proj": "cross_attn.k_pos_proj",
    "cross_attn.out_proj": "cross_attn.out_proj",
    "point1.0": "semantics_aligner.point_conv",
    "attn1": "semantics_aligner.content_reweight",
    "attn2": "semantics_aligner.position_reweight",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
    "linear1": "linear1",
    "linear2": "linear2",
}
# The official point predictor is nn.Sequential(Linear, ReLU, ...): Linear at 0, 2, 4, 6.
_POINT_MLP = re.compile(r"^point2\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.(.*)$")


class NotAnOfficialCheckpoint(ValueError):
    """The file is not an official SAM-DETR checkpoint (or not one we can convert)."""


def rename_official_key(key: str, multiscale: bool = False) -> Optional[str]:
    """Our parameter name for an official one, or None if it has no counterpart. The input
    projections of a multi-scale model keep their names (``input_proj.<level>.<0|1>``)."""
    if multiscale and key.startswith("input_proj."):
        return key
    m = _DECODER_LAYER.match(key)
    if m:
        layer, rest = m.groups()
        pm = _POINT_MLP.match(rest)
        if pm:
            return (
                f"transformer.decoder.{layer}.semantics_aligner.point_mlp.layers."
                f"{int(pm.group(1)) // 2}.{rest[pm.end():]}"
            )
        for part, ours in _DECODER_PARTS.items():
            if rest.startswith(part + "."):
                return f"transformer.decoder.{layer}.{ours}{rest[len(part):]}"
        return None
    for pattern, repl in _RENAMES:
        m = re.match(pattern, key)
        if m:
            if "{s}" in repl:  # torchvision layer i is Detectron2 stage res(i + 1)
                repl = repl.replace("{s}", str(int(m.group(1)) + 1))
            return re.sub(pattern, repl, key)
    return None


def coco_contiguous_ids() -> List[int]:
    """COCO category ids of Detectron2's 80 contiguous classes, in class order."""
    return sorted(c["id"] for c in COCO_CATEGORIES if c["isthing"])


@dataclass
class OfficialVariant:
    """What an official checkpoint was trained as, and the config of ours that matches."""

    dc5: Optional[bool]  # None when the checkpoint has no training arguments
    smca: bool
    input_proj_gn: bool
    overrides: Dict[str, Any] = field(default_factory=dict)
    multiscale: bool = False
    epochs: Optional[int] = None  # of the training arguments, if any

    @property
    def config_name(self) -> str:
        """Our config file name (the one of DC5 is a guess when ``dc5`` is None). Multi-scale
        models always have the GroupNorm; their schedule comes from the epochs (12 when
        unknown: the schedule does not change the model)."""
        scale = "_MS" if self.multiscale else ("_DC5" if self.dc5 else "")
        name = "sam_detr_R50" + scale + ("_SMCA" if self.smca else "")
        if self.multiscale:
            long = (self.epochs or 0) >= OFFICIAL_NO_GN_MIN_EPOCHS
        else:
            long = not self.input_proj_gn
        return name + ("_50ep" if long else "") + ".yaml"

    def override_list(self) -> List[str]:
        """Overrides (``KEY VALUE`` pairs) the config needs beyond the file."""
        return [str(x) for kv in sorted(self.overrides.items()) for x in kv]


def load_official(path: Path, trust_pickle: bool = False) -> Dict[str, Any]:
    """Load an official checkpoint. Without ``trust_pickle`` only tensors, containers and
    ``argparse.Namespace`` may be unpickled (no arbitrary code runs)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        if trust_pickle:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable / unsafe files
        hint = "" if trust_pickle else " If you trust the file, retry with --trust-pickle."
        raise NotAnOfficialCheckpoint(f"{path}: cannot be loaded as a checkpoint ({e}).{hint}")
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise NotAnOfficialCheckpoint(
            f"{path}: not an official SAM-DETR checkpoint: expected a dict with a 'model' "
            f"state_dict, found {type(ckpt).__name__}"
            + (f" with keys {sorted(ckpt)[:10]}" if isinstance(ckpt, Mapping) else "")
        )
    return dict(ckpt)


def detect_variant(ckpt: Mapping[str, Any]) -> OfficialVariant:
    """Architecture and sizes from the training arguments (``args``) and the weights."""
    state = ckpt["model"]
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    if args.get("masks"):
        raise NotAnOfficialCheckpoint(
            "segmentation SAM-DETR checkpoints are not supported (args.masks=True)."
        )
    multiscale = (
        bool(args["multiscale"]) if "multiscale" in args else "transformer.level_embed" in state
    )
    point_out = state.get("transformer.decoder.layers.0.point2.6.bias")
    heads = int(args.get("nheads", 8))
    smca = (
        bool(args["smca"])
        if "smca" in args
        else (point_out is not None and point_out.numel() == heads * _POINT_OUTPUTS_SMCA)
    )
    gn = "input_proj.0.1.weight" in state
    overrides: Dict[str, Any] = {}
    sizes = {
        "MODEL.SAM_DETR.HIDDEN_DIM": ("hidden_dim", 256),
        "MODEL.SAM_DETR.NHEADS": ("nheads", 8),
        "MODEL.SAM_DETR.ENC_LAYERS": ("enc_layers", 6),
        "MODEL.SAM_DETR.DEC_LAYERS": ("dec_layers", 6),
        "MODEL.SAM_DETR.DIM_FEEDFORWARD": ("dim_feedforward", 2048),
        "MODEL.SAM_DETR.NUM_QUERIES": ("num_queries", 300),
    }
    for key, (arg, paper) in sizes.items():
        if arg in args and args[arg] != paper:
            overrides[key] = args[arg]
    depth = {"resnet50": 50, "resnet101": 101}.get(args.get("backbone", "resnet50"))
    if depth is None:
        raise NotAnOfficialCheckpoint(f"unsupported official backbone {args.get('backbone')!r}")
    if depth != 50:
        overrides["MODEL.RESNETS.DEPTH"] = depth
    dc5 = bool(args["dilation"]) if "dilation" in args else None
    if multiscale:
        _multiscale_overrides(args, dc5, overrides)
    epochs = int(args["epochs"]) if "epochs" in args else None
    return OfficialVariant(
        dc5=dc5,
        smca=smca,
        input_proj_gn=gn,
        overrides=overrides,
        multiscale=multiscale,
        epochs=epochs,
    )


def _multiscale_overrides(args: Mapping[str, Any], dc5: Optional[bool], overrides: Dict) -> None:
    """Refuse what our multi-scale configs cannot express; add the encoder's FFN width when
    the model is not paper-size (the official encoder halves ``dim_feedforward``)."""
    if dc5:
        raise NotAnOfficialCheckpoint(
            "multi-scale SAM-DETR with --dilation is not supported (its levels would be "
            "strides 8, 16, 16; no official model was trained so)."
        )
    dec_layers = int(args.get("dec_layers", OFFICIAL_MS_DEC_LAYERS))
    if dec_layers != OFFICIAL_MS_DEC_LAYERS:
        raise NotAnOfficialCheckpoint(
            f"multi-scale checkpoint with dec_layers={dec_layers}: the official multi-scale "
            f"decoder has exactly {OFFICIAL_MS_DEC_LAYERS} layers."
        )
    if "MODEL.SAM_DETR.DIM_FEEDFORWARD" in overrides:
        overrides["MODEL.SAM_DETR.ENC_DIM_FEEDFORWARD"] = (
            overrides["MODEL.SAM_DETR.DIM_FEEDFORWARD"] // 2
        )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], coco_classes: bool = True, multiscale: bool = False
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename an official state_dict (of a multi-scale model with ``multiscale``); with
    ``coco_classes`` keep the 80 COCO classes of Detectron2 (in its order) from the 91
    category-id logits. Returns the converted dict and the official keys that have no
    counterpart. Floats are converted to float32."""
    ids = coco_contiguous_ids() if coco_classes else None
    converted: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, value in state.items():
        if key.startswith(_DUPLICATE_BOX_HEADS):
            twin = key[len("transformer.decoder.") :]
            if twin in state and torch.equal(state[twin], value):
                continue  # the same tensor, registered twice by the official model
        new = rename_official_key(key, multiscale)
        if new is None:
            unknown.append(key)
            continue
        if value.is_floating_point():
            value = value.float()
        if ids is not None and new.startswith("class_embed."):
            if value.shape[0] <= max(ids):
                raise NotAnOfficialCheckpoint(
                    f"'{key}' has {value.shape[0]} classes; COCO's category ids need "
                    f"{max(ids) + 1}. Convert with --keep-classes for a non-COCO model."
                )
            value = value[ids]
        converted[new] = value.contiguous()
    return converted, unknown


def check_against_model(
    converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    """Raise ``NotAnOfficialCheckpoint`` naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = sorted(
        f"{k}: {tuple(converted[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in set(converted) & set(expected)
        if converted[k].shape != expected[k].shape
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (
                f", ... ({len(items)} in all)" if len(items) > 8 else ""
            )
            problems.append(f"{title} keys: {shown}")
    if problems:
        raise NotAnOfficialCheckpoint("; ".join(problems))
