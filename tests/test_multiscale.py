"""Multi-scale SAM-DETR: the deformable sampling equals a hand-written bilinear interpolation
(values and gradients), deformable attention starts as Deformable DETR does, each decoder
layer reads the level ``DECODER_IN_FEATURES`` names, the multi-scale model trains and infers
with the ablation switches too, level keys that cannot work are refused, and official
multi-scale checkpoints pick their config. (Parity with
the official multi-scale model: tests/test_official_parity.py; parameter counts:
tests/test_model.py; training, evaluation, prediction and conversion: their own tests.)"""

import argparse
import math

import pytest
import torch
from sam_detr.checkpoint.official import NotAnOfficialCheckpoint, detect_variant
from sam_detr.modeling.deformable_attention import (
    MultiScaleDeformableAttention,
    deformable_sampling,
)
from test_ablations import check_trains_and_infers
from test_model import small_model

K = "MODEL.SAM_DETR."
LEVELS = ["res3", "res4", "res5"]
# The small test model (tests/test_model.py) over three levels, two decoder layers.
MULTI_SCALE = [
    "MODEL.RESNETS.OUT_FEATURES", LEVELS,
    K + "IN_FEATURES", LEVELS,
    K + "DECODER_IN_FEATURES", ["res5", "res3"],
    K + "ENC_DIM_FEEDFORWARD", 64,
]  # fmt: skip
SIZES = [(3, 4), (2, 3)]


def bilinear(image, x, y):
    """Value of ``image (D, H, W)`` at (x, y) in [0, 1] of its extent (cell centres at
    (i + 0.5) / W), zero outside; written out corner by corner."""
    D, H, W = image.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D, dtype=image.dtype)
    for cx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for cy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= cx < W and 0 <= cy < H:
                out = out + wx * wy * image[:, cy, cx]
    return out


def sampling_inputs(dtype=torch.float64):
    torch.manual_seed(0)
    B, M, D, Q, P = 2, 2, 3, 4, 2
    S = sum(h * w for h, w in SIZES)
    value = torch.randn(B, S, M, D, dtype=dtype)
    locations = torch.rand(B, Q, M, len(SIZES), P, 2, dtype=dtype) * 1.4 - 0.2  # some outside
    weights = torch.rand(B, Q, M, len(SIZES), P, dtype=dtype)
    return value, locations, weights


def test_deformable_sampling_is_weighted_bilinear_interpolation():
    value, locations, weights = sampling_inputs()
    out = deformable_sampling(value, SIZES, locations, weights)
    B, Q, M, L, P, _ = locations.shape
    D = value.shape[-1]
    per_level = value.split([h * w for h, w in SIZES], dim=1)
    expected = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for m in range(M):
            for level, (h, w) in enumerate(SIZES):
                image = per_level[level][b, :, m].T.reshape(D, h, w)
                for q in range(Q):
                    for p in range(P):
                        x, y = locations[b, q, m, level, p].tolist()
                        expected[b, q, m] += weights[b, q, m, level, p] * bilinear(image, x, y)
    torch.testing.assert_close(out, expected.reshape(B, Q, M * D), rtol=1e-12, atol=1e-12)


def test_deformable_sampling_gradients():
    inputs = tuple(t.requires_grad_() for t in sampling_inputs())
    assert torch.autograd.gradcheck(lambda v, loc, w: deformable_sampling(v, SIZES, loc, w), inputs)


def test_deformable_attention_starts_on_rays_with_uniform_weights():
    heads, levels, points = 8, 3, 4
    attn = MultiScaleDeformableAttention(32, heads, levels, points)
    offsets = attn.sampling_offsets.bias.view(heads, levels, points, 2)
    steps = torch.arange(1.0, points + 1)
    for level in range(levels):
        torch.testing.assert_close(offsets[0, level], torch.stack([steps, 0 * steps], -1))
        torch.testing.assert_close(offsets[1, level], torch.stack([steps, steps], -1))  # 45 deg
        torch.testing.assert_close(offsets[6, level], torch.stack([0 * steps, -steps], -1))
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not attn.attention_weights.bias.any()  # uniform weights after the softmax


def test_each_decoder_layer_reads_its_level():
    model = small_model("sam_detr_R50_MS.yaml", *MULTI_SCALE).eval()
    assert model.in_features == LEVELS and len(model.level_projections) == 3
    seen = []
    for layer in model.transformer.decoder:
        layer.semantics_aligner.register_forward_hook(
            lambda module, args, output: seen.append(tuple(args[1].shape[-2:]))
        )
    with torch.no_grad():
        model([{"image": torch.rand(3, 64, 96) * 255}])
    assert seen == [(2, 3), (8, 12)]  # res5 (stride 32), then res3 (stride 8)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        (K + "SEMANTIC_ALIGNED_MATCHING", False),
        (K + "SEARCH_RANGE", "image"),
        (K + "SMCA", True),
    ],
    ids=["sam", "baseline", "image_range", "smca"],
)
def test_multiscale_model_trains_and_infers(overrides):
    model = small_model("sam_detr_R50_MS.yaml", *MULTI_SCALE, *overrides)
    check_trains_and_infers(model)
    assert model.transformer.encoder.level_embed.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ((K + "DECODER_IN_FEATURES", ["res5"]), "has 1 entries for MODEL.SAM_DETR.DEC_LAYERS=2"),
        ((K + "DECODER_IN_FEATURES", ["res5", "res2"]), r"names \['res2'\], which are not in"),
        ((K + "IN_FEATURES", ["res3", "res3"]), "lists a feature twice"),
        (("MODEL.RESNETS.OUT_FEATURES", ["res4", "res5"]), r"names \['res3'\], which the backbone"),
    ],
)
def test_level_keys_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_model("sam_detr_R50_MS.yaml", *MULTI_SCALE, *overrides)


def _official(state=None, **args):
    return {"model": state or {}, "args": argparse.Namespace(**args)}


def test_official_multiscale_checkpoints_pick_their_config_or_are_refused():
    level_embed = {"transformer.level_embed": torch.zeros(3, 256)}
    assert detect_variant({"model": level_embed}).config_name == "sam_detr_R50_MS.yaml"
    long = detect_variant(_official(multiscale=True, smca=True, epochs=50))
    assert long.config_name == "sam_detr_R50_MS_SMCA_50ep.yaml"
    reduced = detect_variant(_official(multiscale=True, smca=False, epochs=12, dim_feedforward=256))
    assert reduced.overrides["MODEL.SAM_DETR.ENC_DIM_FEEDFORWARD"] == 128
    with pytest.raises(NotAnOfficialCheckpoint, match="--dilation is not supported"):
        detect_variant(_official(multiscale=True, dilation=True))
    with pytest.raises(NotAnOfficialCheckpoint, match="dec_layers=3"):
        detect_variant(_official(multiscale=True, dec_layers=3))


def test_bfloat16_inference_follows_float32():
    """With TEST.AMP (bfloat16 on a CPU) the deformable encoder keeps its reference points and
    sampling locations in float32 (cell centres like 152.5 are not bfloat16 numbers)."""
    model = small_model("sam_detr_R50_MS.yaml", *MULTI_SCALE).eval()
    amp = small_model(
        "sam_detr_R50_MS.yaml",
        *MULTI_SCALE,
        "TEST.AMP.ENABLED",
        True,
        "SOLVER.AMP.DTYPE",
        "bfloat16"
    ).eval()
    image = [{"image": torch.rand(3, 96, 160) * 255}]
    seen = []
    amp.transformer.encoder[0].self_attn.register_forward_hook(
        lambda module, args, output: seen.append((args[1].dtype, output.dtype))
    )
    with torch.no_grad():
        reference = model.inference(image, do_postprocess=False)["pred_logits"]
        logits = amp.inference(image, do_postprocess=False)["pred_logits"]
    assert seen == [(torch.float32, torch.bfloat16)]  # float32 points, bfloat16 features
    error = (logits - reference).abs().max() / reference.std()
    assert 0 < error < 0.1
