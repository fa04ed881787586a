"""Subnormal float32 numbers flushed to zero on every thread (``sam_detr.utils.denormals``), each
scenario in a fresh two-thread subprocess (the mode is per thread and per process): the
entry points (``train_net.py``'s setup, ``SAMDETRPredictor``) set it before any intra-op
thread starts, so a product spread over both threads has no subnormal left;
``FLUSH_DENORMALS False`` keeps them all; and a call made after the threads started is
reported, truthfully, as not reaching them."""

import os
import subprocess
import sys
import textwrap

import pytest
from train_net_helpers import env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "sam_detr_R18_synthetic.yaml")
THREADS = 2
# Elements of the product checked by the test: many times PyTorch's grain size, so that both
# intra-op threads compute part of it.
ELEMENTS = 1 << 20

# Counts the subnormal results of a product of two normal numbers (1e-30 * 1e-10 = 1e-40).
COUNT_SUBNORMALS = f"""
import torch
product = torch.full(({ELEMENTS},), 1e-30) * 1e-10
tiny = torch.finfo(torch.float32).tiny
print("SUBNORMALS", int(((product != 0) & (product.abs() < tiny)).sum()))
"""

ENTRY_POINTS = {
    "train_net": """
        import train_net
        args = train_net.argument_parser().parse_args(
            ["--config-file", CONFIG, "OUTPUT_DIR", OUTPUT, "FLUSH_DENORMALS", FLUSH])
        train_net.setup(args)
    """,
    "predictor": """
        from sam_detr import SAMDETRPredictor
        from sam_detr.config import get_sam_detr_cfg
        cfg = get_sam_detr_cfg(CONFIG, ["MODEL.SAM_DETR.STRICT_WEIGHTS", "False",
                                        "MODEL.DEVICE", "cpu", "FLUSH_DENORMALS", FLUSH])
        SAMDETRPredictor(cfg)
    """,
}


def _run(script: str, tmp_path) -> str:
    e = env()
    e["OMP_NUM_THREADS"] = str(THREADS)
    r = subprocess.run(
        [sys.executable, "-c", script],
        env=e,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    return r.stdout


def _subnormals(output: str) -> int:
    return int(output.split("SUBNORMALS")[-1].split()[0])


def _entry_point_script(entry_point: str, flush: bool, tmp_path) -> str:
    constants = (
        f"CONFIG, OUTPUT, FLUSH = {DEMO_CONFIG!r}, {str(tmp_path / 'out')!r}, {str(flush)!r}"
    )
    return constants + "\n" + textwrap.dedent(ENTRY_POINTS[entry_point])


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_points_flush_on_every_thread(entry_point, tmp_path):
    script = _entry_point_script(entry_point, True, tmp_path) + COUNT_SUBNORMALS
    output = _run(script, tmp_path)
    assert _subnormals(output) == 0
    assert "not on all of PyTorch's" not in output


def test_key_off_keeps_subnormals_and_a_late_call_is_reported(tmp_path):
    """``FLUSH_DENORMALS False`` flushes nothing; the product then starts the second thread
    without the mode, so a later call flushes on the main thread only, returns False and
    says so."""
    late_call = textwrap.dedent("""
        import logging
        from sam_detr.utils.denormals import flush_denormals
        logging.basicConfig()
        print("ALL THREADS", flush_denormals())
        """)
    script = _entry_point_script("train_net", False, tmp_path)
    output = _run(script + COUNT_SUBNORMALS + late_call + COUNT_SUBNORMALS, tmp_path)
    before, after = output.split("ALL THREADS")
    assert _subnormals(before) == ELEMENTS
    assert after.split()[0] == "False"
    assert "not on all of PyTorch's 2 intra-op threads" in output
    assert 0 < _subnormals(after) < ELEMENTS
