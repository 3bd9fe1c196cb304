"""The trigger search behind :func:`scan_for_backdoor` (private).

Every class gets a stamp: a mask on a coarse grid of cells (``cell`` x
``cell`` pixels share one value) and a full-resolution pattern, both
tanh-parametrised as in Neural Cleanse. All classes are optimised together
(one batch of ``classes x samples`` stamped inputs per step, the same
samples for every class), each with its own l1 cost that follows Neural
Cleanse's schedule. A class's statistic is the smallest mask (l1, in
pixels) whose stamp flipped an epoch's inputs to it at the success target.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global._checks import check_finite_output
from captum_global._seeding import draw_uniform
from captum_global.backdoor._common import stamp

# tanh keeps values strictly inside (0, 1): atanh of the initial values stays finite.
TANH_SCALE = 2 - 1e-6


@dataclass
class ReverseResult:
    """Per class, rows in the order of the classes."""

    mask_l1: Tensor       # [K] smallest l1 (pixels) that reached the target; inf if never
    masks: Tensor         # [K, H, W]
    patterns: Tensor      # [K, C, H, W]
    epochs: int
    evaluations: int


def from_free(free: Tensor) -> Tensor:
    return torch.tanh(free) / TANH_SCALE + 0.5


def to_free(values: Tensor) -> Tensor:
    return torch.atanh((values - 0.5) * TANH_SCALE)


def upsample_cells(cells: Tensor, cell: int, size: Tuple[int, int]) -> Tensor:
    """``[K, 1, gh, gw]`` cell values to a ``[K, 1, H, W]`` pixel mask."""
    if cell > 1:
        cells = F.interpolate(cells, scale_factor=cell, mode="nearest")
    return cells[:, :, : size[0], : size[1]]


def reverse_triggers(
    model: nn.Module,
    classes: Sequence[int],
    batches: Callable[[int], Sequence[Tensor]],
    shape: Tuple[int, int, int],
    cell: int,
    n_epochs: int,
    lr: float,
    init_cost: float,
    cost_multiplier: float,
    patience: int,
    early_stop_patience: int,
    attack_success: float,
    value_range: Tuple[float, float],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    progress: Optional[Callable[[], None]] = None,
    per_image: Optional[Tensor] = None,
    confidence: Optional[float] = None,
) -> ReverseResult:
    """Optimise every class's stamp; ``batches(epoch)`` lists that epoch's input batches.

    With ``per_image`` (``[M, C, H, W]``) every class gets one stamp *per
    image* instead (rows ``class x image``, class-major), each judged on its
    own image only: the cost of reaching the class without a shared
    trigger. ``batches`` then only sets the number of steps per round.
    With ``confidence``, an input counts as reached only when the class's
    softmax probability is at least that (instead of being the arg max).
    """
    k = len(classes)
    c, h, w = shape
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    lo, hi = value_range
    rows = k if per_image is None else k * per_image.shape[0]
    mask_free = to_free(draw_uniform((rows, 1, gh, gw), generator) * 0.98 + 0.01).to(device, dtype)
    pattern_free = to_free(draw_uniform((rows, c, h, w), generator) * 0.98 + 0.01).to(device, dtype)
    mask_free.requires_grad_(True)
    pattern_free.requires_grad_(True)
    optimiser = torch.optim.Adam([mask_free, pattern_free], lr=lr, betas=(0.5, 0.9))
    labels_all = torch.tensor(list(classes), device=device)
    if per_image is not None:
        labels_all = labels_all.repeat_interleave(per_image.shape[0])
        tiled = per_image.repeat(k, 1, 1, 1)
    k = rows

    cost = torch.zeros(k, dtype=torch.float64)
    cost_set = torch.zeros(k, dtype=torch.long)
    up = torch.zeros(k, dtype=torch.long)
    down = torch.zeros(k, dtype=torch.long)
    went_up = torch.zeros(k, dtype=torch.bool)
    went_down = torch.zeros(k, dtype=torch.bool)
    best = torch.full((k,), math.inf, dtype=torch.float64)
    best_mask = torch.zeros(k, h, w, dtype=dtype, device=device)
    best_pattern = torch.zeros(k, c, h, w, dtype=dtype, device=device)
    stale = torch.zeros(k, dtype=torch.long)
    evaluations, epoch = 0, 0

    def current() -> Tuple[Tensor, Tensor]:
        mask = upsample_cells(from_free(mask_free), cell, (h, w))
        return mask, lo + (hi - lo) * from_free(pattern_free)

    for epoch in range(1, n_epochs + 1):
        hits = torch.zeros(k)
        seen, l1_sum, n_batches = 0, torch.zeros(k, dtype=torch.float64), 0
        for x in batches(epoch):
            b = x.shape[0] if per_image is None else 1
            labels = labels_all.repeat_interleave(b)
            with torch.enable_grad():
                mask, pattern = current()
                if per_image is None:
                    stamped = stamp(x, mask, pattern).reshape(k * b, c, h, w)
                else:
                    stamped = (1 - mask) * tiled + mask * pattern
                logits = model(stamped)
                check_finite_output(logits.detach(), "scan_for_backdoor", f"epoch {epoch}")
                ce = F.cross_entropy(logits, labels, reduction="none").view(k, b).mean(1)
                l1 = mask.flatten(1).sum(1)
                loss = (ce + cost.to(ce) * l1).sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            evaluations += k * b
            hits += _reached(logits.detach(), labels, confidence).view(k, b).float().sum(1).cpu()
            seen += b
            l1_sum += l1.detach().double().cpu()
            n_batches += 1
        rate, mean_l1 = hits / seen, l1_sum / n_batches
        reached = rate >= attack_success
        improved = reached & (mean_l1 < best)
        if bool(improved.any()):
            mask, pattern = current()
            rows = improved.nonzero().flatten()
            best[rows] = mean_l1[rows]
            best_mask[rows] = mask.detach()[rows, 0]
            best_pattern[rows] = pattern.detach()[rows]
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        # Neural Cleanse's cost schedule, class by class
        unset = cost == 0
        cost_set = torch.where(unset & reached, cost_set + 1, torch.where(unset, 0, cost_set))
        start = unset & (cost_set >= patience)
        cost = torch.where(start, torch.full_like(cost, init_cost), cost)
        running = ~unset
        up = torch.where(running & reached, up + 1, torch.where(running, 0, up))
        down = torch.where(running & ~reached, down + 1, torch.where(running, 0, down))
        raise_cost = running & (up >= patience)
        lower_cost = running & ~raise_cost & (down >= patience)
        cost = torch.where(raise_cost, cost * cost_multiplier, cost)
        cost = torch.where(lower_cost, cost / cost_multiplier ** 1.5, cost)
        went_up |= raise_cost
        went_down |= lower_cost
        up = torch.where(raise_cost, 0, up)
        down = torch.where(lower_cost, 0, down)
        if progress is not None:
            progress()
        done = torch.isfinite(best) & (stale >= early_stop_patience) & went_up & went_down
        if bool(done.all()):
            break
    never = ~torch.isfinite(best)
    if bool(never.any()):
        mask, pattern = current()
        best_mask[never] = mask.detach()[never, 0]
        best_pattern[never] = pattern.detach()[never]
    return ReverseResult(best.float(), best_mask, best_pattern, epoch, evaluations)


def _reached(logits: Tensor, labels: Tensor, confidence: Optional[float]) -> Tensor:
    """Whether each stamped input reached its label: the arg max, or a softmax
    probability of at least ``confidence``."""
    if confidence is None:
        return logits.argmax(1) == labels
    return logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1) >= confidence
