"""How far a map moved: the fooling losses, their test statistics and rank correlation.

All functions take heat maps ``[N, H, W]`` (or Captum-shaped attributions:
``[N, C, H, W]`` is summed over channels, negative evidence dropped) and
return one value per example. Maps are min-max normalised per example first
(the package's no-signal rule: a map without signal is all zeros), so maps
of different methods and scales are compared on the same footing.

The same functions serve as the fine-tuning penalties (they are
differentiable almost everywhere) and as the evaluation statistics.

Fooling success (after Heo, Joo and Moon, NeurIPS 2019): the share of
images whose per-image statistic passes a threshold. The statistics and
thresholds used by :func:`fooling_success` (``SUCCESS``):

- ``location``: :func:`location_loss` (mean squared distance of the
  normalised map to the target region's indicator) below 0.2;
- ``top_k``: :func:`top_k_overlap` (share of the original map's top-k
  pixels still in the new map's top-k) below 0.3;
- ``center_mass``: :func:`center_of_mass_shift` (distance between the two
  maps' centres of mass, in image sides) above 0.25;
- ``active``: the map for class ``c1`` ranks pixels more like the original
  map for ``c2`` than like its own original map (Spearman, see
  :func:`rank_correlation`). The statistic is the swap margin
  ``(rho(h1', h2) - rho(h1', h1)) / (1 - rho(h1, h2))``: 1 for a perfect
  swap, -1 for an unchanged map, success above 0. Where the two original
  maps already rank pixels alike (``rho(h1, h2) > 0.8``) a swap cannot be
  told from noise: the statistic is NaN and the image counts as not fooled.
"""
from types import MappingProxyType
from typing import Mapping, Tuple, Union

import torch
from torch import Tensor

from captum_global._checks import check_choice, check_finite, check_int, check_number
from captum_global._maps import minmax_normalise, to_heatmap
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "normalised_maps",
    "border_region",
    "location_loss",
    "top_k_region",
    "top_k_mass",
    "top_k_overlap",
    "center_of_mass",
    "center_of_mass_shift",
    "rank_correlation",
    "SUCCESS",
    "fooling_statistic",
    "fooling_success",
]

MapLike = Union[Tensor, Tuple[Tensor, ...]]

#: ``fooling kind -> (statistic name, threshold, direction)``; success is
#: ``statistic < threshold`` for ``"below"`` and ``> threshold`` for ``"above"``.
SUCCESS: Mapping[str, Tuple[str, float, str]] = MappingProxyType({  # read-only: one set of thresholds for all
    "location": ("location_loss", 0.2, "below"),
    "top_k": ("top_k_overlap", 0.3, "below"),
    "center_mass": ("center_of_mass_shift", 0.25, "above"),
    "active": ("swap_margin", 0.0, "above"),
})
#: original class maps that correlate above this are too alike to show a swap
SWAPPABLE_BELOW = 0.8


def normalised_maps(maps: MapLike, argument: str = "maps") -> Tensor:
    """``[N, H, W]`` non-negative maps, each min-max normalised to [0, 1].

    NaN or infinite values are refused (naming ``argument``): min-max
    normalisation would turn them into a silent 0 or NaN statistic.
    """
    inner = maps[0] if isinstance(maps, tuple) and len(maps) == 1 else maps
    if not isinstance(inner, Tensor):
        raise InvalidArgumentTypeError(f"{argument} must be a tensor [N, H, W] or [N, C, H, W], "
                                       f"got {type(maps).__name__}")
    if inner.dim() not in (3, 4):
        raise InvalidArgumentError(f"{argument} must have shape [N, H, W] or [N, C, H, W], got {tuple(inner.shape)}")
    if inner.dtype == torch.bool or inner.is_complex():
        raise InvalidArgumentTypeError(f"{argument} must hold real numbers, got dtype {inner.dtype}")
    check_finite(inner, argument)
    if inner.dim() == 3:
        return minmax_normalise(inner.clamp(min=0))
    return minmax_normalise(to_heatmap(inner, sign="positive"))


def border_region(height: int, width: int, width_fraction: float = 0.125) -> Tensor:
    """``[H, W]`` bool frame along the image border, ``width_fraction`` of the side thick.

    Examples::

        >>> from captum_global.robustness import border_region
        >>> border_region(4, 4, 0.25).int()
        tensor([[1, 1, 1, 1],
                [1, 0, 0, 1],
                [1, 0, 0, 1],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    height = check_int(height, "height", minimum=1)
    width = check_int(width, "width", minimum=1)
    check_number(width_fraction, "width_fraction", 0.0, 0.5, min_inclusive=False, max_inclusive=False)
    t = max(1, int(round(width_fraction * min(height, width))))
    region = torch.ones(height, width, dtype=torch.bool)
    region[t:height - t, t:width - t] = False
    return region


def location_loss(maps: MapLike, region: Tensor) -> Tensor:
    r"""``mean_pixels (h - region)^2`` of each normalised map: 0 when the map is exactly the region.

    Examples::

        >>> import torch
        >>> from captum_global.robustness import location_loss
        >>> region = torch.tensor([[True, False], [False, False]])
        >>> location_loss(torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]), region)
        tensor([0.0625])
    """
    h = normalised_maps(maps)
    region = _region(region, h)
    return ((h - region.to(h.dtype)) ** 2).flatten(1).mean(dim=1)


def top_k_region(maps: MapLike, fraction: float = 0.1) -> Tensor:
    """``[N, H, W]`` bool: each map's ``fraction`` highest pixels (``k = max(1, round(fraction * H * W))``).

    Ties are broken by position: of equal values the first in raster order
    are taken (a stable sort, so the region never depends on the machine or
    the device; a map without signal selects its first ``k`` pixels).

    Examples::

        >>> import torch
        >>> from captum_global.robustness import top_k_region
        >>> top_k_region(torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]), 0.5).int()
        tensor([[[0, 1],
                 [1, 0]]], dtype=torch.int32)
    """
    check_number(fraction, "fraction", 0.0, 1.0, min_inclusive=False)
    return _top_k(normalised_maps(maps), fraction)


def _top_k(h: Tensor, fraction: float) -> Tensor:
    """:func:`top_k_region` of normalised ``[N, H, W]`` maps ``h``."""
    flat = h.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    region = torch.zeros_like(flat, dtype=torch.bool)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    region.scatter_(1, order[:, :k], True)
    return region.view(h.shape)


def top_k_mass(maps: MapLike, region: Tensor) -> Tensor:
    """Share of each normalised map's mass on ``region`` (``[N, H, W]`` or ``[H, W]`` bool); 0 for an empty map."""
    return _mass_on(normalised_maps(maps), region)


def _mass_on(h: Tensor, region: Tensor) -> Tensor:
    """:func:`top_k_mass` of normalised ``[N, H, W]`` maps ``h``."""
    region = _region(region, h)
    total = h.flatten(1).sum(1)
    inside = (h * region.to(h.dtype)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


def top_k_overlap(maps: MapLike, reference: MapLike, fraction: float = 0.1) -> Tensor:
    """Share of the reference maps' top-``fraction`` pixels that are also in the maps' top ``fraction``.

    Examples::

        >>> import torch
        >>> from captum_global.robustness import top_k_overlap
        >>> before = torch.arange(16.).view(1, 4, 4)
        >>> top_k_overlap(before, before, 0.25), top_k_overlap(15 - before, before, 0.25)
        (tensor([1.]), tensor([0.]))
    """
    a, b = _paired(top_k_region(maps, fraction), top_k_region(reference, fraction))
    return (a & b).flatten(1).sum(1).to(torch.float32) / b.flatten(1).sum(1).to(torch.float32)


def center_of_mass(maps: MapLike) -> Tensor:
    """``[N, 2]`` centre of mass ``(row, column)`` of each normalised map, in image sides (0..1).

    Pixel centres sit at ``(i + 0.5) / H``; a map without signal has its
    centre at the image centre ``(0.5, 0.5)``.
    """
    return _centre(normalised_maps(maps))


def _centre(h: Tensor) -> Tensor:
    """:func:`center_of_mass` of normalised ``[N, H, W]`` maps ``h``."""
    n, height, width = h.shape
    rows = (torch.arange(height, dtype=h.dtype, device=h.device) + 0.5) / height
    cols = (torch.arange(width, dtype=h.dtype, device=h.device) + 0.5) / width
    total = h.flatten(1).sum(1)
    safe = total.clamp(min=1e-12)
    r = (h.sum(2) * rows).sum(1) / safe
    c = (h.sum(1) * cols).sum(1) / safe
    centre = torch.stack([r, c], dim=1)
    return torch.where((total > 0).unsqueeze(1), centre, torch.full_like(centre, 0.5))


def center_of_mass_shift(maps: MapLike, reference: MapLike) -> Tensor:
    """Euclidean distance between the maps' and the reference maps' centres of mass, in image sides."""
    h, h_ref = _paired(normalised_maps(maps), normalised_maps(reference, "reference"))
    return (_centre(h) - _centre(h_ref)).norm(dim=1)


def rank_correlation(maps: MapLike, reference: MapLike) -> Tensor:
    """Spearman rank correlation between each map and its reference (ties get average ranks).

    A map without signal (constant) has no ranking: its correlation is 0.

    Examples::

        >>> import torch
        >>> from captum_global.robustness import rank_correlation
        >>> a = torch.tensor([[[1.0, 2.0], [2.0, 4.0]]])
        >>> rank_correlation(a, a), rank_correlation(a, a.flip(-1).flip(-2))
        (tensor([1.]), tensor([-1.]))
    """
    a, b = _paired(normalised_maps(_detached(maps)), normalised_maps(_detached(reference), "reference"))
    a, b = a.flatten(1), b.flatten(1)
    out = torch.zeros(a.shape[0])
    for i in range(a.shape[0]):
        ra, rb = _average_ranks(a[i].double()), _average_ranks(b[i].double())
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = (ra.norm() * rb.norm()).item()
        out[i] = float((ra * rb).sum() / denom) if denom > 0 else 0.0
    return out


def fooling_statistic(fooling: str, maps: MapLike, reference: MapLike, *, region: Tensor = None,
                      fraction: float = 0.1, other_reference: MapLike = None) -> Tensor:
    """The per-image test statistic of ``fooling`` (see ``SUCCESS``) for maps after manipulation.

    Args:
        fooling: ``"location"``, ``"top_k"``, ``"center_mass"`` or ``"active"``.
        maps: the maps after manipulation (for ``active``: of class ``c1``).
        reference: the maps before (for ``active``: of class ``c1``).
        region: ``[H, W]`` bool target region (``location``).
        fraction: top-k share (``top_k``).
        other_reference: maps before for class ``c2`` (``active``).
    """
    check_choice(fooling, "fooling", tuple(SUCCESS))
    if fooling == "location":
        if region is None:
            raise InvalidArgumentError("region is required for location fooling")
        return location_loss(maps, region)
    if fooling == "top_k":
        return top_k_overlap(maps, reference, fraction)
    if fooling == "center_mass":
        return center_of_mass_shift(maps, reference)
    if other_reference is None:
        raise InvalidArgumentError("other_reference (the original maps of the second class) is required for active fooling")
    alike = rank_correlation(reference, other_reference)
    distinct = 1 - alike
    margin = rank_correlation(maps, other_reference) - rank_correlation(maps, reference)
    # compare rho itself with the threshold: float32 1 - rho missed 1 - 0.8 at rho = 0.8 exactly
    swappable = alike <= SWAPPABLE_BELOW
    return torch.where(swappable, margin / distinct.clamp(min=1e-12), torch.full_like(margin, float("nan")))


def fooling_success(fooling: str, statistic: Tensor) -> Tensor:
    """``[N]`` bool: which images pass the threshold of ``SUCCESS[fooling]``; its mean is the success rate.

    A NaN statistic (an active-fooling image whose class maps were too alike to swap) is not a success.
    """
    check_choice(fooling, "fooling", tuple(SUCCESS))
    if not isinstance(statistic, Tensor):
        raise InvalidArgumentTypeError(f"statistic must be the [N] tensor of fooling_statistic, "
                                       f"got {type(statistic).__name__}")
    _, threshold, direction = SUCCESS[fooling]
    return statistic < threshold if direction == "below" else statistic > threshold


def _average_ranks(values: Tensor) -> Tensor:
    order = values.argsort()
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based average rank of each tie group
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[inverse]
    return ranks


def _detached(maps: MapLike) -> MapLike:
    return tuple(m.detach() for m in maps) if isinstance(maps, tuple) else maps.detach()


def _paired(maps: Tensor, reference: Tensor, names: str = "maps and reference") -> Tuple[Tensor, Tensor]:
    """``(maps, reference)`` if they hold the same number of maps of the same size.

    A statistic compares map ``i`` with reference map ``i``: a batch of one
    against a batch of many would otherwise broadcast into silent numbers.
    """
    if maps.shape != reference.shape:
        raise InvalidArgumentError(f"{names} must hold the same number of maps of the same size (one reference "
                                   f"per map), got {tuple(maps.shape)} and {tuple(reference.shape)}")
    return maps, reference


def _region(region: Tensor, h: Tensor) -> Tensor:
    if region is None:
        raise InvalidArgumentError("region is required: a bool tensor [H, W] or [N, H, W] (e.g. border_region(H, W))")
    if not isinstance(region, Tensor) or region.dtype != torch.bool or region.dim() not in (2, 3):
        raise InvalidArgumentError("region must be a bool tensor [H, W] or [N, H, W]")
    if tuple(region.shape[-2:]) != tuple(h.shape[-2:]):
        raise InvalidArgumentError(f"region must match the maps' size {tuple(h.shape[-2:])}, got {tuple(region.shape[-2:])}")
    if region.dim() == 3 and region.shape[0] != h.shape[0]:
        raise InvalidArgumentError(f"region holds {region.shape[0]} regions but there are {h.shape[0]} maps: "
                                   "give one [H, W] region for all or one per map")
    return region.to(h.device)
