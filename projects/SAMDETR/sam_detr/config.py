"""Config keys of SAM-DETR: ``add_sam_detr_config(cfg)`` adds ``MODEL.SAM_DETR`` and the
solver/test keys the training recipe needs. Defaults are the paper's R50 12-epoch model."""

import logging
from typing import Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger(__name__)

__all__ = ["add_sam_detr_config", "check_choice", "get_sam_detr_cfg", "validate_sam_detr_config"]

# ---- The values that keys with a fixed set of choices take (the model maps each to a class) ----
# MODEL.SAM_DETR.ROI_ALIGN
ROI_ALIGN_CHOICES = ("auto", "torchvision")
# MODEL.SAM_DETR.QUERY_RESAMPLING
QUERY_RESAMPLING_CHOICES = ("salient_points", "avg_pool", "max_pool")
# MODEL.SAM_DETR.SEARCH_RANGE
SEARCH_RANGE_CHOICES = ("box", "image")
# SOLVER.AMP.DTYPE
AMP_AUTO = "auto"
AMP_DTYPE_CHOICES = (AMP_AUTO, "float16", "bfloat16")
# SOLVER.AMP.SCOPE
AMP_SCOPE_CHOICES = ("model", "backbone")
# DATASETS.INVALID_BOXES
INVALID_BOX_CHOICES = ("drop", "error")

# The ablation keys and their defaults (the paper's model); the baseline takes no other value.
ABLATION_DEFAULTS = {
    "QUERY_RESAMPLING": "salient_points",
    "NUM_SALIENT_POINTS": 0,
    "SEARCH_RANGE": "box",
    "REWEIGHTING": True,
    "SMCA": False,
}


def add_sam_detr_config(cfg: CN) -> None:
    """Add SAM-DETR's keys to a Detectron2 config, in place."""
    cfg.MODEL.SAM_DETR = CN()
    _C = cfg.MODEL.SAM_DETR
    # Number of foreground classes K (COCO: 80 contiguous classes).
    _C.NUM_CLASSES = 80
    # Number of object queries N, each with one learnable reference box.
    _C.NUM_QUERIES = 300
    # Transformer width d.
    _C.HIDDEN_DIM = 256
    # Attention heads M; also the number of salient points per query (one point per head).
    _C.NHEADS = 8
    _C.ENC_LAYERS = 6
    _C.DEC_LAYERS = 6
    _C.DIM_FEEDFORWARD = 2048
    _C.DROPOUT = 0.1
    # Gaussian-like spatial prior around each salient point (SMCA) in cross-attention.
    _C.SMCA = ABLATION_DEFAULTS["SMCA"]
    # Divisor of the SMCA log-weights (the value SMCA-DETR uses).
    _C.SMCA_DIVISOR = 8.0
    # GroupNorm after the 1x1 input projection (present in the official 12-epoch models).
    _C.INPUT_PROJ_GN = False
    _C.INPUT_PROJ_GN_GROUPS = 32
    # Side of the RoIAlign grid pooled inside each reference box (7 -> 7x7).
    _C.ROI_SIZE = 7
    # RoIAlign implementation: "auto" computes it as matrix products on CPUs (much faster than
    # torchvision's CPU kernel, same numbers) and uses torchvision's kernel on GPUs;
    # "torchvision" uses torchvision's kernel everywhere.
    _C.ROI_ALIGN = "auto"
    # ---- Ablations of the paper (Tables 1-3); the defaults are the paper's model ----
    # False: the paper's baseline, DETR with aligned setups (300 queries, focal loss): learnable
    # query positions, plain cross-attention, no Semantics Aligner nor reference boxes.
    _C.SEMANTIC_ALIGNED_MATCHING = True
    # How the Semantics Aligner re-samples a query from its RoI: "salient_points" (the paper's),
    # or the RoI's "avg_pool" / "max_pool" for every head, positioned at the box centre.
    _C.QUERY_RESAMPLING = ABLATION_DEFAULTS["QUERY_RESAMPLING"]
    # Salient points per query: 0 = one per attention head (SP x8); 1 = one shared by all (SP x1).
    _C.NUM_SALIENT_POINTS = ABLATION_DEFAULTS["NUM_SALIENT_POINTS"]
    # Where salient points are searched: "box" (inside the reference box, the paper's) or
    # "image" (box centre plus an offset in units of the image, sampled from the whole map).
    _C.SEARCH_RANGE = ABLATION_DEFAULTS["SEARCH_RANGE"]
    # Reweighting of the re-sampled queries and positions by the previous queries (RW).
    _C.REWEIGHTING = ABLATION_DEFAULTS["REWEIGHTING"]
    # ---- Multi-scale SAM-DETR (the official --multiscale models) ----
    # Backbone features the transformer reads, its feature levels from fine to coarse (list
    # them in MODEL.RESNETS.OUT_FEATURES too). [] = the backbone's coarsest output alone
    # (single-scale). Several levels take a deformable encoder over all of them and one
    # input projection each.
    _C.IN_FEATURES = []
    # The feature (one of IN_FEATURES) each decoder layer works on, one entry per layer; [] =
    # the last of IN_FEATURES for every layer. Official multi-scale: res5 x2, res4 x2, res3 x2.
    _C.DECODER_IN_FEATURES = []
    # Sampling points per head and level of the multi-scale deformable attention.
    _C.DEFORMABLE_POINTS = 4
    # FFN width of the deformable encoder's layers; 0 = DIM_FEEDFORWARD (official
    # multi-scale: DIM_FEEDFORWARD // 2).
    _C.ENC_DIM_FEEDFORWARD = 0
    # Channels of the 1x1 conv that compresses RoI features before salient-point search.
    _C.POINT_CONV_DIM = 64
    # Hidden widths of the MLP predicting salient points from the flattened RoI features.
    _C.POINT_MLP_DIMS = [256, 512, 512]
    # Temperature of the sine embeddings (feature map and points).
    _C.POSITION_TEMPERATURE = 10000.0
    # Prior probability of the classifier bias at initialisation (focal-loss convention).
    _C.PRIOR_PROB = 0.01
    # With RES5_DILATION=2, dilate res5 the torchvision way (first block undilated), as
    # the official DC5 checkpoints were trained. False keeps Detectron2's placement.
    _C.TORCHVISION_DC5 = True
    # Weights of the losses (lambda_cls, lambda_L1, lambda_GIoU).
    _C.CLASS_WEIGHT = 2.0
    _C.L1_WEIGHT = 5.0
    _C.GIOU_WEIGHT = 2.0
    # Costs of the Hungarian matcher.
    _C.COST_CLASS = 2.0
    _C.COST_BBOX = 5.0
    _C.COST_GIOU = 2.0
    # Sigmoid focal loss parameters (also used by the matcher's class cost).
    _C.FOCAL_ALPHA = 0.25
    _C.FOCAL_GAMMA = 2.0
    # Losses on every decoder layer's output, not only the last.
    _C.AUX_LOSS = True
    # Detections scoring below this are dropped at inference (0 for COCO evaluation).
    _C.SCORE_THRESH_TEST = 0.0
    # Backbone in channels-last memory format: its convolutions run 1.5x faster on a CPU in
    # float32 and about 3x in bfloat16 (tools/benchmark.py), as GPU tensor cores prefer too.
    _C.CHANNELS_LAST = True
    # Loading weights that miss, add or reshape tensors is an error (training may still start
    # from a backbone-only checkpoint or re-initialise class heads). False: load what fits,
    # warn, and keep the rest as initialised (Detectron2's default behaviour).
    _C.STRICT_WEIGHTS = True
    # MODEL.WEIGHTS may be a pickle that names any Python global, which loading imports and
    # calls (a crafted .pkl / .pth runs code). False: .pkl files may hold only numpy arrays,
    # numbers, strings and containers, other files only what torch.load(weights_only=True)
    # reads, else an error names the global. True only for files from a source you trust.
    _C.TRUST_PICKLED_WEIGHTS = False

    # AdamW with a smaller learning rate for the backbone (DETR recipe).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Consecutive training steps with a non-finite loss or gradient that are skipped (weights
    # not updated, logged) before training stops; 0 stops at the first one.
    cfg.SOLVER.MAX_SKIPPED_STEPS = 5
    # Mixed precision (SOLVER.AMP.ENABLED, TEST.AMP.ENABLED): "auto" is float16 with gradient
    # scaling on CUDA, bfloat16 on CPUs with native bfloat16 (AVX512-BF16 / AMX) and float32
    # on other CPUs (where bfloat16 is emulated and slower); or "float16" / "bfloat16".
    cfg.SOLVER.AMP.DTYPE = "auto"
    # What runs in mixed precision (training, and inference with TEST.AMP): "model" (all but
    # matching and losses) or "backbone" (the transformer and heads stay in float32). On a
    # CPU a small transformer such as the demo's is slower in bfloat16 (its tensors are too
    # small for the casts to pay off) while its backbone runs 2.5x faster.
    cfg.SOLVER.AMP.SCOPE = "model"
    # Inference (evaluation, prediction) in mixed precision of SOLVER.AMP.DTYPE. Off by
    # default, so that COCO evaluation runs in float32 unless asked.
    cfg.TEST.AMP = CN({"ENABLED": False})
    # Flush float32 subnormal numbers to zero on the CPU (FTZ/DAZ, denormals.py), set by the
    # entry points before they build the model. A trained SMCA model produces many, which x86
    # CPUs process ~100x slower than normal numbers. No effect on GPU computations.
    cfg.FLUSH_DENORMALS = True
    # TensorFloat-32 in CUDA float32 matrix products and cuDNN convolutions (tf32.py), set by
    # the entry points for the whole process (training and its evaluations): several times
    # faster on Ampere and later GPUs, a 10-bit mantissa for the products' inputs. False:
    # exact float32 (as on CPUs, which it does not affect).
    cfg.ALLOW_TF32 = True

    # ---- Data checks (dataset_checks.py) ----
    # Boxes of zero width or height, or entirely outside their image: "drop" leaves them out
    # of training with one summary warning; "error" refuses the dataset. (Non-finite or
    # negative-size boxes, unknown categories and duplicated image ids are always refused.)
    cfg.DATASETS.INVALID_BOXES = "drop"
    # One shuffled stream batched in order, as DETR (sample_stream.py; True is refused).
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False

    # ---- Training recipe keys (train_net.py, dataset_mapper.py) ----
    # DETR crop branch: shortest-side sizes of the resize applied before the random crop of
    # INPUT.CROP.SIZE (DETR: {400, 500, 600}); the multi-scale resize follows the crop.
    cfg.INPUT.CROP.RESIZE_BEFORE_CROP = (400, 500, 600)
    # Probability of taking the crop branch instead of the plain multi-scale resize.
    cfg.INPUT.CROP.PROB = 0.5


def get_sam_detr_cfg(config_file: str, overrides: Sequence[str] = ()) -> CN:
    """A Detectron2 config with SAM-DETR's keys, merged from a file and ``KEY VALUE`` pairs, on
    the CPU (with a warning) when it asks for CUDA and none is available. Not frozen. An unknown
    key or an odd number of overrides is a ``ValueError`` naming the file and overrides."""
    cfg = get_cfg()
    add_sam_detr_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(overrides))
    except (KeyError, AssertionError) as e:  # yacs: unknown key, odd number of overrides
        raise ValueError(f"Invalid config {config_file} {list(overrides)}: {e.args[0]}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def validate_sam_detr_config(cfg: CN) -> None:
    """Raise ``ValueError`` naming the key for ``MODEL.SAM_DETR`` (and the other keys this
    project adds) values that cannot work."""
    c = cfg.MODEL.SAM_DETR
    positive = ["NUM_CLASSES", "NUM_QUERIES", "HIDDEN_DIM", "NHEADS", "DEC_LAYERS", "ROI_SIZE"]
    for key in positive + ["DIM_FEEDFORWARD", "POINT_CONV_DIM"]:
        if c[key] < 1:
            raise ValueError(f"MODEL.SAM_DETR.{key} must be >= 1, got {c[key]}.")
    if c.ENC_LAYERS < 0:
        raise ValueError(f"MODEL.SAM_DETR.ENC_LAYERS must be >= 0, got {c.ENC_LAYERS}.")
    if c.HIDDEN_DIM % c.NHEADS:
        raise ValueError(
            f"MODEL.SAM_DETR.HIDDEN_DIM={c.HIDDEN_DIM} is not divisible by "
            f"MODEL.SAM_DETR.NHEADS={c.NHEADS}."
        )
    if c.INPUT_PROJ_GN and c.HIDDEN_DIM % c.INPUT_PROJ_GN_GROUPS:
        raise ValueError(
            f"MODEL.SAM_DETR.HIDDEN_DIM={c.HIDDEN_DIM} is not divisible by "
            f"MODEL.SAM_DETR.INPUT_PROJ_GN_GROUPS={c.INPUT_PROJ_GN_GROUPS}."
        )
    if not 0 < c.PRIOR_PROB < 1:
        raise ValueError(f"MODEL.SAM_DETR.PRIOR_PROB must be in (0, 1), got {c.PRIOR_PROB}.")
    check_choice("MODEL.SAM_DETR.ROI_ALIGN", c.ROI_ALIGN, ROI_ALIGN_CHOICES)
    if not 0 <= c.DROPOUT < 1:
        raise ValueError(f"MODEL.SAM_DETR.DROPOUT must be in [0, 1), got {c.DROPOUT}.")
    _validate_levels(c)
    _validate_ablations(c)
    check_choice("SOLVER.AMP.DTYPE", cfg.SOLVER.AMP.DTYPE, AMP_DTYPE_CHOICES)
    check_choice("SOLVER.AMP.SCOPE", cfg.SOLVER.AMP.SCOPE, AMP_SCOPE_CHOICES)
    check_choice("DATASETS.INVALID_BOXES", cfg.DATASETS.INVALID_BOXES, INVALID_BOX_CHOICES)


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}.")


def _validate_levels(c: CN) -> None:
    """Refuse feature-level keys that name no level or do not fit the decoder."""
    in_features = list(c.IN_FEATURES)
    if len(set(in_features)) != len(in_features):
        raise ValueError(f"MODEL.SAM_DETR.IN_FEATURES lists a feature twice: {in_features}.")
    decoder = list(c.DECODER_IN_FEATURES)
    if decoder and len(decoder) != c.DEC_LAYERS:
        raise ValueError(
            f"MODEL.SAM_DETR.DECODER_IN_FEATURES has {len(decoder)} entries for "
            f"MODEL.SAM_DETR.DEC_LAYERS={c.DEC_LAYERS}: give one feature per decoder layer, "
            "or [] for the last of IN_FEATURES everywhere."
        )
    unknown = sorted(set(decoder) - set(in_features))
    if unknown:
        raise ValueError(
            f"MODEL.SAM_DETR.DECODER_IN_FEATURES names {unknown}, which are not in "
            f"MODEL.SAM_DETR.IN_FEATURES={in_features}."
        )
    if c.DEFORMABLE_POINTS < 1 or c.ENC_DIM_FEEDFORWARD < 0:
        raise ValueError(
            "MODEL.SAM_DETR.DEFORMABLE_POINTS must be >= 1 and ENC_DIM_FEEDFORWARD >= 0, got "
            f"{c.DEFORMABLE_POINTS} and {c.ENC_DIM_FEEDFORWARD}."
        )


def _validate_ablations(c: CN) -> None:
    """Refuse ablation keys with unknown values or combinations without a meaning."""
    check_choice("MODEL.SAM_DETR.QUERY_RESAMPLING", c.QUERY_RESAMPLING, QUERY_RESAMPLING_CHOICES)
    check_choice("MODEL.SAM_DETR.SEARCH_RANGE", c.SEARCH_RANGE, SEARCH_RANGE_CHOICES)
    if c.NUM_SALIENT_POINTS not in (0, 1, c.NHEADS):
        raise ValueError(
            "MODEL.SAM_DETR.NUM_SALIENT_POINTS must be 0 (one per head), 1 (shared by all "
            f"heads) or NHEADS={c.NHEADS}, got {c.NUM_SALIENT_POINTS}."
        )
    if not c.SEMANTIC_ALIGNED_MATCHING:
        changed = [k for k, default in ABLATION_DEFAULTS.items() if c[k] != default]
        if changed:
            raise ValueError(
                "MODEL.SAM_DETR.SEMANTIC_ALIGNED_MATCHING False is the baseline DETR, which has "
                f"no Semantics Aligner: leave MODEL.SAM_DETR.{', '.join(changed)} at the "
                "default."
            )
    elif c.QUERY_RESAMPLING != "salient_points":
        changed = [
            k
            for k in ("NUM_SALIENT_POINTS", "SEARCH_RANGE", "SMCA")
            if c[k] != ABLATION_DEFAULTS[k]
        ]
        if changed:
            raise ValueError(
                f"MODEL.SAM_DETR.QUERY_RESAMPLING {c.QUERY_RESAMPLING!r} pools the reference box "
                f"without salient points: MODEL.SAM_DETR.{', '.join(changed)} needs "
                "QUERY_RESAMPLING 'salient_points'."
            )
