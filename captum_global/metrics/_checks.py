"""Argument checks and conversions shared by the metric modules (private).

Every metric takes attributions that follow Captum's shape rules and turns
them into one ``[N, H, W]`` heat map per example at a given resolution, and
every localisation metric turns masks or boxes into bool regions. The checks
live here once, on top of the package-wide :mod:`captum_global._checks`, so
that every metric refuses the same things with the same errors.
"""
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_global._checks import check_choice, check_finite, check_int, check_tensor
from captum_global._maps import minmax_normalise, resize_maps, to_heatmap
from captum_global._model_state import preserved_model_state
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "TensorOrTuple",
    "check_finite",
    "single_tensor",
    "attribution_tensor",
    "heatmaps",
    "box_masks",
    "region_masks",
    "maps_and_masks",
    "check_image_size",
    "evaluation_mode",
    "without_noise",
]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
SIGNS = ("positive", "absolute", "all")


def single_tensor(value: Any, argument: str) -> Any:
    """The tensor inside a 1-tuple (Captum's tuple form); anything else unchanged."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise InvalidArgumentError(f"{argument} must be one tensor or a 1-tuple, got a {len(value)}-tuple")
        value = value[0]
    return value


def attribution_tensor(attributions: TensorOrTuple, num_examples: Optional[int] = None) -> Tensor:
    """Checked real-valued ``[N, C, H, W]``, ``[N, 1, h, w]`` or ``[N, H, W]`` attributions, detached."""
    attr = check_tensor(single_tensor(attributions, "attributions"), "attributions", dims=(3, 4))
    if attr.dtype == torch.bool or attr.is_complex():
        raise InvalidArgumentTypeError(f"attributions must hold real numbers, got dtype {attr.dtype}")
    if num_examples is not None and attr.shape[0] != num_examples:
        raise InvalidArgumentError(
            f"attributions has {attr.shape[0]} examples but inputs has {num_examples}: give one map per input"
        )
    attr = attr.detach()  # metrics are not differentiated through
    return attr if attr.is_floating_point() else attr.float()


def heatmaps(
    attributions: TensorOrTuple,
    size: Tuple[int, int],
    num_examples: Optional[int] = None,
    sign: str = "positive",
) -> Tensor:
    """Attributions -> float ``[N, H, W]`` heat maps at ``size``.

    Input-shaped ``[N, C, H, W]``, layer-shaped ``[N, 1, h, w]`` and
    ``[N, H, W]`` are accepted; maps of another resolution are resized
    bilinearly with ``_maps.resize_maps`` after the channel reduction.
    """
    sign = check_choice(sign, "sign", SIGNS)
    maps = to_heatmap(attribution_tensor(attributions, num_examples), sign)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = resize_maps(maps.unsqueeze(1), tuple(size)).squeeze(1)
    return maps


def without_noise(maps: Tensor) -> Tensor:
    """``[N, ...]`` maps with every map that holds no signal set to all zeros.

    The package's no-signal rule (``_maps.minmax_normalise``: a constant map,
    or one varying only by float round-off) decides; maps with signal are
    returned bit for bit, so a metric that *ranks* pixels ranks them as
    before, and one without signal ranks as a constant map (its documented
    tie rule) instead of ranking round-off noise.
    """
    silent = ~minmax_normalise(maps).flatten(1).any(dim=1)
    if not bool(silent.any()):
        return maps
    return torch.where(silent.view((-1,) + (1,) * (maps.dim() - 1)), torch.zeros_like(maps), maps)


def check_image_size(image_size: Any) -> Optional[Tuple[int, int]]:
    """``None`` or ``(H, W)`` of positive ints (NumPy ints and 1-D tensors of two ints accepted)."""
    if image_size is None:
        return None
    if isinstance(image_size, (Tensor, np.ndarray)) and image_size.ndim == 1 and len(image_size) == 2:
        if isinstance(image_size, Tensor) and (image_size.is_floating_point() or image_size.is_complex()
                                               or image_size.dtype == torch.bool):
            raise InvalidArgumentTypeError(f"image_size must hold ints, got dtype {image_size.dtype}")
        image_size = image_size.tolist()  # Python ints (a float array keeps floats and is refused below)
    if isinstance(image_size, (torch.Size, list, tuple)) and len(image_size) == 2:
        return (check_int(image_size[0], "image_size[0]", minimum=1), check_int(image_size[1], "image_size[1]", minimum=1))
    raise InvalidArgumentError(f"image_size must be None or a pair (H, W) of positive ints, got {image_size!r}")


def box_masks(boxes: Any, height: int, width: int, argument: str = "boxes", hint: str = "") -> Tensor:
    """Bool ``[N, H, W]`` masks of ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` (exclusive ends).

    Every box must be non-empty and lie inside the ``height x width`` image:
    a box that does not is a coordinate mistake (a box in image pixels
    against a smaller map, swapped corners), which a metric would otherwise
    score as a silent 0.
    """
    height = check_int(height, "height", minimum=1)
    width = check_int(width, "width", minimum=1)
    if not isinstance(boxes, Tensor):
        try:
            boxes = torch.as_tensor(boxes)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentTypeError(
                f"{argument} must be an [N, 4] tensor of boxes (x0, y0, x1, y1), got {type(boxes).__name__}"
            ) from None
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InvalidArgumentError(f"{argument} must have shape [N, 4] (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise InvalidArgumentTypeError(f"{argument} boxes must hold real coordinates, got dtype {boxes.dtype}")
    check_finite(boxes, argument)
    cpu = boxes.detach().cpu().double()
    x0, y0, x1, y1 = cpu.unbind(1)
    inverted = (x1 <= x0) | (y1 <= y0)
    outside = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)
    for bad, what in ((inverted, "is empty or inverted (need x0 < x1 and y0 < y1)"),
                      (outside, f"lies outside the {height} x {width} image (need 0 <= x0 < x1 <= {width}, "
                                f"0 <= y0 < y1 <= {height})")):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            box = tuple(round(float(v), 4) for v in cpu[i])
            raise InvalidArgumentError(f"{argument} box {i} {box} {what}{hint}")
    ys = torch.arange(height, dtype=torch.float64).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, width)
    view = [v.view(-1, 1, 1) for v in (x0, y0, x1, y1)]
    masks = (xs >= view[0]) & (xs < view[2]) & (ys >= view[1]) & (ys < view[3])
    return masks.to(boxes.device)


def _is_boxes(masks: Any) -> bool:
    return isinstance(masks, Tensor) and masks.dim() == 2 and masks.shape[1] == 4 and masks.dtype != torch.bool


def region_masks(masks: Any, size: Optional[Tuple[int, int]], argument: str = "masks", hint: str = "") -> Tensor:
    """Bool ``[N, H, W]`` non-empty region masks from masks or ``[N, 4]`` boxes.

    Boxes are ``(x0, y0, x1, y1)`` with exclusive ends, drawn at ``size``.
    Masks may also be ``[N, 1, H, W]`` or hold 0/1 numbers.
    """
    if not isinstance(masks, Tensor):
        raise InvalidArgumentTypeError(f"{argument} must be a torch.Tensor, got {type(masks).__name__}")
    if _is_boxes(masks):
        regions = box_masks(masks, size[0], size[1], argument, hint)
    else:
        regions = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
        if regions.dim() != 3:
            raise InvalidArgumentError(
                f"{argument} must be bool [N, H, W] masks or [N, 4] boxes (x0, y0, x1, y1), "
                f"got shape {tuple(masks.shape)}"
            )
        if regions.dtype != torch.bool:
            if regions.is_complex():
                raise InvalidArgumentTypeError(f"{argument} must be bool or hold 0 and 1, got dtype {regions.dtype}")
            check_finite(regions, argument)
            if not bool(((regions == 0) | (regions == 1)).all()):
                raise InvalidArgumentError(f"{argument} must be bool or hold only 0 and 1")
            regions = regions != 0
    if regions.shape[0] == 0 or regions[0].numel() == 0:
        raise InvalidArgumentError(f"{argument} must hold at least one non-empty region, got shape {tuple(masks.shape)}")
    empty = ~regions.flatten(1).any(1)
    if bool(empty.any()):
        raise InvalidArgumentError(
            f"{argument} region of example {int(empty.nonzero()[0])} is empty: a metric against an empty region "
            "has no meaning"
        )
    return regions


def maps_and_masks(
    attributions: TensorOrTuple, masks: Any, sign: str, image_size: Any = None
) -> Tuple[Tensor, Tensor]:
    """Heat maps and bool masks of one common ``[N, H, W]`` shape.

    The masks set the resolution; boxes are in the pixels of ``image_size``
    or, when it is None, of the attributions' own spatial size (then a box
    outside the map is refused with a hint to pass ``image_size``).
    """
    attr = attribution_tensor(attributions)
    image_size = check_image_size(image_size)
    if _is_boxes(masks):
        size = image_size or tuple(attr.shape[-2:])
        hint = "" if image_size else (
            f"; boxes are read in the attributions' pixels ({size[0]} x {size[1]}): pass image_size=(H, W) "
            "when they are in the pixels of a larger image"
        )
        regions = region_masks(masks, size, hint=hint)
    else:
        regions = region_masks(masks, None)
        if image_size is not None and tuple(regions.shape[-2:]) != image_size:
            raise InvalidArgumentError(
                f"image_size {image_size} does not match the masks' size {tuple(regions.shape[-2:])}; "
                "image_size only says where boxes lie, masks carry their own size"
            )
    if regions.shape[0] != attr.shape[0]:
        raise InvalidArgumentError(f"masks has {regions.shape[0]} examples but attributions has {attr.shape[0]}")
    maps = heatmaps(attr, tuple(regions.shape[-2:]), sign=sign)
    return maps, regions.to(maps.device)


@contextmanager
def evaluation_mode(forward_func: Callable) -> Iterator[None]:
    """Run the body with the model behind ``forward_func`` in eval mode; restore its flags after.

    In eval mode batch norm uses (and does not update) its running
    statistics and dropout is off, so a metric gives the same value on every
    call and leaves the model exactly as it found it.
    """
    if not callable(forward_func):
        raise InvalidArgumentTypeError(f"forward_func must be callable (the model), got {type(forward_func).__name__}")
    with preserved_model_state(forward_func):
        yield
