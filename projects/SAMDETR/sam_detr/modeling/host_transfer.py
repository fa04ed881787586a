"""Copies between the device and the host that the training step makes on purpose, each one
transfer for a whole batch: a copy to the host is the step's only kind of wait on the device,
so the matcher copies the costs of all decoder layers at once (:func:`to_host`) and sends all
matched indices back at once (:func:`to_device`). On CUDA both go through page-locked host
memory without blocking; on the CPU they are no-ops."""

import torch

__all__ = ["to_device", "to_host"]


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the host. From CUDA: one non-blocking copy into page-locked memory, then
    one wait on the current stream (the only wait: the values are read right after)."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host ``tensor`` on ``device``; to CUDA, a non-blocking copy from page-locked memory
    (the host never waits)."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
