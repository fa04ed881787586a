"""``tools/convert_official_checkpoint.py`` as a user runs it: converts the official
fixture checkpoints into files Detectron2's checkpointer loads, names the matching config,
and refuses anything else with a message naming the keys, writing nothing. The first
conversion runs the command in a subprocess; the others call its ``main(argv)`` in this
process (the same arguments, exit code and output, without a Python start-up each)."""

import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from official_fixtures import FIXTURES, REPO_ROOT, requires_fixtures
from sam_detr.config import get_sam_detr_cfg
from train_net_helpers import load_tool

TOOL = REPO_ROOT / "tools" / "convert_official_checkpoint.py"
tool = load_tool("convert_official_checkpoint")


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_process(*args) -> Result:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "projects" / "SAMDETR"), env.get("PYTHONPATH", "")]
    )
    r = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300,
    )  # fmt: skip
    return Result(r.returncode, r.stdout, r.stderr)


@pytest.fixture
def run_tool(capsys, monkeypatch):
    """``run_tool(*args)``: the tool's ``main`` in this process, from the repository root."""
    monkeypatch.chdir(REPO_ROOT)

    def run(*args) -> Result:
        capsys.readouterr()
        code = tool.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@requires_fixtures
@pytest.mark.parametrize(
    "stem, config",
    [
        ("r50_smca_e12", "sam_detr_R50_SMCA.yaml"),
        ("r50_dc5_e50", "sam_detr_R50_DC5_50ep.yaml"),
        ("r50_ms_smca_e12", "sam_detr_R50_MS_SMCA.yaml"),
    ],
)
def test_converts_and_loads_through_model_weights(tmp_path, stem, config, run_tool):
    out = tmp_path / "converted.pth"
    run = run_process if stem == "r50_smca_e12" else run_tool
    result = run("--input", FIXTURES / f"{stem}.pth", "--output", out)
    assert result.returncode == 0, result.stderr
    assert f"Matching config: configs/{config}" in result.stdout
    overrides = result.stdout.split(f"MODEL.WEIGHTS {out} ")[1].split()
    cfg = get_sam_detr_cfg(str(REPO_ROOT / "configs" / config), overrides)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    loaded = DetectionCheckpointer(model).load(str(out))  # what MODEL.WEIGHTS does
    assert loaded.get("__author__", "").startswith("converted")
    official = torch.load(FIXTURES / f"{stem}.pth", weights_only=False)["model"]
    ref = official["transformer.decoder.layers.0.attn1.weight"].float()
    ours = model.transformer.decoder[0].semantics_aligner.content_reweight.weight
    assert torch.equal(ours, ref)
    # Detectron2 class 0 is COCO id 1 ("person"), class 79 is COCO id 90.
    assert torch.equal(
        model.class_embed[1].bias[[0, 79]], official["class_embed.1.bias"][[1, 90]].float()
    )


def _assert_refused(result, out, sentinel, *phrases):
    assert result.returncode == 1
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert out.read_bytes() == sentinel  # an existing output is left untouched
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left


@pytest.fixture
def existing_output(tmp_path):
    out = tmp_path / "out" / "model.pth"
    out.parent.mkdir()
    out.write_bytes(b"previous result")
    return out, b"previous result"


def test_refuses_a_checkpoint_without_model(tmp_path, existing_output, run_tool):
    out, sentinel = existing_output
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, bad)
    _assert_refused(
        run_tool("--input", bad, "--output", out), out, sentinel, "'model'", "state_dict"
    )


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path, existing_output, run_tool):
    out, sentinel = existing_output
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    _assert_refused(run_tool("--input", bad, "--output", out), out, sentinel, "cannot be loaded")


@requires_fixtures
def test_refuses_missing_and_unexpected_keys(tmp_path, existing_output, run_tool):
    out, sentinel = existing_output
    ckpt = torch.load(FIXTURES / "r50_dc5_e50.pth", weights_only=False)
    del ckpt["model"]["transformer.decoder.layers.1.attn2.weight"]
    bad = tmp_path / "missing.pth"
    torch.save(ckpt, bad)
    _assert_refused(
        run_tool("--input", bad, "--output", out), out, sentinel,
        "missing keys: transformer.decoder.1.semantics_aligner.position_reweight.weight",
    )  # fmt: skip
    ckpt["model"]["transformer.decoder.layers.1.attn2.weight"] = torch.zeros(1)
    ckpt["model"]["transformer.decoder.layers.0.extra_proj.weight"] = torch.zeros(1)
    torch.save(ckpt, bad)
    _assert_refused(
        run_tool("--input", bad, "--output", out), out, sentinel,
        "unexpected keys", "transformer.decoder.layers.0.extra_proj.weight",
    )  # fmt: skip


def test_missing_input_file(tmp_path, run_tool):
    result = run_tool("--input", tmp_path / "nope.pth", "--output", tmp_path / "o.pth")
    assert result.returncode == 1 and "nope.pth" in result.stderr
    assert not (tmp_path / "o.pth").exists()
