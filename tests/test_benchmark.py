"""tools/benchmark.py runs both tasks on the tiny config and reports what it promises: time per
iteration (min / median / max), images per second, peak memory and, with ``--profile``, the
top operators."""

import pytest
from train_net_helpers import TINY_CONFIG, load_tool


@pytest.mark.parametrize(
    "task, extra",
    [
        ("train", ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"]),
        ("inference", ["--profile"]),
    ],
)
def test_benchmark_reports_times_speed_and_memory(task, extra, capsys):
    tool = load_tool("benchmark")
    options = [o for o in extra if o.startswith("--")]
    overrides = [o for o in extra if not o.startswith("--")]
    result = tool.main(
        ["--config-file", TINY_CONFIG, "--task", task, "--batch-size", "2", "--device", "cpu"]
        + ["--image-size", "64x96", "--iters", "2", "--warmup", "1", *options, *overrides]
    )
    out = capsys.readouterr().out
    assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"]
    assert f"{task}, batch 2 x 64x96" in out
    assert f"min {result['min_s']:.3f} s, median {result['median_s']:.3f} s" in out
    assert f"{result['images_per_s']:.2f} images/s" in out
    assert f"peak memory {result['peak_memory_mib']:.0f} MiB" in out
    if task == "train":
        assert "mixed bfloat16 on cpu" in out
    else:
        assert "float32" in out and "Self CPU time total" in out
