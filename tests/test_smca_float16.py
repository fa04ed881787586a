"""SMCA's spatial prior under float16: the squared scales and distances of
``smca_log_weights`` overflow float16's range (65504) for scales of 256 and more (and for
far smaller ones on large maps), which made whole attention rows NaN. The log-weights are
computed in float32 (float64 stays float64), so float16 inputs give the float32 values."""

import torch
from sam_detr.modeling.smca import smca_log_weights

DIVISOR = 8.0
# Feature-map size of R50 at 800x1216 (stride 32).
HEIGHT, WIDTH = 25, 38


def _inputs(scale: float):
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 5, 8, 2, generator=generator)  # (B, N, M, 2)
    scales = torch.full((2, 5, 8, 2), scale)
    scales[:, :, ::2] *= -1  # raw predicted scales: either sign
    valid_ratio = torch.tensor([[1.0, 1.0], [0.75, 0.5]])
    return points, scales, valid_ratio


def test_float16_inputs_give_the_float32_log_weights_where_float16_overflows():
    for scale in (300.0, 2.0):
        points, scales, valid_ratio = (x.half() for x in _inputs(scale))
        half = smca_log_weights(points, scales, valid_ratio, HEIGHT, WIDTH, DIVISOR)
        assert half.dtype == torch.float32
        assert torch.isfinite(half).all(), scale
        # The same float16 values, given as float32.
        points, scales, valid_ratio = (x.float() for x in (points, scales, valid_ratio))
        expected = smca_log_weights(points, scales, valid_ratio, HEIGHT, WIDTH, DIVISOR)
        torch.testing.assert_close(half, expected, rtol=0, atol=0)
        attention = (half - half.amax(-1, keepdim=True)).softmax(-1)
        assert torch.isfinite(attention).all()


def test_float16_autocast_attention_rows_stay_finite():
    points, scales, valid_ratio = _inputs(300.0)
    with torch.autocast("cpu", dtype=torch.float16):
        log_weights = smca_log_weights(
            points.half(), scales.half(), valid_ratio.half(), HEIGHT, WIDTH, DIVISOR
        )
        logits = torch.zeros(log_weights.shape, dtype=torch.float16)
        attention = (logits + log_weights).softmax(-1)
    assert torch.isfinite(attention).all()


def test_float64_stays_float64():
    points, scales, valid_ratio = (x.double() for x in _inputs(2.0))
    assert smca_log_weights(points, scales, valid_ratio, 4, 6, DIVISOR).dtype == torch.float64
