"""Seeds and random state: one rule for every method (private).

The rule: a method's randomness comes from its ``seed`` argument alone, and
the caller's global random state (torch's CPU and CUDA generators,
Python's ``random``, NumPy's global generator) is exactly as it was after
the call, also when an error is raised. Our own draws use a private
``torch.Generator``; code we do not control that draws from the global
state (a DataLoader starting its iteration, a user's augmentation) runs
inside :func:`seeded_global_rng`, which seeds the global state from
``seed`` for the block and restores the caller's afterwards. Our draws are
made in float32 (:func:`draw_uniform`, :func:`draw_normal`) and cast afterwards, so
one seed gives the same masks, noise and starting points whatever the dtype
of the inputs or model and whatever ``torch.get_default_dtype()`` is.
"""
import random
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from captum_global._checks import check_int

__all__ = ["check_seed", "make_generator", "draw_uniform", "draw_normal", "preserved_global_rng", "seeded_global_rng",
           "cuda_devices"]

_MAX_SEED = 2**63 - 1


def check_seed(seed: Any, argument: str = "seed", allow_none: bool = True) -> int:
    """A seed as an int in ``[0, 2**63)``.

    ``None`` (when allowed) draws a fresh seed from the operating system's
    entropy without touching any global generator.
    """
    if seed is None:
        if not allow_none:
            check_int(seed, argument)  # raises the type error naming the argument
        return int(torch.Generator().seed() % _MAX_SEED)
    return check_int(seed, argument, minimum=0, maximum=_MAX_SEED)


def make_generator(seed: int, device: Any = "cpu") -> torch.Generator:
    """A private generator seeded with ``seed`` on ``device``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def draw_uniform(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Draws from U[0, 1) of ``shape``, always in float32: ``torch.rand`` draws in the default dtype, and a
    float64 draw consumes the generator differently (other values for the same seed). Cast the result."""
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32)


def draw_normal(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Draws from N(0, 1) of ``shape``, always in float32 (see :func:`draw_uniform`)."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def cuda_devices(*things: Any) -> List[int]:
    """CUDA device indices used by tensors, modules or devices among ``things``."""
    found = set()
    for thing in things:
        if isinstance(thing, nn.Module):
            devices: Iterable[torch.device] = (t.device for t in list(thing.parameters()) + list(thing.buffers()))
        elif isinstance(thing, Tensor):
            devices = (thing.device,)
        elif isinstance(thing, torch.device):
            devices = (thing,)
        else:
            continue
        for d in devices:
            if d.type == "cuda":
                found.add(d.index if d.index is not None else torch.cuda.current_device())
    return sorted(found)


@contextmanager
def preserved_global_rng(devices: Optional[List[int]] = None) -> Iterator[None]:
    """Restore torch's (CPU and the given CUDA devices'), Python's and NumPy's global RNG on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(devices or [])):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def seeded_global_rng(seed: int, devices: Optional[List[int]] = None) -> Iterator[None]:
    """Seed the global RNGs from ``seed`` for the block; the caller's state comes back on exit."""
    with preserved_global_rng(devices):
        # Not torch.manual_seed: it would also reseed CUDA devices that were not forked.
        torch.random.default_generator.manual_seed(int(seed))
        for index in devices or []:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        random.seed(int(seed))
        np.random.seed(int(seed) % 2**32)
        yield
