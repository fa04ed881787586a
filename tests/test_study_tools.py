"""The study tools on the tiny config, as real processes and files: ``convergence_study.py``
trains two variants with two seeds with train_net.py, writes curves.csv / curves_summary.csv /
curves.png / table.md, skips finished runs and continues an interrupted one with ``--resume``;
its mean, spread, comparisons and "baseline reaches" sentence on hand-written metrics of known
AP; its ``--long-view`` preset; ``--start-from`` continuing a shorter study exactly;
``visualize_attention.py`` draws SAM's and the baseline's attention; ``plot_losses.py`` plots
metrics.json; ``run_tools.py`` chains tools in one process (as ``make demo`` does)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
import torch
from train_net_helpers import REPO, TINY_CONFIG, env, load_tool

study = load_tool("convergence_study")
VARIANTS = ["detr_baseline", "sp8_rw"]
SEEDS = [0, 1]
ITERS, EVAL_PERIOD = 2, 1
TINY_DATA = [
    "DATASETS.TRAIN", "('sam_detr_synthetic_tiny_train',)",
    "DATASETS.TEST", "('sam_detr_synthetic_tiny_val',)",
    "MODEL.SAM_DETR.NUM_CLASSES", "3", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def run_tool(args, cache, opts=()):
    """convergence_study.py on the tiny config and data; the finished process."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "convergence_study.py")]
    cmd += ["--config-file", TINY_CONFIG, *args, *TINY_DATA, *opts]
    e = env()
    e["SAM_DETR_DATASETS"] = str(cache)
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=600)


def run_study(output_dir, cache):
    args = ["--output-dir", str(output_dir), "--variants", ",".join(VARIANTS)]
    args += ["--iters", str(ITERS), "--seeds", ",".join(map(str, SEEDS))]
    done = run_tool(args + ["--eval-period", str(EVAL_PERIOD)], cache)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def study_dir(module_tmp_dir):
    root = module_tmp_dir("study")
    out = root / "study"
    first = run_study(out, root / "data")
    return out, root / "data", first


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_study_writes_curves_table_and_plot(study_dir):
    out, _, stdout = study_dir
    for name in VARIANTS:
        for seed in SEEDS:
            assert f"[study] {name}/seed{seed} (started)" in stdout
            command = (out / name / f"seed{seed}" / study.COMMAND_FILE).read_text()
            assert (
                "train_net.py" in command and f"OUTPUT_DIR {out / name / f'seed{seed}'}" in command
            )
            assert f" SEED {seed} " in command
    rows = read_rows(out / "curves.csv")
    assert [(r["variant"], int(r["seed"]), int(r["iteration"])) for r in rows] == [
        (name, seed, i) for name in VARIANTS for seed in SEEDS for i in (1, 2)
    ]
    assert all(0 <= float(r["AP50"]) <= 100 for r in rows)
    # The summary is the mean, min and max over the seeds of curves.csv's rows.
    summary = read_rows(out / study.SUMMARY_CSV)
    assert [(r["variant"], int(r["iteration"]), r["seeds"]) for r in summary] == [
        (name, i, "2") for name in VARIANTS for i in (1, 2)
    ]
    for r in summary:
        ap50 = [
            float(c["AP50"])
            for c in rows
            if (c["variant"], c["iteration"]) == (r["variant"], r["iteration"])
        ]
        assert float(r["AP50_mean"]) == pytest.approx(sum(ap50) / 2, abs=0.011)
        assert (float(r["AP50_min"]), float(r["AP50_max"])) == (min(ap50), max(ap50))
    table = (out / "table.md").read_text()
    assert "mean ± half the min-max range" in table
    assert "| DETR baseline (no SAM) (`detr_baseline`) | 2 of 2 | 2 |" in table
    assert "| 33.1 | 54.2 | 33.7 |" in table
    assert "| SAM-DETR vs DETR baseline (Table 2, Fig. 1) | `sp8_rw` | `detr_baseline` |" in table
    assert "`sp8_rw` has no evaluation at 1,200" in table  # the tiny study stops at 2
    image = cv2.imread(str(out / "curves.png"))
    assert image is not None and image.shape[0] > 100


def test_study_skips_finished_and_resumes_interrupted_runs(study_dir):
    out, cache, _ = study_dir
    before = (out / "curves.csv").read_text()
    # sp8_rw's second seed "interrupted" after its last checkpoint: no finished marker.
    os.remove(out / "sp8_rw" / "seed1" / study.FINISHED)
    again = run_study(out, cache)
    for run in ("detr_baseline/seed0", "sp8_rw/seed0", "detr_baseline/seed1"):
        assert f"[study] {run}: finished earlier, kept" in again
    assert "[study] sp8_rw/seed1 (resumed)" in again and "--resume" in again
    assert again.count("(started)") == 0 and again.count("(resumed)") == 1
    assert (out / "sp8_rw" / "seed1" / study.FINISHED).is_file()
    assert (out / "curves.csv").read_text() == before  # resumed at the end: same results
    # A finished run is not mixed with results of other settings.
    cmd = [sys.executable, os.path.join(REPO, "tools", "convergence_study.py")]
    cmd += ["--config-file", TINY_CONFIG, "--output-dir", str(out), "--variants", "sp8_rw"]
    cmd += ["--iters", str(ITERS + 1), "--eval-period", str(EVAL_PERIOD), "--seed", "1"]
    done = subprocess.run(
        cmd + TINY_DATA, cwd=REPO, env=env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "was trained with other settings" in done.stderr


def test_start_from_continues_a_shorter_study_as_a_run_from_scratch(study_dir, tmp_path):
    """``--start-from``: a study of ITERS + 2 iterations that continues the module's study of
    ITERS gives the same evaluations and bitwise the same final checkpoint as one trained
    from iteration 0 (with the tiny config's LR step at iteration 3, after the source's
    end); a source of other settings, of as many iterations or with a schedule
    that depends on MAX_ITER is refused, and nothing is copied."""
    out, cache, _ = study_dir
    longer = ["--variants", "sp8_rw", "--seeds", "0", "--eval-period", str(EVAL_PERIOD)]
    longer += ["--iters", str(ITERS + 2)]
    continued = tmp_path / "continued"
    done = run_tool(["--output-dir", str(continued), "--start-from", str(out), *longer], cache)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    source = out / "sp8_rw" / "seed0"
    assert f"[study] sp8_rw/seed0: continues {source} after its iteration {ITERS}" in done.stdout
    assert "[study] sp8_rw/seed0 (resumed)" in done.stdout
    finished = json.loads((continued / "sp8_rw" / "seed0" / study.FINISHED).read_text())
    assert finished["continued"] == str(source)
    scratch = tmp_path / "scratch"
    done = run_tool(["--output-dir", str(scratch), *longer], cache)
    assert done.returncode == 0 and "[study] sp8_rw/seed0 (started)" in done.stdout
    # The evaluations after the source's end are the scratch run's; the source's come first.
    later = [
        [r for r in read_rows(d / "curves.csv") if int(r["iteration"]) > ITERS]
        for d in (continued, scratch)
    ]
    assert later[0] == later[1] and [r["iteration"] for r in later[0]] == ["3", "4"]
    metrics = (continued / "sp8_rw" / "seed0" / "metrics.json").read_text()
    assert metrics.startswith((source / "metrics.json").read_text())
    a, b = (
        torch.load(d / "sp8_rw" / "seed0" / "model_final.pth", weights_only=True)
        for d in (continued, scratch)
    )
    assert a["iteration"] == b["iteration"] == ITERS + 1
    for part in ("model", "trainer"):  # the trainer part holds the optimiser and scheduler
        flat_a, flat_b = (torch.utils._pytree.tree_flatten(x[part])[0] for x in (a, b))
        assert len(flat_a) == len(flat_b) > 10
        for x, y in zip(flat_a, flat_b):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    cosine = tmp_path / "cosine"
    shutil.copytree(source, cosine / "sp8_rw" / "seed0")
    config = cosine / "sp8_rw" / "seed0" / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("WarmupMultiStepLR", "WarmupCosineLR"))
    refusals = {
        "was trained with other settings": (out, longer, ("SOLVER.BASE_LR", "0.001")),
        f"has {ITERS} iterations, not fewer than --iters {ITERS}": (
            out, longer[:-1] + [str(ITERS)], ()
        ),
        "WarmupCosineLR and SOLVER.WARMUP_ITERS 0: its LR depends on SOLVER.MAX_ITER": (
            cosine, longer, ()
        ),
    }  # fmt: skip
    for i, (message, (start, args, opts)) in enumerate(refusals.items()):
        target = tmp_path / f"refused{i}"
        done = run_tool(
            ["--output-dir", str(target), "--start-from", str(start)] + args, cache, opts
        )
        assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]
        assert not (target / "sp8_rw" / "seed0" / "last_checkpoint").exists()


# Hand-written evaluations (iteration: AP50 per seed 0, 1, 2; AP and AP75 derived from it).
KNOWN_AP50 = {
    "detr_baseline": {600: (0.4, 1.2, 2.0), 1200: (1.0, 2.0, 3.0)},
    "sp8_rw": {600: (4.0, 5.0, 9.0), 1200: (10.0, 14.0, 18.0)},
    "smca": {600: (8.0, 12.0, 13.0), 1200: (15.0, 30.0, 33.0)},
}


def write_known_study(root, curves=KNOWN_AP50):
    """``root/<variant>/seed<k>/metrics.json`` as Detectron2 writes them (a training record,
    then an evaluation at the index of the period's last iteration), AP = AP50 / 2 and
    AP75 = AP50 / 4."""
    for name, points in curves.items():
        for seed in range(3):
            folder = root / name / f"seed{seed}"
            folder.mkdir(parents=True)
            with open(folder / "metrics.json", "w") as f:
                for iteration, ap50 in sorted(points.items()):
                    value = ap50[seed]
                    f.write(json.dumps({"iteration": iteration - 2, "total_loss": 1.0}) + "\n")
                    record = {"bbox/AP": value / 2, "bbox/AP50": value, "bbox/AP75": value / 4}
                    f.write(json.dumps({"iteration": iteration - 1, **record}) + "\n")


def known_args(root, *extra):
    argv = ["--output-dir", str(root), "--variants", ",".join(KNOWN_AP50), "--report-only"]
    return study.parse_args(argv + ["--iters", "1200", "--eval-period", "600", *extra])


def test_table_gives_mean_and_spread_over_seeds_of_known_runs(tmp_path):
    write_known_study(tmp_path)
    table = study.main(known_args(tmp_path))
    assert "Seeds 0, 1, 2; ours: mean ± half the min-max range over the seeds." in table
    row = "| DETR baseline (no SAM) (`detr_baseline`) | 3 of 3 | 1200 | 1.0 ± 0.5 | 2.0 ± 1.0 | "
    assert row + "0.5 ± 0.2 | 22.3 | 39.5 | 22.2 |" in table  # AP75: 0.25-0.75
    assert (
        "| SAM, SP x8 + RW (SAM-DETR) (`sp8_rw`) | 3 of 3 | 1200 | 7.0 ± 2.0 | 14.0 ± 4.0 |"
        in table
    )
    assert "| SAM-DETR + SMCA (`smca`) | 3 of 3 | 1200 | 13.0 ± 4.5 | 26.0 ± 9.0 |" in table
    # SAM-DETR's range (10-18 AP50) lies above the baseline's (1-3): resolved, as in the paper
    # (33.1 - 22.3 AP); SMCA's (15-33) overlaps SAM-DETR's: not resolved.
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    pair = lines["| SAM-DETR vs DETR baseline (Table 2, Fig. 1)"]
    assert (
        "| +10.8 | +6.0 | `sp8_rw` ahead (as in the paper) | +14.7 | +12.0 | `sp8_rw` ahead" in pair
    )
    smca = lines["| + SMCA vs SAM-DETR (Table 1)"]
    assert smca.endswith("| +2.9 | +6.0 | not resolved | - | +12.0 | not resolved |")
    assert "| `sp8_rw` | `detr_baseline` | 1,200 |" in pair
    assert not any("Table 3" in line for line in lines)  # image_range is not in this study
    assert "does not reach the AP50 of `sp8_rw` at iteration 1,200 (14.0, mean over" in table
    # curves.csv keeps every run; read back, it gives the same summary.
    rows = read_rows(tmp_path / "curves.csv")
    assert len(rows) == 3 * 3 * 2 and {r["seed"] for r in rows} == {"0", "1", "2"}
    runs = study.read_csv(str(tmp_path / "curves.csv"))
    assert runs["sp8_rw"][2] == [
        (600, {"AP": 4.5, "AP50": 9.0, "AP75": 2.25}),
        (1200, {"AP": 9.0, "AP50": 18.0, "AP75": 4.5}),
    ]
    assert study.summarize(runs) == study.summarize(study.collect(known_args(tmp_path)))


def test_comparisons_of_runs_of_different_lengths_are_at_a_common_iteration(tmp_path):
    """SMCA evaluated only at 600: SAM-DETR is compared with it at 600, not at its 1,200.
    One seed of SAM-DETR and the baseline trained on to 1,800: they are compared at 1,200,
    where all three seeds of both were evaluated."""
    write_known_study(tmp_path, {**KNOWN_AP50, "smca": {600: KNOWN_AP50["smca"][600]}})
    for name in ("detr_baseline", "sp8_rw"):
        with open(tmp_path / name / "seed0" / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": 1799, "bbox/AP": 1, "bbox/AP50": 2, "bbox/AP75": 0}))
            f.write("\n")
    table = study.main(known_args(tmp_path, "--iters", "1800"))
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    # At 600: SMCA 8-13 (mean 11) AP50 against SAM-DETR's 4-9 (mean 6): overlapping.
    assert lines["| + SMCA vs SAM-DETR (Table 1)"].endswith(
        "| `smca` | `sp8_rw` | 600 | +2.9 | +2.5 | not resolved | - | +5.0 | not resolved |"
    )
    assert "| `sp8_rw` | `detr_baseline` | 1,200 |" in table


def test_plot_draws_the_mean_with_a_min_max_band(tmp_path):
    write_known_study(tmp_path)
    study.main(known_args(tmp_path))
    summary = {
        (r["variant"], int(r["iteration"])): r for r in read_rows(tmp_path / study.SUMMARY_CSV)
    }
    assert len(summary) == 3 * 2
    smca = summary["smca", 600]
    assert smca["seeds"] == "3" and smca["label"] == "SAM-DETR + SMCA"
    assert (smca["AP50_mean"], smca["AP50_min"], smca["AP50_max"]) == ("11.00", "8.00", "13.00")
    assert (smca["AP_mean"], smca["AP_min"], smca["AP_max"]) == ("5.50", "4.00", "6.50")
    # What the plot function drew is what curves_summary.csv holds.
    runs = study.read_csv(str(tmp_path / "curves.csv"))
    drawn = study.plot(study.summarize(runs), str(tmp_path / "p.png"), "known")
    assert set(drawn) == set(KNOWN_AP50) and set(drawn["smca"]) == set(study.PLOTTED)
    for name, by_metric in drawn.items():
        for metric, data in by_metric.items():
            assert data["iteration"] == [600, 1200]
            for i, iteration in enumerate(data["iteration"]):
                row = summary[name, iteration]
                for stat in ("mean", "min", "max"):
                    assert data[stat][i] == pytest.approx(float(row[f"{metric}_{stat}"]), abs=0.005)
    assert drawn["detr_baseline"]["AP50"]["min"] == [0.4, 1.0]
    assert drawn["detr_baseline"]["AP50"]["max"] == [2.0, 3.0]
    assert cv2.imread(str(tmp_path / "p.png")) is not None
    # A seed missing at one iteration: the band there is over the seeds that have it.
    partial = {name: dict(by_seed) for name, by_seed in runs.items()}
    partial["sp8_rw"][1] = partial["sp8_rw"][1][:1]
    at_end = dict(study.summarize(partial)["sp8_rw"])[1200]["AP50"]
    assert (at_end.mean, at_end.low, at_end.high, at_end.n) == (14.0, 10.0, 18.0, 2)
    drawn = study.plot(study.summarize(partial), str(tmp_path / "partial.png"), "partial")
    assert drawn["sp8_rw"]["AP50"]["seeds"] == [3, 2]  # drawn dotted after 600
    assert drawn["smca"]["AP50"]["seeds"] == [3, 3]


def test_reach_sentence_says_when_the_baseline_reaches_sam_detr(tmp_path):
    long_view = {
        "detr_baseline": {1200: (1.0, 2.0, 3.0), 2400: (5.0, 9.0, 13.0), 3600: (12.0, 16.0, 17.0)},
        "sp8_rw": {1200: (10.0, 14.0, 18.0), 2400: (30.0, 31.0, 32.0), 3600: (40.0, 41.0, 45.0)},
    }  # fmt: skip
    write_known_study(tmp_path, long_view)
    args = study.parse_args(
        ["--output-dir", str(tmp_path), "--variants", "detr_baseline,sp8_rw", "--report-only"]
        + ["--iters", "3600", "--eval-period", "1200"]
    )
    table = study.main(args)
    summary = study.summarize(study.read_csv(str(tmp_path / "curves.csv")))
    # SAM-DETR's mean AP50 at 1,200 is 14.0; the baseline's means are 2.0, 9.0, 15.0.
    assert study.iterations_to_reach(summary, "detr_baseline", "sp8_rw", 1200) == (14.0, 3600)
    assert study.iterations_to_reach(summary, "detr_baseline", "sp8_rw", 2400) == (31.0, None)
    assert study.iterations_to_reach(summary, "detr_baseline", "sp8_rw", 1000) == (None, None)
    sentence = (
        "The DETR baseline (no SAM) (`detr_baseline`) reaches the AP50 of `sp8_rw` at iteration "
        "1,200 (14.0, mean over the seeds) at iteration 3,600"
    )
    assert sentence in table and study.reach_sentence(summary, 1200).startswith(sentence)
    assert study.reach_sentence(summary, 2400) == (
        "The DETR baseline (no SAM) (`detr_baseline`) does not reach the AP50 of `sp8_rw` at "
        "iteration 2,400 (31.0, mean over the seeds) within its 3,600 evaluated iterations "
        "(its best mean AP50: 15.0, at iteration 3,600)."
    )
    assert "has no evaluation at 1,000" in study.reach_sentence(summary, 1000)
    assert study.reach_sentence({"sp8_rw": summary["sp8_rw"]}, 1200) is None


def test_seeds_and_long_view_options():
    default = study.parse_args([])
    assert default.seeds == [0, 1, 2] and default.iters == study.DEFAULT_ITERS
    assert default.variants == [name for name in study.VARIANTS if name != "multiscale"]
    assert default.output_dir == os.path.abspath(study.DEFAULT_OUTPUT)
    assert study.parse_args(["--seed", "1"]).seeds == [1]
    assert study.parse_args(["--seeds", "3,5"]).seeds == [3, 5]
    long = study.parse_args(["--long-view"])
    assert long.variants == ["detr_baseline", "sp8_rw", "smca"]
    assert (long.iters, long.eval_period, long.seeds) == (10000, 300, [0, 1, 2])
    assert long.output_dir == os.path.abspath(study.LONG_VIEW_OUTPUT)
    longer = study.parse_args(["--long-view", "--iters", "9000", "--variants", "detr_baseline"])
    assert (longer.iters, longer.eval_period, longer.variants) == (9000, 300, ["detr_baseline"])
    with pytest.raises(SystemExit):  # the source must be another study
        study.parse_args(["--long-view", "--start-from", long.output_dir])
    for bad in (["--seeds", "0,0"], ["--seeds", "a"], ["--seeds", ","]):
        with pytest.raises(SystemExit):
            study.parse_args(bad)
    cmd = study.train_command(long, "smca", 2, resume=False)
    assert cmd[cmd.index("SEED") + 1] == "2"
    assert cmd[cmd.index("OUTPUT_DIR") + 1] == os.path.join(long.output_dir, "smca", "seed2")


@pytest.mark.parametrize("name", VARIANTS)
def test_visualize_attention_draws_each_detection(study_dir, name, tmp_path, monkeypatch):
    out, cache, _ = study_dir
    monkeypatch.setenv("SAM_DETR_DATASETS", str(cache))
    tool = load_tool("visualize_attention")
    args = tool.parse_args(
        ["--config-file", str(out / name / "seed0" / "config.yaml"), "--output", str(tmp_path)]
        + ["--num-images", "2", "--detections", "2", "--layer", "0"]
        + ["MODEL.WEIGHTS", str(out / name / "seed0" / "model_final.pth")]
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
    metrics = str(out / "sp8_rw" / "seed0" / "metrics.json")
    series = tool.read_series(metrics, tool.LOSSES + tool.EVALUATION)
    assert set(series) >= {"total_loss", "loss_ce", "bbox/AP"}
    png = tool.main(tool.parse_args([metrics, "--output", str(tmp_path / "l.png")]))
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
    run = out / "sp8_rw" / "seed0"
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
    # A step that ends with sys.exit(0) (here argparse's --help) lets the next one run.
    exited = run_tools("predict.py", "--help", "::", "plot_losses.py", metrics, "--output",
                       tmp_path / "c.png")  # fmt: skip
    assert exited.returncode == 0 and cv2.imread(str(tmp_path / "c.png")) is not None

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
    cmd = study.train_command(args, name, 0, resume=False)
    overrides = cmd[cmd.index(study.DEMO_CONFIG) + 1 :]
    overrides = overrides[overrides.index("OUTPUT_DIR") :]
    cfg = get_sam_detr_cfg(study.DEMO_CONFIG, overrides)
    validate_sam_detr_config(cfg)
    assert cfg.MODEL.SAM_DETR.SMCA == (name == "smca")
