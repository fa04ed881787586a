"""Parity with the official SAM-DETR implementation on the shared fixtures: converted
official checkpoints, our model, and what the official model computed (raw outputs of all
decoder layers, weighted losses, gradients); single-scale and multi-scale (the multi-scale
fixture ran the official code with its pure-PyTorch deformable attention)."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from official_fixtures import (
    DECODER_LAYERS,
    MS_VARIANTS,
    VARIANTS,
    fixture_batch,
    fixture_model,
    requires_fixtures,
)
from sam_detr.checkpoint.official import coco_contiguous_ids, rename_official_key

LOGIT_ATOL = 1e-3
BOX_ATOL = 1e-4
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3
# A gradient whose float32 value moves by more than this relative amount when the same
# model runs in float64 is dominated by rounding (see test_gradients).
WELL_CONDITIONED = 1e-4
# Such a gradient must still agree with the official one within this many times its
# measured float32 rounding noise.
NOISE_FACTOR = 10.0

pytestmark = requires_fixtures


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("stem", VARIANTS + MS_VARIANTS)
def test_raw_outputs_match_official(stem):
    model, io = fixture_model(stem, coco_classes=True)
    model.eval()
    with torch.no_grad():
        out = model.inference(fixture_batch(io, with_targets=False), do_postprocess=False)
    ids = coco_contiguous_ids()
    ours = [(out["pred_logits"], out["pred_boxes"])] + [
        (a["pred_logits"], a["pred_boxes"]) for a in out["aux_outputs"]
    ]
    ref = [(io["pred_logits"], io["pred_boxes"])] + [
        (a["pred_logits"], a["pred_boxes"]) for a in io["aux_outputs"]
    ]
    assert len(ours) == len(ref) == DECODER_LAYERS[stem]
    for (logits, boxes), (ref_logits, ref_boxes) in zip(ours, ref):
        assert logits.shape[-1] == 80
        assert (logits - ref_logits[..., ids]).abs().max() <= LOGIT_ATOL
        assert (boxes - ref_boxes).abs().max() <= BOX_ATOL


def _train_step(stem, dtype):
    model, io = fixture_model(stem, coco_classes=False)  # 91 logits: the official loss
    model.to(dtype).train()
    with EventStorage():
        losses = model(fixture_batch(io, with_targets=True, dtype=dtype))
    sum(losses.values()).backward()
    return model, io, losses


@pytest.mark.parametrize("stem", VARIANTS + MS_VARIANTS)
def test_weighted_losses_and_gradients_match_official(stem):
    model, io, losses = _train_step(stem, torch.float32)
    assert set(losses) == set(io["weighted_losses"])
    for name, ref in io["weighted_losses"].items():
        assert losses[name].item() == pytest.approx(ref, rel=LOSS_RTOL), name
    assert sum(losses.values()).item() == pytest.approx(io["total_loss"], rel=LOSS_RTOL)

    # Same step in float64 measures how much float32 rounding moves each gradient.
    model64 = _train_step(stem, torch.float64)[0]
    params = dict(model.named_parameters())
    params64 = dict(model64.named_parameters())
    checked_strictly = 0
    for official_name, ref in io["grads"].items():
        name = rename_official_key(official_name, multiscale=stem in MS_VARIANTS)
        ours = params[name].grad
        noise = _rel(ours, params64[name].grad)
        error = _rel(ours, ref)
        if noise <= WELL_CONDITIONED:
            assert error <= GRAD_RTOL, (official_name, error)
            checked_strictly += 1
        else:
            # Upstream of a saturated softmax (the no-GroupNorm fixture's encoder has
            # attention logits of std ~6e4): float32 itself cannot pin these down.
            assert error <= NOISE_FACTOR * noise, (official_name, error, noise)
    assert checked_strictly >= len(io["grads"]) - 2
