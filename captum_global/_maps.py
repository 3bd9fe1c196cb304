"""Small tensor operations on heat maps, shared by methods, metrics and figures.

A heat map here is a ``[N, H, W]`` tensor (one map per example). Attributions
that follow Captum's shape rules (``[N, C, H, W]`` input-shaped, or
``[N, 1, h, w]`` layer-shaped) are reduced to heat maps by ``to_heatmap``.
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._checks import check_int
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError

__all__ = ["to_heatmap", "minmax_normalise", "resize_maps", "otsu_threshold", "NO_SIGNAL_RTOL"]

_EPS = 1e-12


def to_heatmap(attributions: Union[Tensor, Tuple[Tensor, ...]], sign: str = "positive") -> Tensor:
    """Collapse an attribution to one ``[N, H, W]`` map per example.

    Args:
        attributions: ``[N, C, H, W]`` or ``[N, H, W]`` tensor, or a 1-tuple of
            one (Captum's tuple form).
        sign: how to treat negative evidence after summing over channels:
            ``"positive"`` keeps the positive part (what supports the class),
            ``"absolute"`` takes magnitudes, ``"all"`` keeps the signed sum.
    """
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise InvalidArgumentError(
                f"attributions must be one tensor or a 1-tuple for a heat map, got a {len(attributions)}-tuple"
            )
        attributions = attributions[0]
    if not isinstance(attributions, Tensor):
        raise InvalidArgumentTypeError(
            f"attributions must be a tensor [N, C, H, W] or [N, H, W] (or a 1-tuple of one), "
            f"got {type(attributions).__name__}"
        )
    if attributions.dim() == 4:
        maps = attributions.sum(dim=1)
    elif attributions.dim() == 3:
        maps = attributions
    else:
        raise InvalidArgumentError(
            f"attributions must have shape [N, C, H, W] or [N, H, W], got {tuple(attributions.shape)}"
        )
    if sign == "positive":
        return maps.clamp(min=0)
    if sign == "absolute":
        return maps.abs()
    if sign == "all":
        return maps
    raise InvalidArgumentError(f"sign must be 'positive', 'absolute' or 'all', got {sign!r}")


# A map whose values differ by less than this share of their magnitude holds
# float round-off, not evidence: stretching it to [0, 1] would show noise as
# full signal. float32 round-off of sums of a few thousand terms stays below it.
NO_SIGNAL_RTOL = 1e-5


def minmax_normalise(maps: Tensor, start_dim: int = 1) -> Tensor:
    """Min-max normalise each example (dims from ``start_dim`` on) to [0, 1].

    A map with no signal (constant, or varying only by float round-off:
    a spread below ``NO_SIGNAL_RTOL`` of its magnitude) becomes all zeros
    rather than NaN or stretched noise: it carries no ranking. A map holding
    NaN or infinity raises :class:`~captum_global.errors.NonFiniteOutputError`
    (it would otherwise read as such an empty map).
    """
    flat = maps.flatten(start_dim)
    non_finite = ~torch.isfinite(flat)
    if bool(non_finite.any()):
        bad = non_finite.flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise NonFiniteOutputError(
            f"maps {bad[:8]} hold NaN or infinite values; a map computed from them would read as 'no evidence'")
    low = flat.min(dim=-1, keepdim=True).values
    high = flat.max(dim=-1, keepdim=True).values
    span = high - low
    # relative to the map's magnitude only: a model whose scores are all tiny (1e-13) still gives its map;
    # the dtype's smallest normal number keeps an all-zero map at zero
    tiny = torch.finfo(flat.dtype).tiny if flat.is_floating_point() else _EPS
    floor = (NO_SIGNAL_RTOL * torch.maximum(low.abs(), high.abs())).clamp(min=tiny)
    signal = span > floor
    out = torch.where(signal, (flat - low) / torch.where(signal, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


def resize_maps(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[N, K, h, w]`` maps to ``size`` (align_corners=False).

    align_corners=False is Captum's ``LayerAttribution.interpolate`` default,
    so our upsampled maps line up with Captum's layer attributions.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def otsu_threshold(maps: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold of each map in ``[N, ...]`` (values assumed in [0, 1]).

    Returns a ``[N]`` tensor ``t``: the histogram level that maximises the
    between-class variance; the foreground is ``maps > t``. Agrees with
    scikit-image's ``threshold_otsu(nbins=256)`` up to binning. Computed
    batched on the maps' device. A map holding NaN raises
    :class:`~captum_global.errors.NonFiniteOutputError` (it has no histogram).
    """
    bins = check_int(bins, "bins", minimum=2)
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    nan = torch.isnan(flat)
    if bool(nan.any()):
        bad = nan.any(dim=1).nonzero().flatten().tolist()
        raise NonFiniteOutputError(f"maps {bad[:8]} hold NaN values; they have no Otsu threshold")
    flat = flat.clamp(0, 1)
    idx = (flat * (bins - 1)).round().long()
    hist = torch.zeros(n, bins, device=maps.device, dtype=torch.float64)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    prob = hist / hist.sum(dim=1, keepdim=True)
    levels = torch.arange(bins, device=maps.device, dtype=torch.float64) / (bins - 1)
    weight_low = prob.cumsum(dim=1)
    mean_low = (prob * levels).cumsum(dim=1)
    mean_total = mean_low[:, -1:]
    weight_high = 1 - weight_low
    between = (mean_total * weight_low - mean_low) ** 2 / (weight_low * weight_high).clamp(min=_EPS)
    between = torch.where((weight_low > 0) & (weight_high > 0), between, torch.zeros_like(between))
    return levels[between.argmax(dim=1)].to(maps.dtype)
