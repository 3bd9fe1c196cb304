"""Ground-truth localisation metrics: energy pointing game, bbox accuracy, IoU.

All three compare a heat map with a ground-truth region (object mask or box)
and return one number per example, so a benchmark can average them or look
at their spread. Attributions follow Captum's shape rules: input-shaped
``[N, C, H, W]`` (channels are summed), layer-shaped ``[N, 1, h, w]`` (upsampled
bilinearly to the mask size with ``_maps.resize_maps``) or ``[N, H, W]``; a
1-tuple is unwrapped. Negative evidence is dropped by default (``sign``).

Regions are checked, never scored blindly: an empty mask, an empty or
inverted box, and a box outside the image raise
:class:`~captum_global.errors.InvalidArgumentError` naming ``masks``. Boxes
are read in the pixels of the attributions unless ``image_size=(H, W)``
says which image they belong to; so a layer-resolution map (e.g. ``[N, 1,
8, 8]`` from Grad-CAM) with boxes in the pixels of the 64 x 64 image is
refused with a hint, and scored correctly (masks drawn at 64 x 64, map
upsampled) once ``image_size=(64, 64)`` is given.
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from captum_global._checks import check_bool, check_choice, check_number
from captum_global._maps import minmax_normalise
from captum_global.metrics._checks import TensorOrTuple, box_masks, maps_and_masks, without_noise

__all__ = ["energy_pointing_game", "bbox_accuracy", "miou", "boxes_to_masks"]


def boxes_to_masks(boxes: Any, height: int, width: int) -> Tensor:
    r"""Bool ``[N, height, width]`` masks of ``[N, 4]`` boxes ``(x0, y0, x1, y1)``.

    Ends are exclusive: pixel ``(y, x)`` is inside when ``x0 <= x < x1`` and
    ``y0 <= y < y1``. Every box must be non-empty and inside the image
    (``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``); anything else
    raises :class:`~captum_global.errors.InvalidArgumentError` naming
    ``boxes``. Float coordinates are allowed (a pixel counts when its index
    lies in the half-open range).

    Args:
        boxes (Tensor or array-like): ``[N, 4]`` boxes.
        height (int): image height in pixels.
        width (int): image width in pixels.

    Returns:
        Tensor: bool ``[N, height, width]`` on the boxes' device.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import boxes_to_masks
        >>> boxes_to_masks(torch.tensor([[1, 0, 3, 2]]), 3, 4).int()
        tensor([[[0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    return box_masks(boxes, height, width, "boxes")


def energy_pointing_game(
    attributions: TensorOrTuple,
    masks: Tensor,
    sign: str = "positive",
    normalize: bool = True,
    image_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    r"""Energy-based pointing game (EBPG): share of map energy inside the region.

    For each example, ``sum(map * mask) / sum(map)`` with the map made
    non-negative (``sign``) and, by default, min-max normalised so that a
    constant offset (the floor that RISE-like maps carry everywhere) does not
    count as energy. A map with no energy scores 0, not NaN.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions.
        masks (Tensor): bool (or 0/1) ``[N, H, W]`` ground-truth regions, each
            non-empty, or ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` with exclusive
            ends, inside the image.
        sign (str, optional): ``"positive"`` (default) keeps the positive part
            of the channel sum, ``"absolute"`` its magnitude.
        normalize (bool, optional): min-max normalise each map first.
            Default: True.
        image_size (tuple, optional): ``(H, W)`` of the image the boxes are
            given in; defaults to the attributions' spatial size (pass it for
            layer-resolution maps with boxes in image pixels).

    Returns:
        Tensor: ``[N]`` scores in ``[0, 1]``; higher is better.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import energy_pointing_game
        >>> attr = torch.zeros(1, 1, 4, 4)
        >>> attr[0, 0, :2, :2] = 1.0   # all energy in the top-left quarter
        >>> attr[0, 0, 3, 3] = 1.0     # plus one pixel outside
        >>> box = torch.tensor([[0, 0, 2, 2]])
        >>> energy_pointing_game(attr, box)
        tensor([0.8000])
    """
    sign = check_choice(sign, "sign", ("positive", "absolute"))
    normalize = check_bool(normalize, "normalize")
    maps, masks = maps_and_masks(attributions, masks, sign, image_size)
    if normalize:
        maps = minmax_normalise(maps)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(total))


def bbox_accuracy(
    attributions: TensorOrTuple,
    masks: Tensor,
    sign: str = "positive",
    image_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    r"""Share of the ``k`` most salient pixels that fall inside the region.

    ``k`` is the region's area in pixels. Ties at the ``k``-th value are
    resolved deterministically by their expected value under a uniformly
    random order: the tied pixels contribute ``remaining * (tied inside) /
    (tied)``. So a constant map scores the region's share of the image (the
    chance level) instead of depending on pixel order; so does a map whose
    values differ only by float round-off (the package's no-signal rule),
    whose order is noise.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions.
        masks (Tensor): bool (or 0/1) ``[N, H, W]`` regions (each non-empty)
            or ``[N, 4]`` boxes ``(x0, y0, x1, y1)``, exclusive ends.
        sign (str, optional): ``"positive"`` (default), ``"absolute"`` or
            ``"all"`` (rank the signed channel sum).
        image_size (tuple, optional): ``(H, W)`` of the image the boxes are
            given in (see :func:`energy_pointing_game`).

    Returns:
        Tensor: ``[N]`` scores in ``[0, 1]``; higher is better.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import bbox_accuracy
        >>> attr = torch.arange(16.).view(1, 4, 4)   # brightest pixels bottom-right
        >>> box = torch.tensor([[2, 2, 4, 4]])
        >>> bbox_accuracy(attr, box)
        tensor([0.5000])
    """
    maps, masks = maps_and_masks(attributions, masks, sign, image_size)
    flat = without_noise(maps.flatten(1))
    inside = masks.flatten(1)
    k = inside.sum(1)  # >= 1: empty regions are refused
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    above = flat > kth
    tied = flat == kth
    in_above = (above & inside).sum(1).to(flat.dtype)
    n_tied = tied.sum(1).to(flat.dtype)
    in_tied = (tied & inside).sum(1).to(flat.dtype)
    remaining = k.to(flat.dtype) - above.sum(1).to(flat.dtype)
    return (in_above + remaining * in_tied / n_tied) / k.to(flat.dtype)


def miou(
    attributions: TensorOrTuple,
    masks: Tensor,
    threshold: float = 0.5,
    sign: str = "positive",
    image_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    r"""Intersection over union between the thresholded map and the region.

    Each map is min-max normalised to ``[0, 1]`` and binarised as
    ``map > threshold`` (default 0.5, i.e. pixels above half the map's
    range). Averaging the ``[N]`` result over a data set gives the mIoU. A
    constant map selects no pixel and scores 0.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions.
        masks (Tensor): bool (or 0/1) ``[N, H, W]`` regions (each non-empty)
            or ``[N, 4]`` boxes ``(x0, y0, x1, y1)``, exclusive ends.
        threshold (float, optional): binarisation level on the normalised map,
            in ``[0, 1)``. Default: 0.5.
        sign (str, optional): ``"positive"`` (default), ``"absolute"`` or ``"all"``.
        image_size (tuple, optional): ``(H, W)`` of the image the boxes are
            given in (see :func:`energy_pointing_game`).

    Returns:
        Tensor: ``[N]`` IoU values in ``[0, 1]``; higher is better.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import miou
        >>> attr = torch.zeros(1, 4, 4)
        >>> attr[0, :2, :3] = 1.0                      # 6 pixels selected
        >>> miou(attr, torch.tensor([[0, 0, 2, 2]]))   # box of 4 inside them
        tensor([0.6667])
    """
    threshold = check_number(threshold, "threshold", 0.0, 1.0, max_inclusive=False)
    maps, masks = maps_and_masks(attributions, masks, sign, image_size)
    selected = (minmax_normalise(maps) > threshold).flatten(1)
    truth = masks.flatten(1)
    inter = (selected & truth).sum(1).to(maps.dtype)
    union = (selected | truth).sum(1).to(maps.dtype)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
