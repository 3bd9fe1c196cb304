"""Backdoor metrics: trigger energy of a map, and Neural Cleanse's anomaly index.

A backdoored model's explanation of the target class should put its energy
on the planted trigger; across classes, a statistic computed per class
(trigger energy, or the smallest reversed trigger's l1 norm in Neural
Cleanse) singles out the attacked class as an outlier.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from captum_global._checks import check_bool, check_choice, check_number
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics._checks import TensorOrTuple, check_finite, without_noise
from captum_global.metrics.localization import energy_pointing_game

__all__ = ["trigger_energy_share", "trigger_iou", "mad_anomaly_index", "flag_anomalies"]

_CONSISTENCY = 1.4826  # MAD -> standard deviation for normal data
_MEAN_AD_CONSISTENCY = math.sqrt(math.pi / 2)  # mean absolute deviation -> std


def trigger_energy_share(
    attributions: TensorOrTuple, trigger_mask: Tensor, sign: str = "positive", normalize: bool = True
) -> Tensor:
    r"""Share of each map's energy that lies on the trigger region.

    The energy pointing game (:func:`energy_pointing_game`) with the trigger
    as the region. ``trigger_mask`` may be one ``[H, W]`` mask shared by the
    batch (a trigger is stamped at a fixed place) or ``[N, H, W]``.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions.
        trigger_mask (Tensor): bool ``[H, W]`` or ``[N, H, W]``.
        sign, normalize: as in :func:`energy_pointing_game`.

    Returns:
        Tensor: ``[N]`` shares in ``[0, 1]``.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import trigger_energy_share
        >>> attr = torch.zeros(2, 8, 8); attr[:, 6:, 6:] = 1.0; attr[1, 0, 0] = 4.0
        >>> trigger = torch.zeros(8, 8, dtype=torch.bool); trigger[6:, 6:] = True
        >>> trigger_energy_share(attr, trigger)
        tensor([1.0000, 0.5000])
    """
    attr = attributions[0] if isinstance(attributions, tuple) and len(attributions) == 1 else attributions
    count = attr.shape[0] if isinstance(attr, Tensor) and attr.dim() > 0 else 0
    region = _trigger_region(trigger_mask, count)
    return energy_pointing_game(attributions, region, sign=sign, normalize=normalize)


def trigger_iou(attributions: TensorOrTuple, trigger_mask: Tensor) -> Tensor:
    r"""IoU of each map's ``k`` strongest pixels with the trigger region, ``k`` its area.

    The map is the sum over channels of the magnitudes, ``sum_c |a_c|``
    (not the magnitude of the sum, as ``sign="absolute"`` elsewhere). Of
    equal values at the ``k``-th place, the first in raster order are
    taken; a map without signal (constant, or varying only by float
    round-off) counts as constant. With ``p`` the share of the top ``k`` pixels inside the region,
    the IoU is ``p / (2 - p)``; 1 means the map's top pixels are exactly
    the trigger.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]`` or ``[N, H, W]`` maps
            (e.g. reversed trigger masks).
        trigger_mask (Tensor): bool ``[H, W]`` (shared) or ``[N, H, W]``.

    Returns:
        Tensor: ``[N]`` IoU in ``[0, 1]``.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import trigger_iou
        >>> maps = torch.zeros(2, 4, 4); maps[0, :2, :2] = 1.0; maps[1, :2, 1:3] = 1.0
        >>> region = torch.zeros(4, 4, dtype=torch.bool); region[:2, :2] = True
        >>> trigger_iou(maps, region)   # 4 of 4 inside; 2 of 4 inside: 2 / 6
        tensor([1.0000, 0.3333])
    """
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise InvalidArgumentError(
                f"attributions must be one tensor or a 1-tuple, got a {len(attributions)}-tuple")
        attributions = attributions[0]
    if not isinstance(attributions, Tensor):
        raise InvalidArgumentTypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dtype == torch.bool or attributions.is_complex():
        raise InvalidArgumentTypeError(f"attributions must hold real numbers, got dtype {attributions.dtype}")
    maps = attributions.abs().sum(1) if attributions.dim() == 4 else attributions.abs()
    if maps.dim() != 3:
        raise InvalidArgumentError(
            f"attributions must have shape [N, C, H, W] or [N, H, W], got {tuple(attributions.shape)}")
    check_finite(maps, "attributions")
    region = _trigger_region(trigger_mask, maps.shape[0], tuple(maps.shape[1:])).to(maps.device)
    flat, inside = without_noise(maps.flatten(1).float()), region.flatten(1)
    area = inside.sum(1)
    iou = torch.zeros(maps.shape[0], device=maps.device)
    for i in range(maps.shape[0]):
        k = int(area[i])
        # stable sort: ties keep raster order
        top = torch.sort(flat[i], descending=True, stable=True).indices[:k]
        p = inside[i, top].float().mean()
        iou[i] = p / (2 - p)
    return iou


def _trigger_region(trigger_mask: Tensor, count: int, size: Optional[Tuple[int, int]] = None) -> Tensor:
    """``trigger_mask`` as bool ``[count, H, W]``; ``[H, W]`` is shared by the batch; never empty.

    ``size``, when given, is the resolution the region must have (the maps').
    """
    if not isinstance(trigger_mask, Tensor):
        raise InvalidArgumentTypeError(f"trigger_mask must be a torch.Tensor, got {type(trigger_mask).__name__}")
    if trigger_mask.dim() not in (2, 3) or (trigger_mask.dim() == 3 and trigger_mask.shape[0] != count) or (
            size is not None and tuple(trigger_mask.shape[-2:]) != tuple(size)):
        expected = "[H, W] or [N, H, W]" if size is None else f"{tuple(size)} or {(count,) + tuple(size)}"
        raise InvalidArgumentError(f"trigger_mask must have shape {expected} for {count} maps, "
                                   f"got {tuple(trigger_mask.shape)}")
    region = trigger_mask
    if region.dtype != torch.bool:
        # a soft mask (a reversed trigger's [0, 1] mask, NaN) is not a region: .bool() would mark every
        # nonzero pixel and the share would read near 1
        if region.is_complex() or not bool(((region == 0) | (region == 1)).all()):
            raise InvalidArgumentError("trigger_mask must be bool or hold only 0 and 1 (threshold a soft mask "
                                       "first, e.g. mask > 0.5)")
        region = region != 0
    if region.dim() == 2:
        region = region.unsqueeze(0).expand(count, -1, -1)
    empty = (region.flatten(1).sum(1) == 0).nonzero().flatten()
    if empty.numel():
        raise InvalidArgumentError(f"trigger_mask marks no pixel (example {int(empty[0])}): a trigger region "
                                   "must hold at least one pixel")
    return region


def mad_anomaly_index(values: Tensor, leave_one_out: bool = False, min_scale: float = 0.0) -> Tensor:
    r"""Neural Cleanse anomaly index of each value among its peers.

    ``|v - median| / (1.4826 * MAD)`` along the last dimension, with
    ``MAD = median(|v - median|)`` and medians that average the two middle
    values for even counts (as ``numpy.median``). Guard: when more than half
    the values equal the median, MAD is 0; the scale then falls back to the
    mean absolute deviation times ``sqrt(pi / 2)`` (also a consistent
    estimate of the standard deviation for normal data), and when all
    values are equal every index is 0. With ``leave_one_out`` the peers of a
    value can all be equal while it is not: its index is then ``inf`` (it
    lies infinitely many of their zero scales away) unless ``min_scale``
    gives a finite scale.

    With few classes the test is fragile: the candidate itself pulls the
    median and the MAD, and three nearly equal values out of five make the
    MAD (and so the scale) almost zero. Two options make it robust:
    ``leave_one_out`` measures each value against the median and MAD of the
    *other* values, and ``min_scale`` puts a floor under the scale (the
    statistic's own measurement noise, in its units): differences smaller
    than the noise are not evidence.

    Args:
        values (Tensor): ``[C]`` (or ``[..., C]``) per-class statistics, C >= 2
            (C >= 3 with ``leave_one_out``).
        leave_one_out (bool, optional): compare each value with the others
            only. Default: False (Neural Cleanse's index).
        min_scale (float, optional): floor of the scale ``1.4826 * MAD``
            (>= 0). Default: 0.

    Returns:
        Tensor: anomaly indices of the same shape, >= 0 (``inf`` only as above).

    Examples::

        >>> import torch
        >>> from captum_global.metrics import mad_anomaly_index
        >>> mad_anomaly_index(torch.tensor([1.0, 2.0, 3.0, 4.0, 40.0]))
        tensor([ 1.3490,  0.6745,  0.0000,  0.6745, 24.9562])
        >>> v = torch.tensor([1.0, 3.0, 3.1, 3.2, 3.9])
        >>> round(float(mad_anomaly_index(v)[0]), 2)   # MAD 0.1: 2.1 / 0.148
        14.16
        >>> round(float(mad_anomaly_index(v, leave_one_out=True, min_scale=0.5)[0]), 2)  # (3.15 - 1) / 0.5
        4.3
    """
    leave_one_out = check_bool(leave_one_out, "leave_one_out")
    values = _statistics(values, 3 if leave_one_out else 2)
    min_scale = check_number(min_scale, "min_scale", minimum=0.0)
    if not leave_one_out:
        return _index_against(values, values, min_scale)
    count = values.shape[-1]
    columns = []
    for i in range(count):
        others = torch.cat([values[..., :i], values[..., i + 1:]], dim=-1)
        columns.append(_index_against(values[..., i:i + 1], others, min_scale))
    return torch.cat(columns, dim=-1)


def _statistics(values: Tensor, minimum: int) -> Tensor:
    """``values`` checked (a real, finite tensor with at least ``minimum`` entries
    along the last dimension) and in the precision the index is computed in:
    float64 stays float64, anything else becomes float32."""
    if not isinstance(values, Tensor):
        raise InvalidArgumentTypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype == torch.bool or values.is_complex():
        raise InvalidArgumentTypeError(f"values must hold real numbers (per-class statistics), got dtype {values.dtype}")
    if values.dim() == 0 or values.shape[-1] < minimum:
        raise InvalidArgumentError(
            f"values must hold at least {minimum} entries along the last dimension, got {tuple(values.shape)}"
        )
    if values.numel() == 0:
        raise InvalidArgumentError(f"values must hold at least one row of statistics, got shape {tuple(values.shape)}")
    values = values.double() if values.dtype == torch.float64 else values.float()
    return check_finite(values, "values")


def _index_against(values: Tensor, reference: Tensor, min_scale: float) -> Tensor:
    """``|values - median(ref)| / scale(ref)``, the scale floored at ``min_scale``."""
    median = reference.quantile(0.5, dim=-1, keepdim=True)
    spread = (reference - median).abs()
    scale = _CONSISTENCY * spread.quantile(0.5, dim=-1, keepdim=True)
    fallback = _MEAN_AD_CONSISTENCY * spread.mean(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, fallback).clamp(min=min_scale)
    deviation = (values - median).abs()
    # no spread at all (the reference values are all equal): a value equal to them is 0 scales away, any
    # other value infinitely many (only leave_one_out can meet the latter: the one value apart from equal peers)
    at_zero = torch.where(deviation > 0, torch.full_like(deviation, math.inf), torch.zeros_like(deviation))
    return torch.where(scale > 0, deviation / scale.clamp(min=torch.finfo(values.dtype).tiny), at_zero)


def flag_anomalies(values: Tensor, threshold: float = 2.0, direction: str = "high", min_scale: float = 0.0) -> Tensor:
    r"""Flag the values whose MAD anomaly index exceeds ``threshold``.

    Args:
        values (Tensor): ``[C]`` (or ``[..., C]``) per-class statistics.
        threshold (float, optional): anomaly-index cut-off; Neural Cleanse
            uses 2 (about 95% confidence for normal data). Default: 2.0.
        direction (str, optional): ``"high"`` flags outliers above the
            median (e.g. trigger energy), ``"low"`` below it (Neural Cleanse's
            reversed-trigger l1 norms), ``"both"`` either. Default: "high".
        min_scale (float, optional): floor of the scale, as in
            :func:`mad_anomaly_index`. Default: 0.

    Returns:
        Tensor: bool tensor of the shape of ``values``.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import flag_anomalies
        >>> flag_anomalies(torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0]), direction="low")
        tensor([False, False,  True, False, False])
    """
    threshold = check_number(threshold, "threshold", minimum=0.0)
    direction = check_choice(direction, "direction", ("high", "low", "both"))
    values = _statistics(values, 2)  # checked once; the side is judged in the precision of the index
    index = _index_against(values, values, check_number(min_scale, "min_scale", minimum=0.0))
    median = values.quantile(0.5, dim=-1, keepdim=True)
    side = {"high": values > median, "low": values < median, "both": values != median}[direction]
    return (index > threshold) & side
