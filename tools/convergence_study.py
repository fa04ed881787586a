#!/usr/bin/env python
"""The paper's ablation study (Tables 2-3, Fig. 1) as a convergence study over several seeds.
It trains a list of variants with the same config, recipe and iteration budget, once per seed,
each an ordinary ``train_net.py`` run (its command is printed and saved beside its output in
``<variant>/seed<k>/``), evaluates every ``--eval-period`` iterations, and writes ``curves.csv``
(every run), ``curves_summary.csv`` (mean, min and max over the seeds per variant and
iteration), ``curves.png`` (AP50 and AP against iteration: the mean over the seeds as a line,
their min-max range as a band) and ``table.md`` (mean +- half the min-max range of AP, AP50
and AP75 at the end, beside the paper's COCO numbers; which of the paper's comparisons exceed
the seed spread; how many iterations the DETR baseline needs to reach SAM-DETR's AP50 at
``--reach-at`` iterations).

It resumes where it stopped: a finished run (``study_finished.json``) is skipped, an
interrupted one continues from its last checkpoint (``train_net.py --resume``, which
continues bitwise-exactly). Runs go one at a time (every variant with the first seed, then
with the next), each on ``--num-gpus`` GPUs. Defaults: the demo's model and data, the
paper's nine variants (every variant but ``multiscale``), seeds 0, 1 and 2. ``--long-view``
trains the DETR baseline, SAM-DETR and SMCA for 10,000 iterations (``--iters`` to change) for
the paper's Fig. 1. ``--start-from STUDY`` continues the finished runs of a shorter study with
the same settings (a step schedule's LR does not depend on ``SOLVER.MAX_ITER``, so the
continued run equals a run trained from scratch to ``--iters``). On COCO with GPUs, e.g.::

    python tools/convergence_study.py --config-file configs/sam_detr_R50.yaml \
        --output-dir output/study_coco --num-gpus 8 --iters 88716 --eval-period 7393 \
        --variants detr_baseline,sp8_rw --seeds 0 SOLVER.STEPS "(73930,)"
"""

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "train_net.py")
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "sam_detr_R18_synthetic.yaml")
DEFAULT_OUTPUT = os.path.join("output", "convergence_study")
# 1,200 iterations of the demo (4 images each, 2.4 epochs), evaluated 4 times: the budget at
# which SAM-DETR's and SMCA's gains over the baseline exceed the seed spread. On 2 CPU cores
# in float32 (no native bfloat16) a run takes 4.3-4.9 minutes (baseline) to 6.2-7.3 (SAM-DETR,
# SMCA): the default study in about 3 hours (docs/ablation_study.md#budget).
DEFAULT_ITERS = 1200
DEFAULT_EVAL_PERIOD = 300
DEFAULT_SEEDS = "0,1,2"
# --long-view: the paper's Fig. 1 (AP50 against iteration) for the baseline, SAM-DETR and SMCA,
# evaluated as often as the study (so that --start-from can continue the study's runs). On the
# demo the baseline's AP50 stays near 2 until about 5,000 iterations (docs/ablation_study.md).
LONG_VIEW_VARIANTS = ("detr_baseline", "sp8_rw", "smca")
LONG_VIEW_ITERS = 10000
LONG_VIEW_EVAL_PERIOD = DEFAULT_EVAL_PERIOD
# --start-from: the LR schedule whose value at an iteration does not depend on SOLVER.MAX_ITER
# (Detectron2's step schedule; its cosine schedule stretches with MAX_ITER).
CONTINUABLE_SCHEDULE = "WarmupMultiStepLR"
CONTINUED_FILES = ("model_final.pth", "metrics.json")  # then last_checkpoint, naming the first
CONTINUED = "study_continued_from.txt"  # in a continued run's folder: the run it continues
LONG_VIEW_OUTPUT = os.path.join("output", "convergence_long_view")
# "How many iterations does the baseline need to reach SAM-DETR's AP50 at 1,200?" (issue 25)
REACH = ("detr_baseline", "sp8_rw", "AP50")
DEFAULT_REACH_AT = 1200
SUMMARY_CSV = "curves_summary.csv"
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


# The paper's Tables 1-3; `multiscale` (the official README, a comparison the miniature cannot
# show: README) only when asked for.
DEFAULT_VARIANTS = tuple(name for name in VARIANTS if name != "multiscale")
# The comparisons the paper makes, (the one ahead in the paper, the other, what it compares):
# each row of Table 2 against the one before it, and the paper's headline gaps.
PAIRS = (
    ("avg_pool", "detr_baseline", "SAM with average pooling vs no SAM (Table 2)"),
    ("max_pool", "avg_pool", "max vs average pooling (Table 2)"),
    ("sp1", "max_pool", "one salient point vs max pooling (Table 2)"),
    ("sp1_rw", "sp1", "reweighting, one salient point (Table 2)"),
    ("sp8", "sp1_rw", "eight salient points vs one + RW (Table 2)"),
    ("sp8_rw", "sp8", "reweighting, eight salient points (Table 2)"),
    ("sp8", "sp1", "eight vs one salient point, no RW (Table 2)"),
    ("sp8_rw", "detr_baseline", "SAM-DETR vs DETR baseline (Table 2, Fig. 1)"),
    ("sp8_rw", "image_range", "search within the box vs within the image (Table 3)"),
    ("smca", "sp8_rw", "+ SMCA vs SAM-DETR (Table 1)"),
    ("multiscale", "sp8_rw", "multi-scale vs single-scale (official README)"),
)


@dataclass(frozen=True)
class Spread:
    """One metric over the seeds of a variant at one iteration: mean, min, max, number of seeds."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_range(self) -> float:
        """The spread the table reports: half the min-max range."""
        return (self.high - self.low) / 2


# variant -> seed -> [(iteration, {metric: value})]
Runs = Dict[str, Dict[int, List[Tuple[int, Dict[str, float]]]]]
# variant -> [(iteration, {metric: Spread over the seeds evaluated at that iteration})]
Summary = Dict[str, List[Tuple[int, Dict[str, Spread]]]]


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct seeds, got {text!r}")
    return seeds


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEMO_CONFIG, metavar="FILE")
    parser.add_argument(
        "--output-dir", help=f"default: {DEFAULT_OUTPUT} ({LONG_VIEW_OUTPUT} with --long-view)"
    )
    parser.add_argument(
        "--variants",
        metavar="NAME,NAME",
        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all but multiscale; "
        f"{','.join(LONG_VIEW_VARIANTS)} with --long-view)",
    )
    parser.add_argument(
        "--iters", type=int, help=f"default: {DEFAULT_ITERS} ({LONG_VIEW_ITERS} with --long-view)"
    )
    parser.add_argument(
        "--eval-period",
        type=int,
        help=f"default: {DEFAULT_EVAL_PERIOD} ({LONG_VIEW_EVAL_PERIOD} with --long-view)",
    )
    parser.add_argument(
        "--seeds",
        "--seed",
        type=_seeds,
        default=_seeds(DEFAULT_SEEDS),
        metavar="K,K",
        help=f"one run of every variant per seed (default: {DEFAULT_SEEDS})",
    )
    parser.add_argument(
        "--long-view",
        action="store_true",
        help="the paper's Fig. 1: the baseline, SAM-DETR and SMCA trained long "
        f"({LONG_VIEW_ITERS} iterations, evaluated every {LONG_VIEW_EVAL_PERIOD}, by default)",
    )
    parser.add_argument(
        "--start-from",
        metavar="STUDY",
        help="continue the finished runs of this shorter study (same settings but fewer "
        "iterations) instead of training from iteration 0",
    )
    parser.add_argument(
        "--reach-at",
        type=int,
        default=DEFAULT_REACH_AT,
        metavar="ITER",
        help="table.md says when the baseline reaches SAM-DETR's AP50 at this iteration",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="per run (train_net.py)")
    parser.add_argument(
        "--report-only", action="store_true", help="write the curves and table, train nothing"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides for every variant")
    args = parser.parse_args(argv)
    long = args.long_view
    defaults = {
        "output_dir": LONG_VIEW_OUTPUT if long else DEFAULT_OUTPUT,
        "variants": ",".join(LONG_VIEW_VARIANTS if long else DEFAULT_VARIANTS),
        "iters": LONG_VIEW_ITERS if long else DEFAULT_ITERS,
        "eval_period": LONG_VIEW_EVAL_PERIOD if long else DEFAULT_EVAL_PERIOD,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output_dir, args.config_file = map(os.path.abspath, (args.output_dir, args.config_file))
    if args.start_from is not None:
        args.start_from = os.path.abspath(args.start_from)
        if args.start_from == args.output_dir:
            parser.error("--start-from must be another study than --output-dir")
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants {unknown or 'is empty'}: choose from {', '.join(VARIANTS)}")
    if args.iters < 1 or not 1 <= args.eval_period <= args.iters:
        parser.error(f"need 1 <= --eval-period ({args.eval_period}) <= --iters ({args.iters})")
    return args


def run_dir(output_dir: str, name: str, seed: int) -> str:
    """The output folder of one run: ``<output_dir>/<variant>/seed<k>``."""
    return os.path.join(output_dir, name, f"seed{seed}")


def train_command(args: argparse.Namespace, name: str, seed: int, resume: bool) -> List[str]:
    """The ``train_net.py`` command of one run (evaluating every ``--eval-period``)."""
    out = run_dir(args.output_dir, name, seed)
    cmd = [sys.executable, TRAIN_NET, "--config-file", args.config_file]
    cmd += ["--num-gpus", str(args.num_gpus)] + (["--resume"] if resume else [])
    cmd += ["OUTPUT_DIR", out, "SEED", str(seed), "SOLVER.MAX_ITER", str(args.iters)]
    cmd += ["TEST.EVAL_PERIOD", str(args.eval_period)]
    cmd += ["SOLVER.CHECKPOINT_PERIOD", str(args.eval_period)]
    return cmd + list(COMMON_OVERRIDES) + list(VARIANTS[name].overrides) + list(args.opts)


def _settings(command: Sequence[str], ignored: Sequence[str] = ()) -> List[str]:
    """What determines a run's results in its train_net.py command: the arguments after the
    script, without ``--resume`` and without the ``ignored`` keys and their values."""
    args = [c for c in command[2:] if c != "--resume"]
    kept = []
    for i, c in enumerate(args):
        if c not in ignored and not (i and args[i - 1] in ignored):
            kept.append(c)
    return kept


def _option(command: Sequence[str], key: str) -> str:
    """The value of the last ``key`` in a train_net.py command."""
    return command[len(command) - 1 - command[::-1].index(key) + 1]


def finished_command(folder: str) -> Optional[List[str]]:
    """The train_net.py command of the finished run in ``folder`` (its ``study_finished.json``),
    or None if it has not finished."""
    path = os.path.join(folder, FINISHED)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["command"]


def continue_from(args: argparse.Namespace, name: str, seed: int) -> Optional[str]:
    """Copy the finished run of ``name``/``seed`` in ``--start-from`` (its last checkpoint
    and evaluations) into this study's run folder, so that the run continues it; return the
    source folder, or None if that study has no such run."""
    source = run_dir(args.start_from, name, seed)
    run = f"{name}/seed{seed}"
    earlier = finished_command(source)
    if earlier is None:
        print(
            f"[study] {run}: not finished in {args.start_from}, trained from iteration 0",
            flush=True,
        )
        return None
    ours = train_command(args, name, seed, resume=False)
    ignored = ("OUTPUT_DIR", "SOLVER.MAX_ITER")
    if _settings(earlier, ignored) != _settings(ours, ignored):
        raise SystemExit(
            f"[study] --start-from: {run} in {source} was trained with other settings: "
            f"{shlex.join(_settings(earlier, ignored))}; this study: "
            f"{shlex.join(_settings(ours, ignored))}"
        )
    done = int(_option(earlier, "SOLVER.MAX_ITER"))
    if done >= args.iters:
        raise SystemExit(
            f"[study] --start-from: {run} in {source} has {done} iterations, not fewer than "
            f"--iters {args.iters}"
        )
    with open(os.path.join(source, "config.yaml")) as f:
        solver = yaml.safe_load(f)["SOLVER"]
    schedule, warmup = solver["LR_SCHEDULER_NAME"], solver["WARMUP_ITERS"]
    if schedule != CONTINUABLE_SCHEDULE or warmup > done:
        raise SystemExit(
            f"[study] --start-from: {source}/config.yaml has SOLVER.LR_SCHEDULER_NAME "
            f"{schedule} and SOLVER.WARMUP_ITERS {warmup}: its LR depends on SOLVER.MAX_ITER "
            f"(only {CONTINUABLE_SCHEDULE} with a warmup within the {done} iterations does "
            f"not), so a continued run would differ from a run of {args.iters} iterations. "
            "Train without --start-from."
        )
    out = run_dir(args.output_dir, name, seed)
    os.makedirs(out, exist_ok=True)
    for file in CONTINUED_FILES:
        shutil.copyfile(os.path.join(source, file), os.path.join(out, file))
    # Written last: an interrupted copy is copied again rather than resumed.
    with open(os.path.join(out, CONTINUED), "w") as f:
        f.write(source + "\n")
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(CONTINUED_FILES[0])
    print(f"[study] {run}: continues {source} after its iteration {done:,}", flush=True)
    return source


def run_variant(args: argparse.Namespace, name: str, seed: int) -> None:
    """Train and evaluate one variant with one seed unless finished; continue an interrupted
    run."""
    out = run_dir(args.output_dir, name, seed)
    run = f"{name}/seed{seed}"
    earlier = finished_command(out)
    if earlier is not None:
        if _settings(earlier) != _settings(train_command(args, name, seed, resume=False)):
            raise SystemExit(
                f"[study] {run} in {out} was trained with other settings: "
                f"{shlex.join(_settings(earlier))}. Use another --output-dir, or delete {out}."
            )
        print(f"[study] {run}: finished earlier, kept", flush=True)
        return
    resume = os.path.isfile(os.path.join(out, "last_checkpoint"))
    if not resume and args.start_from is not None:
        resume = continue_from(args, name, seed) is not None
    cmd = train_command(args, name, seed, resume)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    project = os.path.join(REPO, "projects", "SAMDETR")
    env["PYTHONPATH"] = project + os.pathsep + env.get("PYTHONPATH", "")
    shown = " ".join(shlex.quote(c) for c in cmd)
    with open(os.path.join(out, COMMAND_FILE), "w") as f:
        f.write(f"PYTHONPATH=projects/SAMDETR {shown}\n")
    print(f"[study] {run} ({'resumed' if resume else 'started'}): {shown}", flush=True)
    start = time.monotonic()
    with open(os.path.join(out, "study_train.log"), "a") as log:
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(
            f"[study] {run}: train_net.py exited with {code}; see {out}/study_train.log. Run "
            "the study again to continue from its last checkpoint."
        )
    seconds = time.monotonic() - start
    with open(os.path.join(out, FINISHED), "w") as f:
        record = {"command": cmd, "seconds_last_run": round(seconds, 1)}
        continued = os.path.join(out, CONTINUED)
        if os.path.isfile(continued):
            with open(continued) as c:
                record["continued"] = c.read().strip()
        json.dump(record, f, indent=1)
    print(f"[study] {run}: done in {seconds / 60:.1f} min", flush=True)


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


def collect(args: argparse.Namespace) -> Runs:
    """The curves of the runs that have been evaluated at least once."""
    runs: Runs = {}
    for name in args.variants:
        for seed in args.seeds:
            path = os.path.join(run_dir(args.output_dir, name, seed), "metrics.json")
            curve = read_curve(path, args.iters, args.eval_period) if os.path.isfile(path) else []
            if curve:
                runs.setdefault(name, {})[seed] = curve
    return runs


def write_csv(runs: Runs, path: str) -> None:
    """``curves.csv``: one row per run and evaluation."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "label", "seed", "iteration", *METRICS])
        for name, by_seed in runs.items():
            for seed, curve in by_seed.items():
                for iteration, values in curve:
                    row = [f"{values[m]:.2f}" for m in METRICS]
                    writer.writerow([name, VARIANTS[name].label, seed, iteration, *row])


def read_csv(path: str) -> Runs:
    """The runs of a ``curves.csv`` (as :func:`write_csv` writes it)."""
    runs: Runs = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            curve = runs.setdefault(row["variant"], {}).setdefault(int(row["seed"]), [])
            curve.append((int(row["iteration"]), {m: float(row[m]) for m in METRICS}))
    return runs


def summarize(runs: Runs) -> Summary:
    """Mean, min and max over the seeds of each variant at each iteration that at least one
    of its runs evaluated (``n``: how many did)."""
    summary: Summary = {}
    for name, by_seed in runs.items():
        at: Dict[int, List[Dict[str, float]]] = {}
        for curve in by_seed.values():
            for iteration, values in curve:
                at.setdefault(iteration, []).append(values)
        summary[name] = [
            (
                iteration,
                {
                    m: Spread(
                        mean=sum(v[m] for v in values) / len(values),
                        low=min(v[m] for v in values),
                        high=max(v[m] for v in values),
                        n=len(values),
                    )
                    for m in METRICS
                },
            )
            for iteration, values in sorted(at.items())
        ]
    return summary


def write_summary_csv(summary: Summary, path: str) -> None:
    """``curves_summary.csv``: what the plot draws, per variant and iteration: the number of
    seeds, and the mean, min and max of each metric over them."""
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "min", "max")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "label", "iteration", "seeds", *stats])
        for name, points in summary.items():
            for iteration, spreads in points:
                row = [f"{x:.2f}" for m in METRICS for x in _stats(spreads[m])]
                n = spreads[METRICS[0]].n
                writer.writerow([name, VARIANTS[name].label, iteration, n, *row])


def _stats(spread: Spread) -> Tuple[float, float, float]:
    return spread.mean, spread.low, spread.high


def _paper(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _signed(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.1f}"


def resolved(a: Spread, b: Spread) -> Optional[bool]:
    """Whether ``a`` and ``b`` differ beyond the seed spread: True when ``a``'s min-max range
    lies wholly above ``b``'s, False when wholly below, None (not resolved) when the ranges
    overlap or either has fewer than two seeds."""
    if a.n < 2 or b.n < 2:
        return None
    if a.low > b.high:
        return True
    if a.high < b.low:
        return False
    return None


def _verdict(ahead: Optional[bool], paper: Optional[float], first: str, second: str) -> str:
    if ahead is None:
        return "not resolved"
    text = f"`{first if ahead else second}` ahead"
    if paper is None or paper == 0:
        return text
    return text + (" (as in the paper)" if (paper > 0) == ahead else " (paper: the other way)")


def comparison_lines(summary: Summary) -> List[str]:
    """A markdown table, one row per comparison the paper makes (:data:`PAIRS`) between two
    variants of the study, at one iteration both evaluated (runs of different lengths are
    compared at the same iteration): the last of those with the most seeds evaluated in both.
    The paper's difference, ours (of the means), and whether ours exceeds the seed spread."""
    lines = [
        "Differences at the last iteration both variants evaluated with the most seeds (first "
        "minus second; ours: of the means). Resolved: the two min-max ranges over the seeds do "
        "not overlap; otherwise not resolved.",
        "",
        "| comparison | first | second | iteration | paper AP | ours AP | AP: beyond the spread? "
        "| paper AP50 | ours AP50 | AP50: beyond the spread? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for first, second, what in PAIRS:
        if first not in summary or second not in summary:
            continue
        points = [dict(summary[first]), dict(summary[second])]
        common = set(points[0]) & set(points[1])
        if not common:
            continue
        at = max(common, key=lambda i: (min(p[i][METRICS[0]].n for p in points), i))
        a, b = points[0][at], points[1][at]
        cells = []
        for index, m in enumerate(("AP", "AP50")):
            pa, pb = VARIANTS[first].paper[index], VARIANTS[second].paper[index]
            paper = None if pa is None or pb is None else pa - pb
            cells.append(_signed(paper))
            cells.append(_signed(a[m].mean - b[m].mean))
            cells.append(_verdict(resolved(a[m], b[m]), paper, first, second))
        lines.append(f"| {what} | `{first}` | `{second}` | {at:,} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 4 else []


def iterations_to_reach(
    summary: Summary, variant: str, reference: str, at: int, metric: str = "AP50"
) -> Tuple[Optional[float], Optional[int]]:
    """``(target, iteration)``: ``target`` is the mean ``metric`` of ``reference`` at iteration
    ``at`` (None if it has no evaluation there); ``iteration`` the first evaluated iteration at
    which the mean of ``variant`` reaches it (None if it does not, or cannot be told)."""
    target = {i: s[metric].mean for i, s in summary.get(reference, [])}.get(at)
    if target is None:
        return None, None
    for iteration, spreads in summary.get(variant, []):
        if spreads[metric].mean >= target:
            return target, iteration
    return target, None


def reach_sentence(summary: Summary, at: int) -> Optional[str]:
    """How many iterations the DETR baseline needs to reach SAM-DETR's AP50 (means over the
    seeds) at iteration ``at``, if it does; None without both variants in the study."""
    variant, reference, metric = REACH
    if variant not in summary or reference not in summary:
        return None
    target, iteration = iterations_to_reach(summary, variant, reference, at, metric)
    who, whom = f"The {VARIANTS[variant].label} (`{variant}`)", f"`{reference}`"
    if target is None:
        return f"{who}: cannot tell when it reaches {whom}: {whom} has no evaluation at {at:,}."
    goal = f"the {metric} of {whom} at iteration {at:,} ({target:.1f}, mean over the seeds)"
    if iteration is not None:
        return (
            f"{who} reaches {goal} at iteration {iteration:,} "
            "(its first evaluation with a mean at or above it)."
        )
    best, spreads = max(summary[variant], key=lambda p: p[1][metric].mean)
    end = summary[variant][-1][0]
    return (
        f"{who} does not reach {goal} within its {end:,} evaluated iterations "
        f"(its best mean {metric}: {spreads[metric].mean:.1f}, at iteration {best:,})."
    )


def write_table(
    summary: Summary, path: str, iters: int, seeds: Sequence[int], reach_at: int
) -> str:
    """``table.md``: the last evaluation of each variant (mean +- half the min-max range over
    the seeds), beside the paper's numbers; the paper's comparisons; the reach sentence."""
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; ours: mean ± half the min-max range over the "
        "seeds.",
        "",
        "| variant | seeds | iteration | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, points in summary.items():
        iteration, spreads = points[-1]
        ours = " | ".join(f"{spreads[m].mean:.1f} ± {spreads[m].half_range:.1f}" for m in METRICS)
        paper = " | ".join(_paper(v) for v in VARIANTS[name].paper)
        note = "" if iteration == iters else " (unfinished)"
        n = spreads[METRICS[0]].n
        label = f"{VARIANTS[name].label} (`{name}`)"
        lines.append(f"| {label} | {n} of {len(seeds)} | {iteration}{note} | {ours} | {paper} |")
    pairs = comparison_lines(summary)
    if pairs:
        lines += [""] + pairs
    sentence = reach_sentence(summary, reach_at)
    if sentence:
        lines += ["", sentence]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot(summary: Summary, path: str, title: str) -> Dict[str, Dict[str, Dict[str, List]]]:
    """AP50 and AP against iteration (the paper's Fig. 1): per variant the mean over the seeds
    as a line and their min-max range as a band; dotted where fewer of its seeds have got
    (a run still training). Returns what it drew:
    ``{variant: {metric: {"iteration", "mean", "min", "max", "seeds": [...]}}}``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawn: Dict[str, Dict[str, Dict[str, List]]] = {}
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=PLOT_SIZE_INCHES)
    for ax, metric in zip(axes, PLOTTED):
        for name, points in summary.items():
            data = {
                "iteration": [i for i, _ in points],
                "mean": [s[metric].mean for _, s in points],
                "min": [s[metric].low for _, s in points],
                "max": [s[metric].high for _, s in points],
                "seeds": [s[metric].n for _, s in points],
            }
            drawn.setdefault(name, {})[metric] = data
            # Solid up to the last point with all of the variant's seeds, dotted after it.
            end = max(k for k, n in enumerate(data["seeds"]) if n == max(data["seeds"])) + 1
            x, y = data["iteration"], data["mean"]
            (line,) = ax.plot(x[:end], y[:end], marker="o", label=name)
            if end < len(x):
                ax.plot(
                    x[end - 1 :], y[end - 1 :], marker="o", linestyle=":",
                    color=line.get_color(), markerfacecolor="none",
                )  # fmt: skip
            ax.fill_between(
                data["iteration"], data["min"], data["max"], color=line.get_color(), alpha=0.2
            )
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(
        fontsize="small",
        title="line: mean; band: min-max;\ndotted: fewer seeds",
        title_fontsize="small",
    )
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return drawn


def report(args: argparse.Namespace) -> str:
    """Write curves.csv, curves_summary.csv, curves.png and table.md from the runs' metrics;
    return the table."""
    runs = collect(args)
    if not runs:
        raise SystemExit(f"[study] no evaluation results under {args.output_dir} yet")
    write_csv(runs, os.path.join(args.output_dir, "curves.csv"))
    summary = summarize(runs)
    write_summary_csv(summary, os.path.join(args.output_dir, SUMMARY_CSV))
    seeds = ", ".join(map(str, args.seeds))
    title = (
        f"{os.path.basename(args.config_file)}: mean over seeds {seeds} (line), "
        "min-max over the seeds (band)"
    )
    plot(summary, os.path.join(args.output_dir, "curves.png"), title)
    path = os.path.join(args.output_dir, "table.md")
    return write_table(summary, path, args.iters, args.seeds, args.reach_at)


def main(args: argparse.Namespace) -> str:
    if not args.report_only:
        for seed in args.seeds:  # every variant once before the next seed
            for name in args.variants:
                run_variant(args, name, seed)
                report(args)  # curves so far, after every run
    table = report(args)
    print(table, flush=True)
    print(
        f"[study] curves.csv, {SUMMARY_CSV}, curves.png and table.md in {args.output_dir}",
        flush=True,
    )
    return table


if __name__ == "__main__":
    main(parse_args())
