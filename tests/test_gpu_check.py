"""``tools/gpu_check.sh`` refuses clearly where no CUDA GPU is (exit 2, a message naming
why, nothing run), and its Python parts that need no GPU work: the benchmark runs it times
parse as ``tools/benchmark.py`` arguments, and the attention kernels are read from the
profiler on the tiny model on the CPU."""

import os
import subprocess

from train_net_helpers import REPO, TINY_CONFIG, env, load_tool

GPU_CHECK = os.path.join(REPO, "tools", "gpu_check.sh")


def test_refuses_without_a_cuda_gpu():
    environment = dict(env(), CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine with one
    result = subprocess.run(
        ["bash", GPU_CHECK], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused: no CUDA GPU is available" in result.stderr
    assert "nothing was run" in result.stderr
    assert "====" not in result.stdout  # no section started


def test_benchmark_runs_are_benchmark_arguments():
    gpu_check = load_tool("gpu_check")
    benchmark = load_tool("benchmark")
    runs = gpu_check.benchmark_runs()
    assert len(runs) == 3 * 2 * 2  # configs x (train, inference) x (float32, AMP)
    seen = set()
    for argv in runs:
        args = benchmark.parse_args(argv)
        assert os.path.isfile(args.config_file) and args.image_size == "800x1216"
        seen.add((os.path.basename(args.config_file), args.task, tuple(args.opts)))
    assert len(seen) == len(runs)
    assert ("sam_detr_R50_DC5.yaml", "inference", ("TEST.AMP.ENABLED", "True")) in seen


def test_attention_kernels_are_read_from_the_profiler():
    gpu_check = load_tool("gpu_check")
    assert gpu_check.sdpa_backends(
        [
            "aten::_scaled_dot_product_flash_attention",
            "aten::_scaled_dot_product_efficient_attention",
            "aten::_scaled_dot_product_attention_math",
            "aten::linear",
        ]
    ) == {"flash": 1, "memory-efficient": 1, "math (unfused)": 1}
    for padded in (False, True):
        found = gpu_check.attention_kernels(TINY_CONFIG, "64x96", "cpu", padded, amp=False)
        # 1 encoder layer, 2 decoder layers' query self-attention (tiny config).
        assert sum(found.values()) == 3, found
