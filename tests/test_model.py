"""Behaviour of the SAMDETR meta-architecture (every config builds: test_state_dict_golden.py):
parameter counts of the paper models, training on empty images and degenerate boxes, float32
losses under autocast, reference boxes detached between layers, top-k and score-threshold
inference, frozen BatchNorm folded for inference, bfloat16 inference and torchvision's RoIAlign;
the salient-point cross-attention's weights against PyTorch's attention."""

import functools
from pathlib import Path

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from sam_detr.config import get_sam_detr_cfg
from sam_detr.deploy.batchnorm_folding import fold_frozen_batchnorm
from sam_detr.modeling.attention import (
    _merge_heads,
    _split_heads,
    multi_head_attention,
    shared_key_attention,
    softmax_attention,
)
from sam_detr.modeling.roi_align import roi_align, torchvision_path
from torch.nn import functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
PAPER_CONFIGS = sorted(
    p for p in CONFIGS if p.name.startswith("sam_detr_R50") and "_MS" not in p.name
)
MS_CONFIGS = sorted(p for p in CONFIGS if p.name.startswith("sam_detr_R50_MS"))
# Official parameter counts of SAM-DETR-R50 with 80 classes (GroupNorm after the input
# projection: 12-epoch models; the 50-epoch models have none: 2 x 256 fewer).
R50_PARAMS = 58_279_496
R50_SMCA_PARAMS = 58_328_744
GN_PARAMS = 512
# Official multi-scale counts (55,194,698 and 55,243,946 with 91 logits), with 80 classes.
R50_MS_PARAMS = 55_177_736
R50_MS_SMCA_PARAMS = 55_226_984

# A small, fast variant for behaviour tests.
SMALL = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.RES5_DILATION", 1,
    "MODEL.SAM_DETR.HIDDEN_DIM", 64, "MODEL.SAM_DETR.NHEADS", 4,
    "MODEL.SAM_DETR.ENC_LAYERS", 1, "MODEL.SAM_DETR.DEC_LAYERS", 2,
    "MODEL.SAM_DETR.DIM_FEEDFORWARD", 128, "MODEL.SAM_DETR.NUM_QUERIES", 10,
    "MODEL.SAM_DETR.POINT_CONV_DIM", 16, "MODEL.SAM_DETR.POINT_MLP_DIMS", [32, 32],
    "MODEL.SAM_DETR.INPUT_PROJ_GN_GROUPS", 8, "MODEL.SAM_DETR.NUM_CLASSES", 5,
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
]  # fmt: skip


def small_model(config="sam_detr_R50_SMCA.yaml", *overrides):
    torch.manual_seed(0)
    cfg = get_sam_detr_cfg(str(REPO_ROOT / "configs" / config), SMALL + list(overrides))
    return build_model(cfg)


def image_with_boxes(h, w, boxes, classes):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return {"image": torch.rand(3, h, w) * 255, "instances": inst}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.name for p in PAPER_CONFIGS])
def test_paper_parameter_counts(path):
    cfg = get_sam_detr_cfg(str(path), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    expected = R50_SMCA_PARAMS if cfg.MODEL.SAM_DETR.SMCA else R50_PARAMS
    if not cfg.MODEL.SAM_DETR.INPUT_PROJ_GN:
        expected -= GN_PARAMS
    assert sum(p.numel() for p in model.parameters()) == expected
    res5 = model.backbone.res5
    if cfg.MODEL.RESNETS.RES5_DILATION == 2:  # torchvision DC5: first block undilated
        assert res5[0].conv2.dilation == (1, 1) and res5[1].conv2.dilation == (2, 2)
        assert model.backbone.output_shape()["res5"].stride == 16


@pytest.mark.parametrize("path", MS_CONFIGS, ids=[p.name for p in MS_CONFIGS])
def test_multiscale_parameter_counts(path):
    cfg = get_sam_detr_cfg(str(path), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    expected = R50_MS_SMCA_PARAMS if cfg.MODEL.SAM_DETR.SMCA else R50_MS_PARAMS
    assert sum(p.numel() for p in model.parameters()) == expected
    strides = [model.backbone.output_shape()[name].stride for name in model.in_features]
    assert strides == [8, 16, 32]


def test_training_with_empty_image_and_degenerate_boxes():
    model = small_model()
    model.train()
    batch = [
        image_with_boxes(64, 96, [[10, 10, 50, 40], [30, 20, 30, 60], [5, 5, 5, 5]], [1, 4, 0]),
        image_with_boxes(80, 64, [], []),
    ]
    with EventStorage():
        losses = model(batch)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_batch_without_any_annotation_trains():
    model = small_model()
    model.train()
    with EventStorage():
        losses = model([image_with_boxes(64, 64, [], []), image_with_boxes(48, 64, [], [])])
    assert losses["loss_bbox"].item() == 0 and losses["loss_ce"].item() > 0
    sum(losses.values()).backward()


def test_losses_are_float32_under_autocast():
    model = small_model()
    model.train()
    batch = [image_with_boxes(64, 96, [[10, 10, 50, 40]], [2])]
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("scope", ["model", "backbone"])
def test_amp_scope_decides_what_runs_in_bfloat16(scope):
    """SOLVER.AMP.SCOPE "backbone": under autocast only the backbone computes in bfloat16;
    the transformer reads float32 features and its layers output float32."""
    model = small_model("sam_detr_R50.yaml", "SOLVER.AMP.SCOPE", scope)
    model.train()
    seen = {}

    def record(name, output):
        seen[name] = output.dtype  # returns None: the output is kept

    hooks = [
        model.backbone.register_forward_hook(
            lambda m, i, out: record("backbone", next(iter(out.values())))
        ),
        model.transformer.decoder[-1].register_forward_hook(
            lambda m, i, out: record("decoder", out)
        ),
    ]
    batch = [image_with_boxes(64, 96, [[10, 10, 50, 40]], [2])]
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    for hook in hooks:
        hook.remove()
    sum(losses.values()).backward()
    inner = torch.bfloat16 if scope == "model" else torch.float32
    assert seen == {"backbone": torch.bfloat16, "decoder": inner}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="SOLVER.AMP.SCOPE must be one of"):
        small_model("sam_detr_R50.yaml", "SOLVER.AMP.SCOPE", "transformer")


def test_reference_boxes_are_detached_between_layers():
    # Only the last layer is supervised: the first box head refines the next layer's
    # reference boxes, which carry no gradient, so it must receive none.
    model = small_model("sam_detr_R50.yaml", "MODEL.SAM_DETR.AUX_LOSS", False)
    model.train()
    with EventStorage():
        losses = model([image_with_boxes(64, 96, [[10, 10, 50, 40]], [2])])
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    sum(losses.values()).backward()
    first, last = model.transformer.bbox_embed[0], model.transformer.bbox_embed[-1]
    assert all(p.grad is None or not p.grad.any() for p in first.parameters())
    assert last.layers[-1].weight.grad.abs().sum() > 0


def test_out_of_range_class_is_refused():
    model = small_model()
    model.train()
    with EventStorage(), pytest.raises(ValueError, match="NUM_CLASSES=5"):
        model([image_with_boxes(64, 64, [[1, 1, 20, 20]], [7])])


def test_inference_when_fewer_candidates_than_detections_per_image():
    model = small_model(
        "sam_detr_R50.yaml", "MODEL.SAM_DETR.NUM_QUERIES", 3, "MODEL.SAM_DETR.NUM_CLASSES", 2
    )
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 128, "width": 192}])
    inst = out["instances"]
    assert inst.image_size == (128, 192)
    assert len(inst) <= 3 * 2
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 192).all()


def test_score_threshold_drops_low_scores():
    model = small_model()
    model.eval()
    batch = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        everything = model(batch)[0]["instances"]
        threshold = everything.scores.median().item()
        model.score_threshold = threshold
        kept = model(batch)[0]["instances"]
    assert len(everything) == 10 * 5  # all queries x classes (fewer than 100)
    assert 0 < len(kept) < len(everything)
    assert (kept.scores > threshold).all()
    assert torch.equal(kept.scores, everything.scores[everything.scores > threshold])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.SAM_DETR.NHEADS", 7, "HIDDEN_DIM=64 is not divisible by MODEL.SAM_DETR.NHEADS=7"),
        ("MODEL.SAM_DETR.NUM_QUERIES", 0, "MODEL.SAM_DETR.NUM_QUERIES must be >= 1"),
        ("MODEL.SAM_DETR.PRIOR_PROB", 1.0, "MODEL.SAM_DETR.PRIOR_PROB must be in (0, 1)"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError) as err:
        small_model("sam_detr_R50.yaml", key, value)
    assert message in str(err.value)


def test_folding_frozen_batchnorm_keeps_outputs_and_state_dict():
    """Same outputs and state_dict; the folded copies are what runs (the norms no longer
    matter); a folded model refuses new weights and training."""
    model = small_model("sam_detr_R50.yaml")
    model.eval()
    with torch.no_grad():  # FrozenBN with statistics that are not the identity
        for m in model.backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    batch = [{"image": torch.rand(3, 64, 96) * 255}]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model.inference(batch, do_postprocess=False)
        assert fold_frozen_batchnorm(model) == 20  # R18: stem, 16 block convs, 3 shortcuts
        after = model.inference(batch, do_postprocess=False)
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(after["pred_boxes"], before["pred_boxes"], rtol=0, atol=1e-5)
    folded = model.state_dict()
    assert folded.keys() == state.keys()
    assert all(torch.equal(folded[k], v) for k, v in state.items())
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.fill_(1e3)
        unchanged = model.inference(batch, do_postprocess=False)
    torch.testing.assert_close(unchanged["pred_logits"], after["pred_logits"], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Cannot load weights into this model: frozen"):
        model.load_state_dict(state)
    with pytest.raises(RuntimeError, match="Cannot train this model: frozen BatchNorm"):
        model.train()


def test_bfloat16_inference_follows_float32():
    fp32 = small_model("sam_detr_R50.yaml").eval()
    bf16 = small_model(
        "sam_detr_R50.yaml", "TEST.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "bfloat16"
    ).eval()
    bf16.load_state_dict(fp32.state_dict())
    batch = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        expected = fp32.inference(batch, do_postprocess=False)
        ours = bf16.inference(batch, do_postprocess=False)
    assert str(bf16.inference_autocast) == "mixed bfloat16 on cpu"
    assert ours["pred_logits"].dtype == torch.float32  # detections are computed in float32
    assert not torch.equal(ours["pred_logits"], expected["pred_logits"])
    assert (ours["pred_boxes"] - expected["pred_boxes"]).abs().max() < 0.02
    assert (ours["pred_logits"] - expected["pred_logits"]).abs().max() < 0.1


def test_torchvision_roi_align_gives_the_same_model():
    ours = small_model("sam_detr_R50_SMCA.yaml").eval()
    theirs = small_model("sam_detr_R50_SMCA.yaml", "MODEL.SAM_DETR.ROI_ALIGN", "torchvision")
    theirs.load_state_dict(ours.state_dict())
    aligners = [m.transformer.decoder[0].semantics_aligner for m in (ours, theirs)]
    assert aligners[0].roi_align is roi_align and aligners[1].roi_align is torchvision_path
    batch = [{"image": torch.rand(3, 64, 96) * 255}, {"image": torch.rand(3, 80, 64) * 255}]
    with torch.no_grad():
        a = ours.inference(batch, do_postprocess=False)
        b = theirs.eval().inference(batch, do_postprocess=False)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=0, atol=1e-5)


def test_shared_key_attention_is_scaled_dot_product_attention():
    """Each head's d-dim queries against keys shared by all heads, with a padding (-inf) and
    SMCA-like bias: the weights ``F.scaled_dot_product_attention`` applies when the keys are
    repeated per head, values included (float64, gradients too)."""
    generator = torch.Generator().manual_seed(0)
    B, M, N, S, d = 2, 4, 5, 12, 16
    q = torch.randn(B, M, N, d, generator=generator, dtype=torch.float64)
    k = torch.randn(B, S, d, generator=generator, dtype=torch.float64)
    v = torch.randn(B, M, S, d // M, generator=generator, dtype=torch.float64)
    bias = -torch.rand(B, M, N, S, generator=generator, dtype=torch.float64) * 5
    bias[1, ..., -3:] = float("-inf")  # image 1's last cells are padding
    for x in (q, k, bias):
        x.requires_grad_(True)
    ours = shared_key_attention(q, k, bias) @ v
    theirs = F.scaled_dot_product_attention(q, k[:, None].expand(-1, M, -1, -1), v, attn_mask=bias)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    grads_ours = torch.autograd.grad((ours * weights).sum(), (q, k, bias))
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), (q, k, bias))
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_multi_head_attention_runs_in_float32_under_cpu_autocast():
    """Heads split and merged around softmax(q k^T / sqrt(c) + bias) v (float64 against the
    formula, padding bias included); under bfloat16 CPU autocast the attention of bfloat16
    inputs is computed in float32 (as float32 attention of the same values, not bfloat16's),
    and the gradients reach the bfloat16 inputs."""
    generator = torch.Generator().manual_seed(0)
    B, L, S, d, heads = 2, 7, 30, 32, 4
    q, k, v = (torch.randn(B, n, d, generator=generator, dtype=torch.float64) for n in (L, S, S))
    bias = torch.zeros(B, 1, 1, S, dtype=torch.float64)
    bias[1, ..., -5:] = float("-inf")
    split = functools.partial(_split_heads, num_heads=heads)
    expected = _merge_heads(softmax_attention(split(q), split(k), bias) @ split(v))
    ours = multi_head_attention(q, k, v, heads, bias)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)

    low = [x.to(torch.bfloat16).requires_grad_(True) for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = multi_head_attention(*low, heads, bias)
        in_bfloat16 = F.scaled_dot_product_attention(*map(split, low), attn_mask=bias.bfloat16())
    assert mixed.dtype == torch.float32 and in_bfloat16.dtype == torch.bfloat16
    exact = multi_head_attention(*(x.detach().double() for x in low), heads, bias)
    torch.testing.assert_close(mixed.double(), exact, rtol=0, atol=1e-6)
    bfloat16_error = (_merge_heads(in_bfloat16).double() - exact).abs().max()
    assert bfloat16_error > 1e-4  # what computing it in bfloat16 would have cost
    mixed.sum().backward()
    assert all(x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all() for x in low)
