"""The training step waits on the device only a handful of times, however many decoder
layers the model has: one training step of the tiny model with 3 and with 6 decoder layers
(torchvision's RoIAlign, as on GPUs) counts the same host reads, at most ``MAX_HOST_READS``.

On the CPU a copy to the host is free and a read never waits, so the reads are counted where
they happen: every ``Tensor.item / tolist / __bool__ / __int__ / __float__ / __index__ /
cpu`` call (a counting wrapper around PyTorch's own method), plus the profiler's
``aten::_local_scalar_dense`` events (the operator behind every scalar read). On CUDA the
same step runs under ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every
synchronising operation (``tools/gpu_check.sh`` runs that variant)."""

import collections
import itertools
import traceback
import warnings
from pathlib import Path
from typing import Counter, Iterator, Tuple

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from sam_detr.config import get_sam_detr_cfg
from sam_detr.engine.precision import Precision
from sam_detr.engine.solver import build_optimizer
from sam_detr.engine.train_step import SAMDETRTrainStep
from torch.profiler import ProfilerActivity, profile

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "tiny_test.yaml"
# Tensor methods that read a tensor's values into Python (or copy it to the host).
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu")
# Host reads of one float32 training step, whatever the number of decoder layers: 3 (the
# batch's largest class on the host, the matcher's one copy of all layers' costs, the step's
# one read of losses and flags). Before the step was reworked: 17 with 3 layers, 29 with 6.
MAX_HOST_READS = 4
# Synchronising CUDA operations of one training step (set_sync_debug_mode's warnings).
MAX_CUDA_SYNCS = MAX_HOST_READS


class HostReadCounter:
    """Counts calls of :data:`HOST_READS` on ``torch.Tensor`` while entered, by method and by
    the calling line outside PyTorch (``where``), for the failure messages."""

    def __init__(self) -> None:
        self.where: Counter[Tuple[str, str]] = collections.Counter()
        self._saved = {}

    @property
    def total(self) -> int:
        return sum(self.where.values())

    def _counting(self, name, method):
        def counted(tensor, *args, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            caller = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            self.where[name, caller] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def __enter__(self) -> "HostReadCounter":
        for name in HOST_READS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name, method in self._saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)


def tiny_batch(device: str) -> list:
    """Two uint8 images (as the data mapper gives them) of different sizes, with boxes."""
    generator = torch.Generator().manual_seed(0)
    batch = []
    for h, w, boxes, classes in (
        (64, 48, [[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 44.0, 60.0]], [0, 1]),
        (56, 64, [[10.0, 8.0, 50.0, 30.0]], [1]),
    ):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor(classes)
        image = torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst})
    return batch


def tiny_train_step(dec_layers: int, device: str) -> SAMDETRTrainStep:
    cfg = get_sam_detr_cfg(
        str(TINY_CONFIG),
        [
            "MODEL.DEVICE", device,
            "MODEL.SAM_DETR.DEC_LAYERS", dec_layers,
            "MODEL.SAM_DETR.ROI_ALIGN", "torchvision",
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = tiny_batch(device)
    return SAMDETRTrainStep(
        model,
        build_optimizer(cfg, model),
        loader_factory=lambda seed, start: itertools.repeat(batch),
        precision=Precision(),
        seed=0,
        clip_norm=cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
    )


def counted_steps(step: SAMDETRTrainStep) -> Iterator[None]:
    """Runs a first (warm-up) step, then yields inside the storage to run the counted one."""
    with EventStorage(0) as storage:
        step.iter = 0
        step.run_step()
        storage.iter = step.iter = 1
        yield


def host_reads_of_one_step(dec_layers: int) -> Tuple[HostReadCounter, int]:
    """The host reads and the ``aten::_local_scalar_dense`` events of the second step."""
    step = tiny_train_step(dec_layers, "cpu")
    for _ in counted_steps(step):
        with profile(activities=[ProfilerActivity.CPU]) as prof, HostReadCounter() as reads:
            step.run_step()
    return reads, scalar_reads(prof)


def scalar_reads(prof) -> int:
    """``aten::_local_scalar_dense`` events, but for those of the CPU's fused AdamW kernel,
    which reads each parameter's step counter from host memory (the counters live on the
    device with CUDA, and the kernel reads them there)."""
    count = 0
    for event in prof.events():
        if event.name != "aten::_local_scalar_dense":
            continue
        parent = event.cpu_parent
        while parent is not None and "_fused_adam" not in parent.name:
            parent = parent.cpu_parent
        count += parent is None
    return count


def test_host_reads_of_a_training_step_do_not_grow_with_decoder_layers():
    counts = {layers: host_reads_of_one_step(layers) for layers in (3, 6)}
    (reads3, scalars3), (reads6, scalars6) = counts[3], counts[6]
    detail = f"3 layers: {dict(reads3.where)}\n6 layers: {dict(reads6.where)}"
    assert reads3.total == reads6.total, detail
    assert scalars3 == scalars6, detail
    assert reads6.total <= MAX_HOST_READS, detail
    assert scalars6 <= MAX_HOST_READS, detail


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_syncs_of_a_training_step_do_not_grow_with_decoder_layers():
    counts = {}
    for layers in (3, 6):
        step = tiny_train_step(layers, "cuda")
        for _ in counted_steps(step):
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step.run_step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        counts[layers] = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    print(f"CUDA syncs per training step: 3 layers {len(counts[3])}, 6 layers {len(counts[6])}")
    assert len(counts[3]) == len(counts[6]), counts
    assert len(counts[6]) <= MAX_CUDA_SYNCS, counts
