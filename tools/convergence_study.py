#!/usr/bin/env python
"""The paper's ablation study (Tables 2-3, Fig. 1) as a convergence study: train a list of
variants with the same config, recipe, seed and iteration budget, each an ordinary
``train_net.py`` run (its command is printed and saved beside its output), evaluate every
``--eval-period`` iterations, and write ``curves.csv``, ``curves.png`` (AP50 and AP against
iteration, one line per variant) and ``table.md`` (AP, AP50, AP75 at the end, beside the
paper's COCO numbers).

It resumes where it stopped: a finished variant (``study_finished.json``) is skipped, an
interrupted one continues from its last checkpoint (``train_net.py --resume``, which
continues bitwise-exactly). Defaults: the demo's model and data, every variant, a budget
that fits in about 90 minutes on a 2-core CPU. On COCO with GPUs, e.g.::

    python tools/convergence_study.py --config-file configs/sam_detr_R50.yaml \
        --output-dir output/study_coco --num-gpus 8 --iters 88716 --eval-period 7393 \
        --variants detr_baseline,sp8_rw SOLVER.STEPS "(73930,)"
"""

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "train_net.py")
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "sam_detr_R18_synthetic.yaml")
DEFAULT_OUTPUT = os.path.join("output", "convergence_study")
# 1,200 iterations of the demo (4 images each, 2.4 epochs), evaluated 4 times: 5-8 minutes per
# variant on 2 CPU cores, 9 variants in 55-80 minutes (README).
DEFAULT_ITERS = 1200
DEFAULT_EVAL_PERIOD = 300
FINISHED = "study_finished.json"
COMMAND_FILE = "study_command.sh"
METRICS = ("AP", "AP50", "AP75")
PLOTTED = ("AP50", "AP")
PLOT_SIZE_INCHES = (10, 4)
PLOT_DPI = 80
_K = "MODEL.SAM_DETR."
# The paper's Tables 2-3 are without SMCA, which the demo's config turns on: every variant
# starts from SMCA off, and the `smca` variant turns it back on.
COMMON_OVERRIDES = (_K + "SMCA", "False")


@dataclass(frozen=True)
class Variant:
    """One row of the paper's Table 2 or 3: its label, config overrides and COCO result."""

    label: str
    overrides: Tuple[str, ...]
    paper: Tuple[Optional[float], Optional[float], Optional[float]]  # AP, AP50, AP75


# Paper: COCO val2017, R50, 12 epochs (Tables 1-3); the SMCA row gives only AP in Table 1.
VARIANTS: Dict[str, Variant] = {
    "detr_baseline": Variant(
        "DETR baseline (no SAM)", (_K + "SEMANTIC_ALIGNED_MATCHING", "False"), (22.3, 39.5, 22.2)
    ),
    "avg_pool": Variant(
        "SAM, Avg",
        (_K + "QUERY_RESAMPLING", "avg_pool", _K + "REWEIGHTING", "False"),
        (25.2, 48.9, 23.3),
    ),
    "max_pool": Variant(
        "SAM, Max",
        (_K + "QUERY_RESAMPLING", "max_pool", _K + "REWEIGHTING", "False"),
        (27.0, 50.2, 25.8),
    ),
    "sp1": Variant(
        "SAM, SP x1",
        (_K + "NUM_SALIENT_POINTS", "1", _K + "REWEIGHTING", "False"),
        (28.6, 50.3, 28.1),
    ),
    "sp1_rw": Variant("SAM, SP x1 + RW", (_K + "NUM_SALIENT_POINTS", "1"), (30.3, 52.0, 29.8)),
    "sp8": Variant("SAM, SP x8", (_K + "REWEIGHTING", "False"), (32.0, 53.4, 32.8)),
    "sp8_rw": Variant("SAM, SP x8 + RW (SAM-DETR)", (), (33.1, 54.2, 33.7)),
    "image_range": Variant(
        "SAM-DETR, search within image", (_K + "SEARCH_RANGE", "image"), (30.0, 52.3, 29.2)
    ),
    "smca": Variant("SAM-DETR + SMCA", (_K + "SMCA", "True"), (36.0, None, None)),
    # Not in the paper: the official repository's R50-MS (12 epochs: 41.1 AP). On the demo
    # (3 decoder layers): res3-res5 (strides 8-32), one decoder layer on each, coarse to fine,
    # encoder FFN halved as the official multi-scale encoder.
    "multiscale": Variant(
        "SAM-DETR multi-scale (official README)",
        (
            "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']",
            _K + "IN_FEATURES", "['res3', 'res4', 'res5']",
            _K + "DEC_LAYERS", "3",
            _K + "DECODER_IN_FEATURES", "['res5', 'res4', 'res3']",
            _K + "ENC_DIM_FEEDFORWARD", "256",
        ),
        (41.1, None, None),
    ),  # fmt: skip
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEMO_CONFIG, metavar="FILE")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        metavar="NAME,NAME",
        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    parser.add_argument("--eval-period", type=int, default=DEFAULT_EVAL_PERIOD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1, help="per variant (train_net.py)")
    parser.add_argument(
        "--report-only", action="store_true", help="write the curves and table, train nothing"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides for every variant")
    args = parser.parse_args(argv)
    args.output_dir, args.config_file = map(os.path.abspath, (args.output_dir, args.config_file))
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants {unknown or 'is empty'}: choose from {', '.join(VARIANTS)}")
    if args.iters < 1 or not 1 <= args.eval_period <= args.iters:
        parser.error(f"need 1 <= --eval-period ({args.eval_period}) <= --iters ({args.iters})")
    return args


def train_command(args: argparse.Namespace, name: str, resume: bool) -> List[str]:
    """The ``train_net.py`` command of one variant (evaluating every ``--eval-period``)."""
    out = os.path.join(args.output_dir, name)
    cmd = [sys.executable, TRAIN_NET, "--config-file", args.config_file]
    cmd += ["--num-gpus", str(args.num_gpus)] + (["--resume"] if resume else [])
    cmd += ["OUTPUT_DIR", out, "SEED", str(args.seed), "SOLVER.MAX_ITER", str(args.iters)]
    cmd += ["TEST.EVAL_PERIOD", str(args.eval_period)]
    cmd += ["SOLVER.CHECKPOINT_PERIOD", str(args.eval_period)]
    return cmd + list(COMMON_OVERRIDES) + list(VARIANTS[name].overrides) + list(args.opts)


def _settings(command: Sequence[str]) -> List[str]:
    """What determines a variant's results in its train_net.py command: the arguments after
    the script, without ``--resume``."""
    return [c for c in command[2:] if c != "--resume"]


def run_variant(args: argparse.Namespace, name: str) -> None:
    """Train and evaluate one variant unless finished; continue an interrupted one."""
    out = os.path.join(args.output_dir, name)
    finished = os.path.join(out, FINISHED)
    if os.path.isfile(finished):
        with open(finished) as f:
            earlier = json.load(f)["command"]
        if _settings(earlier) != _settings(train_command(args, name, resume=False)):
            raise SystemExit(
                f"[study] {name} in {out} was trained with other settings: "
                f"{shlex.join(_settings(earlier))}. Use another --output-dir, or delete {out}."
            )
        print(f"[study] {name}: finished earlier, kept", flush=True)
        return
    resume = os.path.isfile(os.path.join(out, "last_checkpoint"))
    cmd = train_command(args, name, resume)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    project = os.path.join(REPO, "projects", "SAMDETR")
    env["PYTHONPATH"] = project + os.pathsep + env.get("PYTHONPATH", "")
    shown = " ".join(shlex.quote(c) for c in cmd)
    with open(os.path.join(out, COMMAND_FILE), "w") as f:
        f.write(f"PYTHONPATH=projects/SAMDETR {shown}\n")
    print(f"[study] {name} ({'resumed' if resume else 'started'}): {shown}", flush=True)
    start = time.monotonic()
    with open(os.path.join(out, "study_train.log"), "a") as log:
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(
            f"[study] {name}: train_net.py exited with {code}; see {out}/study_train.log. Run "
            "the study again to continue from its last checkpoint."
        )
    seconds = time.monotonic() - start
    with open(os.path.join(out, FINISHED), "w") as f:
        json.dump({"command": cmd, "seconds_last_run": round(seconds, 1)}, f, indent=1)
    print(f"[study] {name}: done in {seconds / 60:.1f} min", flush=True)


def read_curve(metrics_json: str, iters: int, eval_period: int) -> List[Tuple[int, Dict]]:
    """``[(iterations done, {"AP", "AP50", "AP75"})]`` of the evaluations in a
    ``metrics.json``; the last record of an iteration wins (as after a resume). Detectron2
    records a periodic evaluation at the index of its last iteration (``k * period - 1``) and
    the final one at ``MAX_ITER`` (also when a longer run continues a finished one)."""
    points: Dict[int, Dict[str, float]] = {}
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                index = record["iteration"]
                done = index + 1 if (index + 1) % eval_period == 0 else index
                points[min(done, iters)] = {m: record[f"bbox/{m}"] for m in METRICS}
    return sorted(points.items())


def collect(args: argparse.Namespace) -> Dict[str, List]:
    """The curves of the variants that have been evaluated at least once."""
    curves = {}
    for name in args.variants:
        path = os.path.join(args.output_dir, name, "metrics.json")
        curve = read_curve(path, args.iters, args.eval_period) if os.path.isfile(path) else []
        if curve:
            curves[name] = curve
    return curves


def write_csv(curves: Dict[str, List], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "label", "iteration", *METRICS])
        for name, curve in curves.items():
            for iteration, values in curve:
                row = [f"{values[m]:.2f}" for m in METRICS]
                writer.writerow([name, VARIANTS[name].label, iteration, *row])


def _paper(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_table(curves: Dict[str, List], path: str, iters: int) -> str:
    """Markdown table of the last evaluation of each variant, beside the paper's numbers."""
    lines = [
        "| variant | iteration | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, curve in curves.items():
        iteration, values = curve[-1]
        ours = " | ".join(f"{values[m]:.1f}" for m in METRICS)
        paper = " | ".join(_paper(v) for v in VARIANTS[name].paper)
        note = "" if iteration == iters else " (unfinished)"
        label = f"{VARIANTS[name].label} (`{name}`)"
        lines.append(f"| {label} | {iteration}{note} | {ours} | {paper} |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot(curves: Dict[str, List], path: str, title: str) -> None:
    """AP50 and AP against iteration, one line per variant (the paper's Fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=PLOT_SIZE_INCHES)
    for ax, metric in zip(axes, PLOTTED):
        for name, curve in curves.items():
            iterations = [i for i, _ in curve]
            ax.plot(iterations, [v[metric] for _, v in curve], marker="o", label=name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def report(args: argparse.Namespace) -> str:
    """Write curves.csv, curves.png and table.md from the variants' metrics; return the table."""
    curves = collect(args)
    if not curves:
        raise SystemExit(f"[study] no evaluation results under {args.output_dir} yet")
    write_csv(curves, os.path.join(args.output_dir, "curves.csv"))
    title = f"{os.path.basename(args.config_file)}, seed {args.seed}"
    plot(curves, os.path.join(args.output_dir, "curves.png"), title)
    return write_table(curves, os.path.join(args.output_dir, "table.md"), args.iters)


def main(args: argparse.Namespace) -> str:
    if not args.report_only:
        for name in args.variants:
            run_variant(args, name)
            report(args)  # curves so far, after every variant
    table = report(args)
    print(table, flush=True)
    print(f"[study] curves.csv, curves.png and table.md in {args.output_dir}", flush=True)
    return table


if __name__ == "__main__":
    main(parse_args())
