"""The paper's ablation switches (Tables 1-3) do what they say: pooled re-sampling is the
mean / maximum of the RoIAlign region at the box centre, SP x1 shares one point, RW off has
no reweighting layers, the image search range leaves the box and samples the map itself,
the baseline DETR has no Semantics Aligner; every variant trains and infers; the attention
weights drawn by the visualisation are the ones the fast path applies."""

import math

import pytest
import torch
from detectron2.utils.events import EventStorage
from sam_detr.modeling.attention import _merge_heads, _split_heads
from sam_detr.modeling.baseline import BaselineDETRTransformer
from sam_detr.modeling.decoder import build_semantics_aligner
from sam_detr.modeling.layer_spec import SAMLayerSpec
from sam_detr.modeling.pooled_aligner import PooledAligner
from sam_detr.modeling.position_encoding import embed_points
from sam_detr.modeling.salient_points import ImageRangeSalientPointAligner, SalientPointAligner
from test_model import image_with_boxes, small_model
from torch.nn import functional as F
from torchvision.ops import roi_align as torchvision_roi_align
from train_net_helpers import load_tool

K = "MODEL.SAM_DETR."
DIM, HEADS, ROI = 16, 4, 3
STUDY_VARIANTS = load_tool("convergence_study").VARIANTS


def aligner(**switches):
    torch.manual_seed(0)
    kwargs = dict(
        query_resampling="salient_points",
        num_salient_points=0,
        search_range="box",
        reweighting=False,
        point_conv_dim=4,
        point_mlp_dims=(8,),
        smca=False,
        smca_divisor=8.0,
        dim=DIM,
        num_heads=HEADS,
        dim_feedforward=2 * DIM,
        dropout=0.0,
        roi_size=ROI,
        temperature=10000.0,
        roi_align="auto",
    )
    kwargs.update(switches)
    return build_semantics_aligner(SAMLayerSpec(**kwargs))


def inputs(B=2, N=5, H=6, W=8):
    torch.manual_seed(1)
    queries = torch.randn(B, N, DIM)
    memory = torch.randn(B, DIM, H, W)
    boxes = torch.cat([torch.rand(B, N, 2) * 0.6 + 0.2, torch.rand(B, N, 2) * 0.3 + 0.05], -1)
    valid_ratio = torch.tensor([[1.0, 1.0], [0.75, 0.5]])[:B]
    return queries, memory, boxes, valid_ratio


def pixel_boxes(boxes, memory, valid_ratio):
    """Reference boxes (cx, cy, w, h of the image) in map pixels, as torchvision wants them."""
    H, W = memory.shape[-2:]
    size = torch.tensor([W, H]) * valid_ratio  # (B, 2) image extent in map pixels
    centers, half = boxes[..., :2] * size[:, None], boxes[..., 2:] * size[:, None] / 2
    return [b for b in torch.cat([centers - half, centers + half], -1)]


@pytest.mark.parametrize("mode,reduce", [("avg_pool", torch.mean), ("max_pool", torch.amax)])
def test_pooled_query_is_the_pooled_roi_at_the_box_centre(mode, reduce):
    module = aligner(query_resampling=mode)
    assert isinstance(module, PooledAligner) and not hasattr(module, "point_mlp")
    queries, memory, boxes, valid_ratio = inputs()
    out = module(queries, memory, boxes, valid_ratio)
    region = torchvision_roi_align(
        memory, pixel_boxes(boxes, memory, valid_ratio), ROI, sampling_ratio=-1, aligned=True
    )
    expected = reduce(region, dim=(-2, -1)).view(2, 5, 1, DIM).expand(2, 5, HEADS, DIM)
    torch.testing.assert_close(out.content, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.points, boxes[..., None, :2].expand(2, 5, HEADS, 2))
    centre = embed_points(boxes[..., :2], DIM, 10000.0)[..., None, :].expand(2, 5, HEADS, DIM)
    torch.testing.assert_close(out.position, centre)


def test_without_reweighting_there_are_no_reweighting_layers():
    with_rw = aligner(reweighting=True)
    without = aligner(reweighting=False)
    assert {n for n, _ in with_rw.named_parameters()} - {
        n for n, _ in without.named_parameters()
    } == {
        "content_reweight.weight",
        "content_reweight.bias",
        "position_reweight.weight",
        "position_reweight.bias",
    }
    queries, memory, boxes, valid_ratio = inputs()
    a = with_rw(queries, memory, boxes, valid_ratio)
    b = without(queries, memory, boxes, valid_ratio)
    # Same points (same search weights, seeded); RW multiplies by sigmoid(W q) in (0, 1).
    torch.testing.assert_close(a.points, b.points)
    layer = with_rw.content_reweight
    coefficient = torch.sigmoid(F.linear(queries, layer.weight, layer.bias)).view(2, 5, HEADS, DIM)
    torch.testing.assert_close(a.content, b.content * coefficient)


def test_one_salient_point_is_shared_by_all_heads():
    module = aligner(num_salient_points=1, smca=True)
    assert module.point_mlp.layers[-1].out_features == 4  # (x, y) and two SMCA scales
    queries, memory, boxes, valid_ratio = inputs()
    out = module(queries, memory, boxes, valid_ratio)
    for field in (out.points, out.scales, out.content, out.position):
        torch.testing.assert_close(field, field[:, :, :1].expand_as(field), rtol=0, atol=0)
    eight = aligner(smca=True)(queries, memory, boxes, valid_ratio)
    assert not torch.equal(eight.points[:, :, 0], eight.points[:, :, 1])


def bilinear(memory, x, y):
    """The map ``(d, H, W)`` at continuous pixel coordinates (centres at i + 0.5), zero
    outside, by the four neighbours."""
    d, H, W = memory.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    value = torch.zeros(d)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < W and 0 <= yi < H:
                value += weight * memory[:, yi, xi]
    return value


def test_image_search_range_leaves_the_box_and_samples_the_map():
    module = aligner(search_range="image")
    assert isinstance(module, ImageRangeSalientPointAligner)
    with torch.no_grad():  # offsets tanh(0.5) = 0.46 of the image: far outside small boxes
        module.point_mlp.layers[-1].weight.zero_()
        module.point_mlp.layers[-1].bias.fill_(0.5)
    queries, memory, boxes, valid_ratio = inputs()
    out = module(queries, memory, boxes, valid_ratio)
    outside = (out.points - boxes[..., None, :2]).abs() > boxes[..., None, 2:] / 2
    assert outside.all()
    expected_points = boxes[..., None, :2] + torch.tanh(torch.tensor(0.5))
    torch.testing.assert_close(out.points, expected_points.expand(2, 5, HEADS, 2))
    H, W = memory.shape[-2:]
    for b in range(2):
        for n in range(5):
            x, y = (out.points[b, n, 0] * torch.tensor([W, H]) * valid_ratio[b]).tolist()
            expected = bilinear(memory[b], x, y)
            torch.testing.assert_close(out.content[b, n, 0], expected, rtol=0, atol=1e-5)
    # Inside the box (the paper's range) the same weights keep every point in its box.
    box = aligner(search_range="box")
    box.load_state_dict(module.state_dict())
    assert type(box) is SalientPointAligner
    inside = box(queries, memory, boxes, valid_ratio).points - boxes[..., None, :2]
    assert (inside.abs() <= boxes[..., None, 2:] / 2 + 1e-6).all()


def test_baseline_has_no_semantics_aligner_and_predicts_boxes_directly():
    model = small_model("sam_detr_R50.yaml", K + "SEMANTIC_ALIGNED_MATCHING", False).eval()
    assert isinstance(model.transformer, BaselineDETRTransformer)
    names = [n for n, _ in model.named_parameters()]
    assert "query_pos.weight" in names and model.query_pos.weight.shape == (10, 64)
    assert not any("semantics_aligner" in n or "reference_boxes" in n for n in names)
    hidden = []
    for layer in model.transformer.decoder:
        layer.register_forward_hook(lambda m, i, out: hidden.append(out))
    with torch.no_grad():
        out = model.inference([{"image": torch.rand(3, 64, 96) * 255}], do_postprocess=False)
        expected = model.transformer.bbox_embed[-1](hidden[-1]).sigmoid()
    torch.testing.assert_close(out["pred_boxes"], expected)


def check_trains_and_infers(model) -> None:
    """One training step of the small model gives a finite loss and a gradient to every
    trainable parameter; inference returns every (query, class) pair."""
    batch = [image_with_boxes(64, 96, [[10, 10, 50, 40]], [1]), image_with_boxes(80, 64, [], [])]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    with torch.no_grad():
        result = model.eval()([{"image": torch.rand(3, 64, 96) * 255}])
    assert len(result[0]["instances"]) == 10 * 5  # every (query, class) of the small model


@pytest.mark.parametrize("name", list(STUDY_VARIANTS))
def test_every_study_variant_trains_and_infers(name):
    check_trains_and_infers(small_model("sam_detr_R50.yaml", *STUDY_VARIANTS[name].overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ((K + "SEMANTIC_ALIGNED_MATCHING", False, K + "SMCA", True), "no Semantics Aligner"),
        ((K + "QUERY_RESAMPLING", "max_pool", K + "SMCA", True), "needs QUERY_RESAMPLING"),
        ((K + "QUERY_RESAMPLING", "mean"), "QUERY_RESAMPLING must be one of"),
        ((K + "NUM_SALIENT_POINTS", 3), "NUM_SALIENT_POINTS must be 0"),
        ((K + "SEARCH_RANGE", "map"), "SEARCH_RANGE must be one of"),
    ],
)
def test_meaningless_switches_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_model("sam_detr_R50.yaml", *overrides)


@pytest.mark.parametrize("baseline", [False, True], ids=["sam", "baseline"])
def test_visualised_attention_weights_are_those_of_the_fast_path(baseline):
    model = small_model("sam_detr_R50_SMCA.yaml", K + "SMCA", not baseline)
    if baseline:
        model = small_model("sam_detr_R50.yaml", K + "SEMANTIC_ALIGNED_MATCHING", False)
    model.eval()
    attention = model.transformer.decoder[1].cross_attn
    seen = {}

    def keep(module, args, output):
        seen["args"], seen["output"] = args, output

    attention.register_forward_hook(keep)
    with torch.no_grad():
        model.inference([{"image": torch.rand(3, 64, 96) * 255}], do_postprocess=False)
        weights = attention.attention_weights(*seen["args"])
        memory = seen["args"][2]
        values = _split_heads(attention.v_proj(memory), 4) if not baseline else None
        if baseline:
            dim = memory.shape[-1]
            w, b = attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :]
            values = _split_heads(F.linear(memory, w, b), 4)
        recomputed = attention.out_proj(_merge_heads(weights @ values))
    assert weights.shape[1:3] == (4, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    torch.testing.assert_close(recomputed, seen["output"], rtol=0, atol=1e-5)
