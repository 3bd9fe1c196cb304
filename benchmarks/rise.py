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
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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

    Args:
        forward_func (Callable): the model, returning ``[N, classes]`` logits
            (softmax is applied) or probabilities (``apply_softmax=False``).
        n_masks (int): number of masks. Default: 4000 (the paper's).
        s (int): grid cells per side. Default: 7.
        p1 (float): probability that a cell is kept. Default: 0.5.
        batch_size (int): masked inputs per model call. Default: 64.
        seed (int): mask seed. Default: 0.

    Examples::

        >>> import torch
        >>> from benchmarks.rise import RISE
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        >>> RISE(model, n_masks=50).attribute(torch.rand(2, 3, 16, 16), target=[0, 3]).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, forward_func: Callable, n_masks: int = 4000, s: int = 7, p1: float = 0.5,
                 batch_size: int = 64, seed: int = 0, apply_softmax: bool = True) -> None:
        if n_masks < 1 or s < 1 or not 0 < p1 <= 1 or batch_size < 1:
            raise ValueError("n_masks, s and batch_size must be positive and p1 in (0, 1]")
        self.forward_func, self.n_masks, self.s, self.p1 = forward_func, n_masks, s, p1
        self.batch_size, self.seed, self.apply_softmax = batch_size, seed, apply_softmax

    @torch.no_grad()
    def attribute(self, inputs: Tensor, target=None) -> Tensor:
        """RISE maps ``[N, 1, H, W]`` for ``target`` (int, list or tensor)."""
        n, _, h, w = inputs.shape
        targets = torch.as_tensor(target, dtype=torch.long, device=inputs.device).reshape(-1)
        if targets.numel() == 1:
            targets = targets.expand(n)
        if targets.numel() != n:
            raise ValueError(f"target must be an int or hold one class per example ({n}), got {targets.numel()}")
        saliency = torch.zeros(n, 1, h, w, device=inputs.device)
        for chunk, start in enumerate(range(0, self.n_masks, _CHUNK)):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)
            masks = rise_masks(min(_CHUNK, self.n_masks - start), h, w, self.s, self.p1, g).to(inputs.device)
            m = masks.shape[0]
            # Flat index over (mask, example) pairs, scored batch_size at a time.
            for i in range(0, m * n, self.batch_size):
                flat = torch.arange(i, min(i + self.batch_size, m * n), device=inputs.device)
                mi, ex = flat // n, flat % n
                out = self.forward_func(inputs[ex] * masks[mi])
                prob = out.softmax(1) if self.apply_softmax else out
                p = prob.gather(1, targets[ex].unsqueeze(1)).view(-1, 1, 1, 1)
                saliency.index_add_(0, ex, p * masks[mi])
        return saliency / (self.n_masks * self.p1)
