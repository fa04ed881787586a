#!/usr/bin/env python
"""Run several of the scripts in tools/ one after another in one Python process, so that
PyTorch and Detectron2 are imported once rather than once per script (5-6 s each on 2 CPU
cores; `make demo` runs its four post-training steps this way).

Each step is a script's file name followed by its own arguments; steps are separated by a
standalone ``::``. Every step runs as ``python tools/<script> <arguments>`` would (as
``__main__``, with those arguments in ``sys.argv``). The first step that fails stops the
chain with its exit status; the later steps do not run.

Example: python tools/run_tools.py plot_losses.py output/demo/metrics.json --output \
    output/demo/losses.png :: predict.py --config-file output/demo/config.yaml \
    --dataset sam_detr_synthetic_val --output output/demo/predictions \
    MODEL.WEIGHTS output/demo/model_final.pth
"""

import os
import runpy
import sys
from typing import List, Sequence

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
SEPARATOR = "::"


def split_steps(argv: Sequence[str]) -> List[List[str]]:
    """``[script, args..., "::", script, args...]`` -> one ``[script, args...]`` per step."""
    steps: List[List[str]] = [[]]
    for token in argv:
        if token == SEPARATOR:
            steps.append([])
        else:
            steps[-1].append(token)
    if any(not step for step in steps):
        raise SystemExit(
            f"run_tools.py: empty step in {' '.join(argv)!r}: give a script of tools/ and its "
            f"arguments, steps separated by a standalone {SEPARATOR!r}."
        )
    return steps


def script_path(name: str) -> str:
    """The path of ``tools/<name>``; a clear error if there is no such script."""
    path = os.path.join(TOOLS_DIR, name)
    if os.path.dirname(name) or not name.endswith(".py") or not os.path.isfile(path):
        scripts = sorted(f for f in os.listdir(TOOLS_DIR) if f.endswith(".py"))
        raise SystemExit(f"run_tools.py: no script {name!r} in {TOOLS_DIR}; one of {scripts}.")
    return path


def main(argv: Sequence[str]) -> None:
    if list(argv[:1]) in (["-h"], ["--help"]):
        print(__doc__)
        return
    steps = split_steps(argv)
    paths = [script_path(step[0]) for step in steps]  # all checked before the first runs
    if TOOLS_DIR not in sys.path:  # as when a script is run directly
        sys.path.insert(0, TOOLS_DIR)
    for path, step in zip(paths, steps):
        sys.argv = [path, *step[1:]]
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as done:  # a script's sys.exit: 0 or None goes on to the next step
            if done.code not in (None, 0):
                raise


if __name__ == "__main__":
    main(sys.argv[1:])
