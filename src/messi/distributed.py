"""Several processes (``torchrun`` / ``accelerate launch``): who is main, waiting, sending state.

A launcher starts one process per device with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set.
messi's rule under a launcher: expensive one-off work (the projective clustering, calibration) and
every file write happen on the main process (rank 0); the others receive its result through the
process group (no shared filesystem needed) and all of them train together under DDP.

Everything here is a no-op in a single process, so callers never branch on "distributed".
Nothing is pickled: settings travel as JSON bytes, weights as tensors.
"""

from __future__ import annotations

import atexit
import json
import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import MessiError


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process prints and writes files (rank 0)."""
    return rank() == 0


def has_accelerator() -> bool:
    """Whether a GPU-like device is present (else the processes train on CPU with gloo)."""
    return torch.accelerator.current_accelerator() is not None


def init() -> None:
    """Join the launcher's process group once (nccl on GPUs, gloo on CPUs); no-op alone.

    accelerate's ``PartialState`` picks the backend and device; on a machine without an
    accelerator it must be told ``cpu=True``, or it silently runs every rank on its own.
    """
    if world_size() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not has_accelerator())
        atexit.register(leave)


def leave() -> None:
    """Leave the process group (registered at exit by :func:`init`).

    A process that exits with the group still open may abort in the communication backend's
    threads ("terminate called without an active exception"), failing a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    # nccl only moves tensors that live on this process's GPU
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def broadcast_json(value=None):
    """The main process's JSON-able ``value``, on every process (others pass anything)."""
    if not active():
        return value
    device = _comm_device()
    data = json.dumps(value).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if is_main()
           else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, src=0)
    return json.loads(buf.cpu().numpy().tobytes()) if not is_main() else value


def main_answers(question):
    """``question()`` asked on the main process only (e.g. "is this file there?", which only it
    may read), its JSON answer given to every process."""
    return broadcast_json(question() if is_main() else None)


def main_checks(check) -> None:
    """Run ``check()`` (which raises MessiError on bad input) on the main process only, and raise
    its MessiError on every process: a refusal ends the whole run with the same one line, never
    one process's error followed by the others' timeouts."""
    def problem():
        try:
            check()
        except MessiError as e:
            return str(e)
        return None

    message = main_answers(problem)
    if message is not None:
        raise MessiError(message)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the processes (what DDP does), so that
    every process takes the same optimizer step; no-op alone."""
    if not active():
        return
    device, n = _comm_device(), world_size()
    for p in params:
        if p.grad is not None:
            grad = p.grad.to(device)
            dist.all_reduce(grad)
            p.grad.copy_(grad.div_(n).to(p.grad.device))


def mean_scalar(value: float) -> float:
    """The mean of ``value`` over the processes (a loss to report); ``value`` alone."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def broadcast_module(module: nn.Module) -> nn.Module:
    """Overwrite every parameter and buffer of ``module`` with the main process's, in place.

    All processes must hold a module of the same structure (names, shapes, dtypes).
    """
    if active():
        broadcast_tensors([t for _, t in sorted(module.state_dict(keep_vars=True).items())])
    return module


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor with the main process's, in place (same shapes and dtypes on every
    process); no-op alone."""
    if not active():
        return
    device = _comm_device()
    with torch.no_grad():
        for t in tensors:
            # sent as raw bytes: every dtype travels, whatever the backend supports
            data = t.data
            raw = data.contiguous().reshape(-1).view(torch.uint8).to(device)
            dist.broadcast(raw, src=0)
            if not is_main():
                data.copy_(raw.view(data.dtype).reshape(data.shape))

