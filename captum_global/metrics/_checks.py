"""Input checks and conversions shared by the metric modules (private).

Every metric takes attributions that follow Captum's shape rules and turns
them into one ``[N, H, W]`` heat map per example at a given resolution. The
checks live here once so that every metric raises the same clear errors.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from captum_global._maps import resize_maps, to_heatmap

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def single_tensor(value: TensorOrTuple, argument: str) -> Tensor:
    """A tensor, or the tensor inside a 1-tuple (Captum's tuple form)."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise ValueError(f"{argument} must be one tensor or a 1-tuple, got a {len(value)}-tuple")
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_finite(value: Tensor, argument: str) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"{argument} contains NaN or infinite values")


def heatmaps(
    attributions: TensorOrTuple,
    size: Tuple[int, int],
    num_examples: Optional[int] = None,
    sign: str = "positive",
) -> Tensor:
    """Attributions -> float ``[N, H, W]`` heat maps at ``size``.

    Input-shaped ``[N, C, H, W]``, layer-shaped ``[N, 1, h, w]`` and
    ``[N, H, W]`` are accepted; maps of another resolution are upsampled
    bilinearly with ``_maps.resize_maps`` after the channel reduction.
    """
    attributions = single_tensor(attributions, "attributions")
    if attributions.dim() not in (3, 4):
        raise ValueError(
            "attributions must have shape [N, C, H, W], [N, 1, h, w] or [N, H, W], "
            f"got {tuple(attributions.shape)}"
        )
    if num_examples is not None and attributions.shape[0] != num_examples:
        raise ValueError(
            f"attributions has {attributions.shape[0]} examples but {num_examples} were expected"
        )
    check_finite(attributions, "attributions")
    attributions = attributions.detach()  # metrics are not differentiated through
    maps = to_heatmap(attributions.float() if not attributions.is_floating_point() else attributions, sign)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = resize_maps(maps.unsqueeze(1), tuple(size)).squeeze(1)
    return maps


def region_masks(masks: Tensor, size: Tuple[int, int], argument: str = "masks") -> Tensor:
    """Bool ``[N, H, W]`` region masks from masks or ``[N, 4]`` boxes.

    Boxes are ``(x0, y0, x1, y1)`` with exclusive ends, turned into masks of
    ``size`` by the reference world's ``boxes_to_masks``. Masks may also be
    ``[N, 1, H, W]`` or hold 0/1 numbers.
    """
    if not isinstance(masks, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() == 2 and masks.shape[1] == 4 and masks.dtype != torch.bool:
        from captum_global.world.data import boxes_to_masks

        return boxes_to_masks(masks.cpu(), size[0], size[1]).to(masks.device)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(
            f"{argument} must be bool [N, H, W] masks or [N, 4] boxes (x0, y0, x1, y1), "
            f"got shape {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        check_finite(masks, argument)
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError(f"{argument} must be bool or hold only 0 and 1")
        masks = masks != 0
    return masks


def maps_and_masks(
    attributions: TensorOrTuple, masks: Tensor, sign: str, image_size: Optional[Tuple[int, int]] = None
) -> Tuple[Tensor, Tensor]:
    """Heat maps and bool masks of one common ``[N, H, W]`` shape.

    The masks set the resolution; boxes use ``image_size`` or, when it is
    None, the attributions' own spatial size.
    """
    attr = single_tensor(attributions, "attributions")
    if isinstance(masks, Tensor) and masks.dim() == 2 and masks.shape[1] == 4 and masks.dtype != torch.bool:
        size = tuple(image_size) if image_size is not None else tuple(attr.shape[-2:])
    else:
        size = None
    masks = region_masks(masks, size if size is not None else (0, 0))
    maps = heatmaps(attr, tuple(masks.shape[-2:]), sign=sign)
    if masks.shape[0] != maps.shape[0]:
        raise ValueError(
            f"masks has {masks.shape[0]} examples but attributions has {maps.shape[0]}"
        )
    return maps, masks.to(maps.device)
