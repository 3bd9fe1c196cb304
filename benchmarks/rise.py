"""RISE (Petsiuk, Das, Saenko, BMVC 2018) as a benchmark baseline.

This is a baseline implementation written for the benchmark, not a
captum_global method: it follows the paper's recipe and defaults so that the
table compares SISE with the perturbation method it builds on.

Recipe: draw ``n_masks`` binary ``s x s`` grids (each cell kept with
probability ``p1``), upsample each bilinearly to ``(s + 1) * ceil(H / s)``
pixels, crop an ``H x W`` window at a random shift (so mask edges are not
aligned with the grid), and use the result as a smooth mask ``M_i``. The
saliency of class ``c`` is ``sum_i P_c(I * M_i) M_i / (n_masks * p1)``, with
``P_c`` the softmax probability. Paper defaults: 4000 masks, ``s = 7``,
``p1 = 0.5``.

Masks come in fixed chunks drawn from generators seeded by ``seed`` and the
chunk index, so the map does not depend on ``batch_size`` and never needs
all ``n_masks`` full-size masks in memory at once.
"""
import math
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._checks import check_int, check_number, check_tensor
from captum_global._model_state import preserved_model_state
from captum_global._scoring import iter_scores
from captum_global._seeding import check_seed, make_generator
from captum_global._targets import parse_target
from captum_global.errors import InvalidArgumentError

__all__ = ["RISE", "rise_masks"]

_CHUNK = 100  # masks drawn per generator; fixed so results never depend on batching


def rise_masks(n: int, height: int, width: int, s: int = 7, p1: float = 0.5,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` smooth RISE masks ``[n, 1, height, width]`` with values in [0, 1]."""
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    grid = (torch.rand(n, 1, s, s, generator=generator) < p1).float()
    up = F.interpolate(grid, size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (n,), generator=generator)
    dx = torch.randint(0, cell_w, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(height)).view(n, 1, height, 1).expand(n, 1, height, width)
    cols = (dx.view(n, 1) + torch.arange(width)).view(n, 1, 1, width).expand(n, 1, height, width)
    flat = up.flatten(2)
    index = (rows * up.shape[-1] + cols).flatten(2)
    return flat.gather(2, index).view(n, 1, height, width)


class RISE:
    r"""Randomized Input Sampling for Explanation (baseline implementation).

    The masked inputs are scored with the package's chunked scorer, so the
    target rules (Captum's), the handling of per-example forward arguments
    and the refusal of NaN model outputs are those of every other method;
    the model runs in eval mode and is handed back as found.

    Args:
        forward_func (Callable): the model, returning ``[N, classes]`` logits
            (softmax is applied) or probabilities (``apply_softmax=False``).
        n_masks (int): number of masks. Default: 4000 (the paper's).
        s (int): grid cells per side. Default: 7.
        p1 (float): probability that a cell is kept, in (0, 1]. Default: 0.5.
        batch_size (int): masked inputs per model call; never changes the
            result. Default: 64.
        seed (int): mask seed. Default: 0.
        apply_softmax (bool): score the softmax probability (the paper) or
            the raw output. Default: True.

    Examples::

        >>> import torch
        >>> from benchmarks.rise import RISE
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        >>> RISE(model, n_masks=50).attribute(torch.rand(2, 3, 16, 16), target=[0, 3]).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, forward_func: Callable, n_masks: int = 4000, s: int = 7, p1: float = 0.5,
                 batch_size: int = 64, seed: int = 0, apply_softmax: bool = True) -> None:
        if not callable(forward_func):
            raise InvalidArgumentError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self.n_masks = check_int(n_masks, "n_masks", minimum=1)
        self.s = check_int(s, "s", minimum=1)
        self.p1 = check_number(p1, "p1", 0.0, 1.0, min_inclusive=False)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.seed = check_seed(seed, allow_none=False)
        self.apply_softmax = bool(apply_softmax)

    def masks(self, height: int, width: int) -> Iterator[Tensor]:
        """The masks, chunk by chunk (``[m, 1, height, width]``, at most 100 each), in scoring order."""
        for chunk, start in enumerate(range(0, self.n_masks, _CHUNK)):
            generator = make_generator(self.seed * 1_000_003 + chunk)
            yield rise_masks(min(_CHUNK, self.n_masks - start), height, width, self.s, self.p1, generator)

    def attribute(self, inputs: Tensor, target: Any = None, additional_forward_args: Any = None) -> Tensor:
        """RISE maps ``[N, 1, H, W]`` for ``target`` (any Captum target format)."""
        x = check_tensor(inputs, "inputs", dims=(4,), floating=True).detach()
        n, _, h, w = x.shape
        targets = parse_target(target, n)
        transform = (lambda out: out.softmax(dim=1)) if self.apply_softmax else None
        saliency = torch.zeros(n, 1, h, w, device=x.device)
        with preserved_model_state(self.forward_func):
            for masks in self.masks(h, w):
                masks = masks.to(x.device, x.dtype)

                # Flat index over (mask, example) pairs, example fastest.
                def build(flat: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
                    flat = flat.to(x.device)
                    mask_index, example = flat // n, flat % n
                    return x[example] * masks[mask_index], example, mask_index

                for chunk in iter_scores(self.forward_func, masks.shape[0] * n, build, targets,
                                         additional_forward_args, transform, chunk_size=self.batch_size,
                                         chunk_argument="batch_size", what="RISE"):
                    weighted = chunk.scores.view(-1, 1, 1, 1).to(saliency.dtype) * masks[chunk.payload]
                    saliency.index_add_(0, chunk.examples, weighted.to(saliency.dtype))
        return saliency / (self.n_masks * self.p1)
