"""Backdoor metrics: trigger energy of a map, and Neural Cleanse's anomaly index.

A backdoored model's explanation of the target class should put its energy
on the planted trigger; across classes, a statistic computed per class
(trigger energy, or the smallest reversed trigger's l1 norm in Neural
Cleanse) singles out the attacked class as an outlier.
"""
import math

import torch
from torch import Tensor

from captum_global.metrics._checks import TensorOrTuple, check_finite
from captum_global.metrics.localization import energy_pointing_game

__all__ = ["trigger_energy_share", "mad_anomaly_index", "flag_anomalies"]

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
    if not isinstance(trigger_mask, Tensor):
        raise TypeError(f"trigger_mask must be a torch.Tensor, got {type(trigger_mask).__name__}")
    if trigger_mask.dim() == 2:
        attr = attributions[0] if isinstance(attributions, tuple) and len(attributions) == 1 else attributions
        trigger_mask = trigger_mask.unsqueeze(0).expand(attr.shape[0], -1, -1)
    elif trigger_mask.dim() != 3:
        raise ValueError(f"trigger_mask must have shape [H, W] or [N, H, W], got {tuple(trigger_mask.shape)}")
    return energy_pointing_game(attributions, trigger_mask, sign=sign, normalize=normalize)


def mad_anomaly_index(values: Tensor) -> Tensor:
    r"""Neural Cleanse anomaly index of each value among its peers.

    ``|v - median| / (1.4826 * MAD)`` along the last dimension, with
    ``MAD = median(|v - median|)`` and medians that average the two middle
    values for even counts (as ``numpy.median``). Guard: when more than half
    the values equal the median, MAD is 0; the scale then falls back to the
    mean absolute deviation times ``sqrt(pi / 2)`` (also a consistent
    estimate of the standard deviation for normal data), and when all
    values are equal every index is 0.

    Args:
        values (Tensor): ``[C]`` (or ``[..., C]``) per-class statistics, C >= 2.

    Returns:
        Tensor: anomaly indices of the same shape, >= 0.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import mad_anomaly_index
        >>> mad_anomaly_index(torch.tensor([1.0, 2.0, 3.0, 4.0, 40.0]))
        tensor([ 1.3490,  0.6745,  0.0000,  0.6745, 24.9562])
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() == 0 or values.shape[-1] < 2:
        raise ValueError(f"values must hold at least 2 entries along the last dimension, got {tuple(values.shape)}")
    values = values.double() if values.dtype == torch.float64 else values.float()
    check_finite(values, "values")
    median = values.quantile(0.5, dim=-1, keepdim=True)
    deviation = (values - median).abs()
    scale = _CONSISTENCY * deviation.quantile(0.5, dim=-1, keepdim=True)
    fallback = _MEAN_AD_CONSISTENCY * deviation.mean(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, fallback)
    return torch.where(scale > 0, deviation / scale.clamp(min=torch.finfo(values.dtype).tiny), torch.zeros_like(deviation))


def flag_anomalies(values: Tensor, threshold: float = 2.0, direction: str = "high") -> Tensor:
    r"""Flag the values whose MAD anomaly index exceeds ``threshold``.

    Args:
        values (Tensor): ``[C]`` (or ``[..., C]``) per-class statistics.
        threshold (float, optional): anomaly-index cut-off; Neural Cleanse
            uses 2 (about 95% confidence for normal data). Default: 2.0.
        direction (str, optional): ``"high"`` flags outliers above the
            median (e.g. trigger energy), ``"low"`` below it (Neural Cleanse's
            reversed-trigger l1 norms), ``"both"`` either. Default: "high".

    Returns:
        Tensor: bool tensor of the shape of ``values``.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import flag_anomalies
        >>> flag_anomalies(torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0]), direction="low")
        tensor([False, False,  True, False, False])
    """
    if direction not in ("high", "low", "both"):
        raise ValueError(f"direction must be 'high', 'low' or 'both', got {direction!r}")
    index = mad_anomaly_index(values)
    median = values.float().quantile(0.5, dim=-1, keepdim=True)
    side = {"high": values > median, "low": values < median, "both": values != median}[direction]
    return (index > threshold) & side
