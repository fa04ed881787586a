"""The separable RoIAlign against torchvision's kernel: same outputs and feature gradients for
boxes inside, across and outside the map, degenerate boxes and several sampling ratios; and
the switch to torchvision's kernel for maps too large for the separable path."""

import importlib.util
from pathlib import Path

import pytest
import torch
from sam_detr import roi_align as roi_align_module
from sam_detr.roi_align import roi_align
from torchvision.ops import roi_align as torchvision_roi_align

OUTPUT_SIZE = 7


def random_boxes(generator: torch.Generator, batch: int, num: int, height: int, width: int):
    """``(B, N, 4)`` xyxy boxes in map pixels: centres up to 10% outside the map, sides up to
    110% of it, plus a zero-width, a zero-area and a fully outside box in image 0."""
    centres = torch.rand(batch, num, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    sides = torch.rand(batch, num, 2, generator=generator, dtype=torch.float64) * 1.1
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


@pytest.mark.parametrize("height,width", [(20, 24), (5, 3), (13, 40)])
def test_separable_roi_align_equals_torchvision(height, width):
    generator = torch.Generator().manual_seed(height * 100 + width)
    features = torch.randn(3, 6, height, width, generator=generator, dtype=torch.float64)
    features.requires_grad_(True)
    boxes = random_boxes(generator, 3, 40, height, width)
    ours, theirs = roi_align(features, boxes, OUTPUT_SIZE), reference(features, boxes)
    assert ours.shape == theirs.shape == (3 * 40, 6, OUTPUT_SIZE, OUTPUT_SIZE)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    # The boxes span one to several samples per bin: the adaptive ratio is exercised.
    assert (boxes[..., 2] - boxes[..., 0]).max() > 2 * OUTPUT_SIZE or width < OUTPUT_SIZE
    weights = torch.randn(theirs.shape, generator=generator, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-12)


def test_float32_matches_and_boxes_get_no_gradient():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 20, 20, generator=generator)
    boxes = random_boxes(generator, 2, 30, 20, 20).float().requires_grad_(True)
    ours = roi_align(features, boxes, OUTPUT_SIZE)
    torch.testing.assert_close(ours, reference(features, boxes.detach()), rtol=1e-5, atol=1e-5)
    assert not ours.requires_grad  # like torchvision's op: no gradient to the boxes


def test_large_problems_use_torchvision(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 9, 11, generator=generator)
    boxes = random_boxes(generator, 1, 10, 9, 11).float()
    calls = []

    def counting_reference(*args, **kwargs):
        calls.append(args)
        return torchvision_roi_align(*args, **kwargs)

    monkeypatch.setattr(roi_align_module, "torchvision_roi_align", counting_reference)
    roi_align(features, boxes, OUTPUT_SIZE)
    assert not calls
    monkeypatch.setattr(roi_align_module, "SEPARABLE_MAX_ELEMENTS", 10)
    out = roi_align(features, boxes, OUTPUT_SIZE)
    assert len(calls) == 1
    torch.testing.assert_close(out, reference(features, boxes))


@pytest.mark.parametrize("max_elements", [roi_align_module.SEPARABLE_MAX_ELEMENTS, 0])
def test_non_finite_boxes_sample_nothing(monkeypatch, max_elements):
    monkeypatch.setattr(roi_align_module, "SEPARABLE_MAX_ELEMENTS", max_elements)
    features = torch.randn(1, 2, 6, 6)
    boxes = torch.tensor([[[1.0, 1.0, float("nan"), 4.0], [0.0, float("inf"), 2.0, 3.0]]])
    out = roi_align(features, boxes, OUTPUT_SIZE)
    assert out.shape == (2, 2, OUTPUT_SIZE, OUTPUT_SIZE) and not out.any()


def test_benchmark_tool_times_both_paths(capsys):
    path = Path(__file__).resolve().parents[1] / "tools" / "benchmark_roi_align.py"
    spec = importlib.util.spec_from_file_location("benchmark_roi_align", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--batch", "1", "--boxes", "3", "--channels", "2", "--height", "5", "--width", "6"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("RoIAlign 1x3 boxes on a 2x5x6 map")
    assert [line.split()[0] for line in lines[1:]] == ["torchvision", "separable"]
    assert all("forward + backward" in line and line.endswith("ms") for line in lines[1:])
