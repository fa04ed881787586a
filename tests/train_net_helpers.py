"""Helpers of the training tests: a tiny user-style COCO dataset written to disk (coloured
squares and discs of two classes on noise, with an empty image and a zero-area box), the
tiny config, running ``train_net.py`` in a subprocess, and loading a script of ``tools/``."""

import importlib.util
import json
import os
import resource
import subprocess
import sys
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # train_net.py lives at the repository root
    sys.path.insert(0, REPO)
TRAIN_NET = os.path.join(REPO, "train_net.py")
TINY_CONFIG = os.path.join(REPO, "configs", "demo", "tiny_test.yaml")
PYTHONPATH = os.path.join(REPO, "projects", "SAMDETR")
IMAGE_SIZE = 64
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 7, "name": "disc"}]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (``tools/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_coco(root: str, num_images: int, seed: int, categories=CATEGORIES) -> str:
    """Write ``root/images/*.png`` and ``root/annotations.json``; return the json path.

    Image 0 has no object; image 1 also carries a zero-area box.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        num_objects = 0 if i == 0 else int(rng.integers(1, 3))
        for _ in range(num_objects):
            cat = categories[int(rng.integers(len(categories)))]
            size = int(rng.integers(14, 28))
            x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - size, 2))
            if cat["id"] == categories[0]["id"]:
                cv2.rectangle(img, (x, y), (x + size - 1, y + size - 1), (40, 40, 230), -1)
            else:
                c = size // 2
                cv2.circle(img, (x + c, y + c), c, (40, 230, 40), -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat["id"],
                    "bbox": [x, y, size, size],
                    "area": size * size,
                    "iscrowd": 0,
                }
            )
        if i == 1:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": categories[0]["id"],
                    "bbox": [5, 5, 0, 10],
                    "area": 0,
                    "iscrowd": 0,
                }
            )
        name = f"{i:04d}.png"
        cv2.imwrite(os.path.join(root, "images", name), img)
        images.append({"id": i + 1, "file_name": name, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def tiny_dataset_args(root: str, prefix: str = "tiny") -> List[str]:
    """``--coco-dataset`` arguments registering ``{prefix}_train``/``{prefix}_val`` in root."""
    args = []
    for split in ("train", "val"):
        d = os.path.join(root, split)
        args += [
            "--coco-dataset",
            f"{prefix}_{split}",
            os.path.join(d, "annotations.json"),
            os.path.join(d, "images"),
        ]
    return args


def make_tiny_datasets(root: str) -> str:
    write_tiny_coco(os.path.join(root, "train"), num_images=8, seed=0)
    write_tiny_coco(os.path.join(root, "val"), num_images=3, seed=1)
    return root


def tiny_overrides(output_dir: str, prefix: str = "tiny") -> List[str]:
    return [
        "OUTPUT_DIR",
        output_dir,
        "DATASETS.TRAIN",
        f"('{prefix}_train',)",
        "DATASETS.TEST",
        f"('{prefix}_val',)",
    ]


def env(first_paths: Sequence[str] = ()) -> Dict[str, str]:
    """The environment of a subprocess: ``first_paths``, the project, then ``$PYTHONPATH``."""
    e = dict(os.environ)
    paths = (*first_paths, PYTHONPATH, REPO, e.get("PYTHONPATH"))
    e["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def train_net_command(args: List[str], script: str = TRAIN_NET) -> List[str]:
    return [sys.executable, script] + args


def hide_module(root: str, name: str) -> str:
    """A folder to put first on ``PYTHONPATH`` in which importing ``name`` fails, as when the
    package is not installed; returns the folder."""
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, "__init__.py"), "w") as f:
        f.write(f"raise ImportError('{name} is hidden by the test')\n")
    return root


def run_train_net(
    args: List[str],
    timeout: float = 240,
    script: str = TRAIN_NET,
    launcher: List[str] = (),
    first_paths: Sequence[str] = (),
    preexec_fn: Optional[Callable[[], None]] = None,
) -> subprocess.CompletedProcess:
    """Run ``script`` (train_net.py), optionally after ``launcher`` arguments (e.g.
    ``-m torch.distributed.run ...`` or ``-c CODE``: see :func:`python_wrapper`), with
    ``first_paths`` ahead on ``PYTHONPATH`` and ``preexec_fn`` run in the child; stdout and
    stderr together in ``.stdout``. A run past ``timeout`` is killed."""
    cmd = [sys.executable] + list(launcher) + [script] + args
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=env(first_paths),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def python_wrapper(code: str) -> List[str]:
    """``launcher`` arguments that run ``code``, then the script with its arguments."""
    run_script = "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    return ["-c", f"import runpy, sys\n{code}\n{run_script}"]


def limit_file_size(limit: int) -> Callable[[], None]:
    """``preexec_fn``: files may not grow beyond ``limit`` bytes. Python ignores SIGXFSZ, so
    a write beyond the limit fails with EFBIG, as on a full disk (:data:`SIGXFSZ_KILLS` makes
    it kill the process instead)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


# python_wrapper code: SIGXFSZ back at its default action, so that the process is killed in
# the write that crosses RLIMIT_FSIZE (a kill in the middle of a save).
SIGXFSZ_KILLS = "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL)"
# python_wrapper code: SIGKILL right after the first checkpoint is complete and named in
# last_checkpoint (a preemption between saves, at a known point).
KILLED_AFTER_FIRST_CHECKPOINT = """import os, signal
_replace = os.replace
def _replace_then_die(src, dst, **kwargs):
    _replace(src, dst, **kwargs)
    if os.path.basename(dst) == "last_checkpoint":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = _replace_then_die"""


def tiny_cfg(*overrides: str):
    """The tiny test config on CPU, without reading any dataset."""
    from detectron2.config import get_cfg
    from sam_detr import add_sam_detr_config

    cfg = get_cfg()
    add_sam_detr_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(overrides))
    return cfg


def assert_same_final_checkpoint(out: str, reference: str, last_iteration: int) -> None:
    """``model_final.pth`` of ``out`` equals ``reference``'s bitwise: weights, optimizer moments,
    LR schedule, at ``last_iteration`` (loaded as ``torch.load(weights_only=True)`` loads)."""
    import torch

    ours, theirs = (
        torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)
        for folder in (out, reference)
    )
    assert ours["iteration"] == theirs["iteration"] == last_iteration
    for k, v in theirs["model"].items():
        assert torch.equal(ours["model"][k], v), k
    moments = [s["trainer"]["_trainer"]["optimizer"]["state"] for s in (ours, theirs)]
    for i, state in moments[1].items():
        for k, v in state.items():
            assert torch.equal(moments[0][i][k], v), (i, k)
    schedules = [s["trainer"]["hooks"]["LRScheduler"] for s in (ours, theirs)]
    assert schedules[0] == schedules[1]
