"""Cost measurements: model evaluations, peak memory, forward-pass time.

- Evaluations: a forward pre-hook on the model adds the batch size of every
  call while a method runs, so Captum (which calls ``forward_func``),
  pytorch_grad_cam (``model(x)``) and our own methods are counted alike.
  Backward passes are not counted.
- Peak memory on CUDA: ``torch.cuda.max_memory_allocated`` above the
  allocation at the start. On CPU torch allocates outside Python (so
  ``tracemalloc`` cannot see tensors): a thread samples the resident set
  size (``/proc/self/statm``) every 2 ms and reports the peak above the
  start; elsewhere it falls back to the ``ru_maxrss`` delta. CPU numbers are
  approximate: the allocator may reuse memory freed by earlier methods.
"""
import os
import resource
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List

import torch
from torch import Tensor, nn

__all__ = ["EvaluationCounter", "peak_memory", "forward_time", "Measurement"]


class EvaluationCounter:
    """Counts examples through ``model`` while ``active`` (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.n_examples = 0
        self.active = False
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if self.active and args and isinstance(args[0], Tensor):
            self.n_examples += int(args[0].shape[0])

    def close(self) -> None:
        self._handle.remove()

    @contextmanager
    def counting(self) -> Iterator["EvaluationCounter"]:
        self.active = True
        try:
            yield self
        finally:
            self.active = False


class Measurement:
    """Filled by :func:`peak_memory`: ``peak_mb`` and ``how``."""

    peak_mb: float = 0.0
    how: str = ""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Measurement]:
    """Peak extra memory (MB) used inside the block."""
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.peak_mb = (torch.cuda.max_memory_allocated(device) - start) / 2**20
            result.how = "torch.cuda.max_memory_allocated"
        return
    if os.path.exists("/proc/self/statm"):
        start = _rss_bytes()
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                stop.wait(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], _rss_bytes())
            result.peak_mb = (peak[0] - start) / 2**20
            result.how = "sampled RSS peak above start (CPU)"
        return
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        yield result
    finally:
        result.peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
        result.how = "ru_maxrss delta (CPU)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_time(model: Callable, batches: List[Tensor], device: torch.device, repeats: int = 5) -> float:
    """Seconds per image of one plain forward pass (no_grad), same batches as the methods.

    One warm-up pass, then the fastest of ``repeats`` sweeps over all
    batches: on a shared machine the minimum is the least noisy estimate of
    the model's own cost.
    """
    n = sum(b.shape[0] for b in batches)
    with torch.no_grad():
        model(batches[0])
        sweeps = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for b in batches:
                model(b)
            _sync(device)
            sweeps.append(time.perf_counter() - t0)
    return min(sweeps) / n
