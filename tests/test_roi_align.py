"""The separable RoIAlign against torchvision's kernel: same outputs and feature gradients for
boxes inside, across and outside the map, degenerate boxes and several sampling ratios, at
small and COCO sizes (R50, R50-DC5, stride 8; 300 boxes; batch 1-4), whether the boxes are
computed in one chunk or many; bfloat16 close to float32; non-finite boxes sample nothing.
The salient points' bilinear sampling of the RoI grid against ``F.grid_sample``."""

import pytest
import torch
from sam_detr.modeling import roi_align as roi_align_module
from sam_detr.modeling.roi_align import roi_align
from sam_detr.modeling.salient_points import sample_region
from torch.nn import functional as F
from torchvision.ops import roi_align as torchvision_roi_align

OUTPUT_SIZE = 7


def random_boxes(
    generator: torch.Generator, batch: int, num: int, height: int, width: int, max_side=1.1
):
    """``(B, N, 4)`` xyxy boxes in map pixels: centres up to 10% outside the map, sides up to
    ``max_side`` of it, plus a zero-width, a zero-area and a fully outside box in image 0."""
    centres = torch.rand(batch, num, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    sides = torch.rand(batch, num, 2, generator=generator, dtype=torch.float64) * max_side
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=-1) * scale
    boxes[0, 0] = torch.tensor([3.0, 4.0, 3.0, 9.0])
    boxes[0, 1] = torch.tensor([2.5, 2.5, 2.5, 2.5])
    boxes[0, 2] = torch.tensor([-9.0, -9.0, -4.0, -3.0])
    return boxes


def reference(features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return torchvision_roi_align(
        features, list(boxes.unbind(0)), output_size=OUTPUT_SIZE, spatial_scale=1.0, aligned=True
    )


def _check_against_torchvision(batch, num, channels, height, width, max_side, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    features.requires_grad_(True)
    boxes = random_boxes(generator, batch, num, height, width, max_side)
    ours, theirs = roi_align(features, boxes, OUTPUT_SIZE), reference(features, boxes)
    assert ours.shape == theirs.shape == (batch * num, channels, OUTPUT_SIZE, OUTPUT_SIZE)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    # The boxes span one to several samples per bin: the adaptive ratio is exercised.
    longest = (boxes[..., 2:] - boxes[..., :2]).max()
    assert longest > 2 * OUTPUT_SIZE or min(height, width) < 2 * OUTPUT_SIZE
    weights = torch.randn(theirs.shape, generator=generator, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("height,width", [(20, 24), (5, 3), (13, 40), (40, 13)])
def test_separable_roi_align_equals_torchvision(height, width):
    _check_against_torchvision(3, 40, 6, height, width, max_side=1.1, seed=height * 100 + width)


# COCO sizes, 300 queries: R50 and R50-DC5 at 800x1216 (and portrait), a stride-8 map.
COCO_MAPS = [(1, 25, 38), (2, 38, 25), (4, 25, 38), (2, 50, 76), (1, 100, 152)]


@pytest.mark.parametrize("batch,height,width", COCO_MAPS)
def test_coco_sized_maps_equal_torchvision(batch, height, width):
    _check_against_torchvision(batch, 300, 2, height, width, max_side=0.4, seed=height + batch)


def test_chunks_bound_the_intermediate_and_change_nothing(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 16, 25, 38, generator=generator, dtype=torch.float64)
    features.requires_grad_(True)
    boxes = random_boxes(generator, 2, 300, 25, 38, 0.5)
    weights = torch.randn(
        600, 16, OUTPUT_SIZE, OUTPUT_SIZE, generator=generator, dtype=torch.float64
    )

    def outputs_and_gradient():
        out = roi_align(features, boxes, OUTPUT_SIZE)
        return out, torch.autograd.grad((out * weights).sum(), features)[0]

    per_box = OUTPUT_SIZE * 16 * 25  # the intermediate keeps the map's shorter axis
    assert roi_align_module._chunks(2, 300, per_box) == [(0, 2, 0, 300)]  # both images at once
    whole = outputs_and_gradient()
    for budget, expected in [(300 * per_box, 2), (7 * per_box, 86)]:
        monkeypatch.setattr(roi_align_module, "CHUNK_ELEMENTS", budget)
        chunks = roi_align_module._chunks(2, 300, per_box)
        assert len(chunks) == expected and chunks[1][:2] == ((1, 2) if expected == 2 else (0, 1))
        for ours, reference_value in zip(outputs_and_gradient(), whole):
            torch.testing.assert_close(ours, reference_value, rtol=0, atol=1e-12)


def test_bfloat16_follows_float32():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 32, 25, 38, generator=generator)
    boxes = random_boxes(generator, 2, 300, 25, 38, 0.6).float()
    expected = reference(features, boxes)
    low = features.bfloat16().requires_grad_(True)
    ours = roi_align(low, boxes, OUTPUT_SIZE)
    assert ours.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: errors of a few parts in a thousand of the range.
    assert (ours.float() - expected).abs().max() < 0.05
    ours.float().sum().backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()


def test_float32_matches_and_boxes_get_no_gradient():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 20, 20, generator=generator)
    boxes = random_boxes(generator, 2, 30, 20, 20).float().requires_grad_(True)
    ours = roi_align(features, boxes, OUTPUT_SIZE)
    torch.testing.assert_close(ours, reference(features, boxes.detach()), rtol=1e-5, atol=1e-5)
    assert not ours.requires_grad  # like torchvision's op: no gradient to the boxes


def test_non_finite_boxes_sample_nothing():
    features = torch.randn(1, 2, 6, 6)
    boxes = torch.tensor([[[1.0, 1.0, float("nan"), 4.0], [0.0, float("inf"), 2.0, 3.0]]])
    out = roi_align(features, boxes, OUTPUT_SIZE)
    assert out.shape == (2, 2, OUTPUT_SIZE, OUTPUT_SIZE) and not out.any()


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
def test_salient_point_sampling_equals_grid_sample(channels_last):
    """Values and gradients (features and points) of ``grid_sample``'s bilinear sampling with
    zero padding, for points inside the grid, on cell centres and cell edges, on the grid's
    outer edges and outside it."""
    generator = torch.Generator().manual_seed(0)
    boxes, points, channels = 6, 8, 5
    region = torch.randn(boxes, channels, OUTPUT_SIZE, OUTPUT_SIZE, generator=generator)
    region = region.double()
    if channels_last:
        region = region.contiguous(memory_format=torch.channels_last)
    offsets = torch.rand(boxes, points, 2, generator=generator, dtype=torch.float64) * 2.6 - 1.3
    # In grid units (u + 1) R / 2 - 1/2: u = -1 and 1 are the grid's outer edges, 0 and 2 / R
    # the centres of cells 3 and 4, 1 / R and -3 / R edges between cells.
    cell = 1.0 / OUTPUT_SIZE
    offsets[0, :4] = torch.tensor([[-1.0, 1.0], [cell, -3 * cell], [0.0, 2 * cell], [1.0, 0.0]])
    region.requires_grad_(True)
    offsets.requires_grad_(True)
    ours = sample_region(region, offsets)
    theirs = F.grid_sample(region, offsets[:, None], padding_mode="zeros", align_corners=False)
    theirs = theirs[:, :, 0].transpose(1, 2)  # (K, d, 1, P) -> (K, P, d)
    assert ours.shape == (boxes, points, channels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert (offsets.abs() > 1 + 1 / OUTPUT_SIZE).any()  # some points sample only padding
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    grads_ours = torch.autograd.grad((ours * weights).sum(), (region, offsets))
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), (region, offsets))
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
