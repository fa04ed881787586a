#!/usr/bin/env python
"""Plot the training losses that ``train_net.py`` logged to ``metrics.json``: the total loss
and the last decoder layer's classification, L1 and GIoU losses against iteration, and the
COCO AP / AP50 of every evaluation when there were any.

Example: python tools/plot_losses.py output/demo/metrics.json --output output/demo/losses.png
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

LOSSES = ("total_loss", "loss_ce", "loss_bbox", "loss_giou")
EVALUATION = ("bbox/AP", "bbox/AP50")
FIGURE_INCHES = (10, 3.6)
DPI = 80


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="metrics.json of a train_net.py run")
    parser.add_argument("--output", required=True, help="PNG file to write")
    return parser.parse_args(argv)


def read_series(path: str, keys: Sequence[str]) -> Dict[str, List[Tuple[int, float]]]:
    """``{key: [(iteration, value)]}`` of the records of ``metrics.json`` that have ``key``;
    the last record of an iteration wins (a resumed run appends to the file)."""
    series: Dict[str, Dict[int, float]] = {key: {} for key in keys}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {number}: not a JSON record ({e.msg})") from e
            for key in keys:
                if key in record:
                    series[key][record["iteration"]] = record[key]
    return {key: sorted(values.items()) for key, values in series.items() if values}


def main(args: argparse.Namespace) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series = read_series(args.metrics, LOSSES + EVALUATION)
    if not any(key in series for key in LOSSES):
        raise SystemExit(f"{args.metrics} has no training losses ({', '.join(LOSSES)})")
    evaluated = [key for key in EVALUATION if key in series]
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=FIGURE_INCHES, squeeze=False)
    for key in LOSSES:
        if key in series:
            iterations, values = zip(*series[key])
            axes[0, 0].plot(iterations, values, label=key)
    axes[0, 0].set(xlabel="iteration", ylabel="loss (median of the logging window)")
    axes[0, 0].legend(fontsize="small")
    for key in evaluated:
        iterations, values = zip(*series[key])
        axes[0, 1].plot(iterations, values, marker="o", label=key)
        axes[0, 1].set(xlabel="iteration", ylabel="COCO metric")
        axes[0, 1].legend(fontsize="small")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=DPI)
    plt.close(fig)
    print(f"Wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main(parse_args())
