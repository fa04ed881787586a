"""torchrun entry point of test_distributed.py: train_net.py's ``main``, after which every rank
saves its model weights to ``$SAM_DETR_TEST_WEIGHTS_DIR/rank<r>.pth`` (outside OUTPUT_DIR) so
that the test can compare the ranks. With ``$SAM_DETR_TEST_NAN_RANK`` set, that rank's loss is
NaN at iteration ``NAN_ITER`` (the other ranks' losses are finite)."""

import os

import detectron2.utils.comm as comm
import torch
from sam_detr.engine.launch import launch_job

import train_net

WEIGHTS_DIR_ENV = "SAM_DETR_TEST_WEIGHTS_DIR"
NAN_RANK_ENV = "SAM_DETR_TEST_NAN_RANK"
NAN_ITER = 1


class RecordingTrainer(train_net.Trainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        if os.environ.get(NAN_RANK_ENV) == str(comm.get_rank()):
            model = self.model.module if hasattr(self.model, "module") else self.model
            model.register_forward_hook(self._nan_loss)

    def _nan_loss(self, module, inputs, losses):
        if self.iter == NAN_ITER:
            return {k: v * float("nan") for k, v in losses.items()}
        return None

    def train(self):
        results = super().train()
        model = self.model.module if hasattr(self.model, "module") else self.model
        path = os.path.join(os.environ[WEIGHTS_DIR_ENV], f"rank{comm.get_rank()}.pth")
        torch.save({"model": model.state_dict(), "world_size": comm.get_world_size()}, path)
        return results


if __name__ == "__main__":
    train_net.Trainer = RecordingTrainer
    launch_job(train_net.main, train_net.argument_parser().parse_args())
