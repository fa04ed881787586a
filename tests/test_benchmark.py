"""tools/benchmark.py runs both tasks on the tiny config and reports what it promises: time per
iteration (min / median / max), images per second, peak memory and, with ``--profile``, the
top operators."""

import importlib.util
from pathlib import Path

import pytest
from train_net_helpers import TINY_CONFIG

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("benchmark", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "task, extra",
    [("train", ["SOLVER.AMP.ENABLED", "True"]), ("inference", ["--profile"])],
)
def test_benchmark_reports_times_speed_and_memory(task, extra, capsys):
    tool = load_tool()
    options = [o for o in extra if o.startswith("--")]
    overrides = [o for o in extra if not o.startswith("--")]
    result = tool.main(
        ["--config-file", TINY_CONFIG, "--task", task, "--batch-size", "2"]
        + ["--image-size", "64x96", "--iters", "2", "--warmup", "1", *options, *overrides]
    )
    out = capsys.readouterr().out
    assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"]
    assert result["images_per_s"] == pytest.approx(2 / result["median_s"])
    assert result["peak_memory_mib"] > 0
    assert f"{task}, batch 2 x 64x96" in out
    assert "per iteration: min" in out and "images/s, peak memory" in out
    if task == "train":
        assert "mixed bfloat16 on cpu" in out
    else:
        assert "float32" in out and "Self CPU time total" in out
