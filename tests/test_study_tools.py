"""The study tools on the tiny config, as real processes and files: ``convergence_study.py``
trains two variants with train_net.py, writes curves.csv / curves.png / table.md, skips
finished variants and continues an interrupted one with ``--resume``; ``visualize_attention.py``
draws SAM's and the baseline's attention; ``plot_losses.py`` plots metrics.json;
``run_tools.py`` chains tools in one process (as ``make demo`` does)."""

import csv
import os
import subprocess
import sys

import cv2
import pytest
from train_net_helpers import REPO, TINY_CONFIG, env, load_tool

study = load_tool("convergence_study")
VARIANTS = ["detr_baseline", "sp8_rw"]
ITERS, EVAL_PERIOD = 2, 1
TINY_DATA = [
    "DATASETS.TRAIN", "('sam_detr_synthetic_tiny_train',)",
    "DATASETS.TEST", "('sam_detr_synthetic_tiny_val',)",
    "MODEL.SAM_DETR.NUM_CLASSES", "3", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def run_study(output_dir, cache):
    cmd = [sys.executable, os.path.join(REPO, "tools", "convergence_study.py")]
    cmd += ["--config-file", TINY_CONFIG, "--output-dir", str(output_dir)]
    cmd += ["--variants", ",".join(VARIANTS), "--iters", str(ITERS)]
    cmd += ["--eval-period", str(EVAL_PERIOD), *TINY_DATA]
    e = env()
    e["SAM_DETR_DATASETS"] = str(cache)
    done = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def study_dir(module_tmp_dir):
    root = module_tmp_dir("study")
    out = root / "study"
    first = run_study(out, root / "data")
    return out, root / "data", first


def test_study_writes_curves_table_and_plot(study_dir):
    out, _, stdout = study_dir
    for name in VARIANTS:
        assert f"[study] {name} (started)" in stdout
        command = (out / name / study.COMMAND_FILE).read_text()
        assert "train_net.py" in command and f"OUTPUT_DIR {out / name}" in command
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], int(r["iteration"])) for r in rows] == [
        (name, i) for name in VARIANTS for i in (1, 2)
    ]
    assert all(0 <= float(r["AP50"]) <= 100 for r in rows)
    table = (out / "table.md").read_text()
    assert (
        "| DETR baseline (no SAM) (`detr_baseline`) | 2 |" in table
        and "| 33.1 | 54.2 | 33.7 |" in table
    )
    image = cv2.imread(str(out / "curves.png"))
    assert image is not None and image.shape[0] > 100


def test_study_skips_finished_and_resumes_interrupted_variants(study_dir):
    out, cache, _ = study_dir
    before = (out / "curves.csv").read_text()
    # sp8_rw "interrupted" after its last checkpoint: no finished marker.
    os.remove(out / "sp8_rw" / study.FINISHED)
    again = run_study(out, cache)
    assert "[study] detr_baseline: finished earlier, kept" in again
    assert "[study] sp8_rw (resumed)" in again and "--resume" in again
    assert (out / "sp8_rw" / study.FINISHED).is_file()
    assert (out / "curves.csv").read_text() == before  # resumed at the end: same results
    # A finished variant is not mixed with results of other settings.
    cmd = [sys.executable, os.path.join(REPO, "tools", "convergence_study.py")]
    cmd += ["--config-file", TINY_CONFIG, "--output-dir", str(out), "--variants", "sp8_rw"]
    cmd += ["--iters", str(ITERS), "--eval-period", str(EVAL_PERIOD), "--seed", "1", *TINY_DATA]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "was trained with other settings" in done.stderr


@pytest.mark.parametrize("name", VARIANTS)
def test_visualize_attention_draws_each_detection(study_dir, name, tmp_path, monkeypatch):
    out, cache, _ = study_dir
    monkeypatch.setenv("SAM_DETR_DATASETS", str(cache))
    tool = load_tool("visualize_attention")
    args = tool.parse_args(
        ["--config-file", str(out / name / "config.yaml"), "--output", str(tmp_path)]
        + ["--num-images", "2", "--detections", "2", "--layer", "0"]
        + ["MODEL.WEIGHTS", str(out / name / "model_final.pth")]
    )
    written = tool.main(args)
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(tmp_path))
    assert len(written) == 4
    for path in written:
        image = cv2.imread(path)
        assert image is not None and min(image.shape[:2]) > 200


def test_plot_losses_reads_metrics_json(study_dir, tmp_path):
    out, _, _ = study_dir
    tool = load_tool("plot_losses")
    series = tool.read_series(str(out / "sp8_rw" / "metrics.json"), tool.LOSSES + tool.EVALUATION)
    assert set(series) >= {"total_loss", "loss_ce", "bbox/AP"}
    png = tool.main(
        tool.parse_args([str(out / "sp8_rw" / "metrics.json"), "--output", str(tmp_path / "l.png")])
    )
    assert cv2.imread(png) is not None
    broken = tmp_path / "metrics.json"
    broken.write_text('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1, "tot')
    with pytest.raises(SystemExit, match="line 2: not a JSON record"):
        tool.read_series(str(broken), tool.LOSSES)


def run_tools(*argv, datasets=None):
    """``tools/run_tools.py ARGV`` as a process (``datasets``: its SAM_DETR_DATASETS)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "run_tools.py"), *map(str, argv)]
    e = env() if datasets is None else {**env(), "SAM_DETR_DATASETS": str(datasets)}
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)


def test_run_tools_chains_steps_and_stops_at_the_first_failure(study_dir, tmp_path):
    out, cache, _ = study_dir
    run = out / "sp8_rw"
    metrics, weights = run / "metrics.json", ["MODEL.WEIGHTS", run / "model_final.pth"]
    attention = tmp_path / "attention"
    done = run_tools(
        "plot_losses.py", metrics, "--output", tmp_path / "a.png", "::", "visualize_attention.py",
        "--config-file", run / "config.yaml", "--output", attention,
        "--num-images", "1", "--detections", "1", "--layer", "0", *weights, datasets=cache,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert cv2.imread(str(tmp_path / "a.png")) is not None
    assert len(os.listdir(attention)) == 1

    broken = tmp_path / "broken.json"
    broken.write_text('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1, "tot')
    after = tmp_path / "after.png"
    failed = run_tools("plot_losses.py", broken, "--output", tmp_path / "b.png", "::",
                       "plot_losses.py", metrics, "--output", after)  # fmt: skip
    assert failed.returncode != 0 and "line 2: not a JSON record" in failed.stderr
    assert not after.exists()  # the step after the failing one did not run

    unknown = run_tools("plot_losses.py", metrics, "--output", after, "::", "no_such_tool.py")
    assert unknown.returncode != 0 and "no script 'no_such_tool.py'" in unknown.stderr
    assert not after.exists()  # every script is checked before the first step runs
    empty = run_tools("plot_losses.py", metrics, "--output", after, "::")
    assert empty.returncode != 0 and "empty step" in empty.stderr


@pytest.mark.parametrize("name", list(study.VARIANTS))
def test_every_variant_is_valid_on_the_demo_config(name):
    """Each variant's command, read on the demo's config (SMCA on), gives a valid config with
    SMCA only where the variant asks for it (the paper's Tables 2-3 are without SMCA)."""
    from sam_detr.config import get_sam_detr_cfg, validate_sam_detr_config

    args = study.parse_args(["--variants", name])
    cmd = study.train_command(args, name, resume=False)
    overrides = cmd[cmd.index(study.DEMO_CONFIG) + 1 :]
    overrides = overrides[overrides.index("OUTPUT_DIR") :]
    cfg = get_sam_detr_cfg(study.DEMO_CONFIG, overrides)
    validate_sam_detr_config(cfg)
    assert cfg.MODEL.SAM_DETR.SMCA == (name == "smca")
