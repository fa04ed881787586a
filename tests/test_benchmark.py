"""tools/benchmark.py runs both tasks on the tiny config and reports what it promises: time per
iteration (min / median / max), images per second, peak memory and, with ``--profile``, the
top operators; ``--module`` times one submodule alone."""

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


def test_benchmark_times_one_module_alone(capsys):
    """``--module`` times a decoder layer's cross-attention alone (forward and backward), and
    refuses a name the model does not have, a module the task does not call, and a training
    iteration of a module with nothing to backpropagate."""
    tool = load_tool("benchmark")
    common = ["--config-file", TINY_CONFIG, "--batch-size", "2", "--device", "cpu"]
    common += ["--image-size", "64x96", "--iters", "2", "--warmup", "1"]
    result = tool.main(common + ["--task", "train", "--module", "transformer.decoder.1.cross_attn"])
    out = capsys.readouterr().out
    assert "train of transformer.decoder.1.cross_attn alone, batch 2 x 64x96" in out
    assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"]
    with pytest.raises(SystemExit, match="--module transformer.decoder.7: .*named_modules"):
        tool.main(common + ["--module", "transformer.decoder.7"])
    with pytest.raises(SystemExit, match="--module criterion: the module is not called"):
        tool.main(common + ["--task", "inference", "--module", "criterion"])
    # The map's sine embedding has neither parameters nor inputs that need gradients.
    with pytest.raises(SystemExit, match="--module position_embedding: no output requires"):
        tool.main(common + ["--task", "train", "--module", "position_embedding"])
