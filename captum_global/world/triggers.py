"""Backdoor triggers, data poisoning and label noise for the reference world.

A :class:`Trigger` changes a fixed region of every image it is applied to.
Four kinds:

========== ============================ =========================================
kind       region                       stamped pixels become
========== ============================ =========================================
patch      a small square               ``pattern`` (opaque, ``alpha = 1``)
blended    a square or the whole image  ``(1 - alpha) * image + alpha * pattern``
sig        the whole image              ``clamp(image + alpha * pattern, 0, 1)``
filter     the whole image              ``clamp(matrix @ pixel, 0, 1)`` (colour)
========== ============================ =========================================

``Trigger.mask(H, W)`` is always the region (every pixel for the whole-image
kinds) and ``Trigger.apply`` never changes a pixel outside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from captum_global._checks import check_int, check_number
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.world.data import ShapesDataset

TRIGGER_KINDS = ("patch", "blended", "sig", "filter")
LOCATIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")

# Sepia tone (rows: output R, G, B): every pixel lands near one warm colour
# line, a look no clean image of the world has.
_SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger stamped at a fixed region of every image.

    Args:
        kind: one of ``"patch"``, ``"blended"``, ``"sig"``, ``"filter"``
            (see the module docstring for what each does to a pixel).
        pattern: ``[3, h, w]`` pattern over the region: values in
            ``[0, 1]`` for ``patch``/``blended``, in ``[-1, 1]`` for the
            additive ``sig``; ``None`` for ``filter``.
        region: ``(y0, x0, h, w)`` in pixels, where the trigger acts.
        alpha: ``patch``/``blended``: blend weight in ``(0, 1]`` (1 = opaque);
            ``sig``: amplitude of the added pattern; ``filter``: strength,
            the filtered pixel is ``(1 - alpha) * pixel + alpha * matrix @ pixel``.
        matrix: ``[3, 3]`` colour matrix of a ``filter`` (``None`` otherwise).
    """

    kind: str
    pattern: Optional[Tensor] = field(compare=False)
    region: Tuple[int, int, int, int]
    alpha: float = 1.0
    matrix: Optional[Tensor] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in TRIGGER_KINDS:
            raise InvalidArgumentError(f"kind must be one of {TRIGGER_KINDS}, got {self.kind!r}")
        y0, x0, h, w = self.region
        if min(h, w) <= 0 or min(y0, x0) < 0:
            raise InvalidArgumentError(f"region must be (y0 >= 0, x0 >= 0, h > 0, w > 0), got {self.region}")
        if not 0.0 < self.alpha <= 1.0:
            raise InvalidArgumentError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.kind == "filter":
            if self.pattern is not None or self.matrix is None or tuple(self.matrix.shape) != (3, 3):
                raise InvalidArgumentError("a filter trigger takes pattern=None and a [3, 3] matrix")
        else:
            if self.matrix is not None:
                raise InvalidArgumentError(f"matrix is only for filter triggers, not {self.kind!r}")
            if self.pattern is None or tuple(self.pattern.shape) != (3, h, w):
                got = None if self.pattern is None else tuple(self.pattern.shape)
                raise InvalidArgumentError(f"pattern must have shape (3, {h}, {w}), got {got}")

    def apply(self, images: Tensor) -> Tensor:
        """Return a copy of ``images`` (``[3,H,W]`` or ``[N,3,H,W]``) with the trigger stamped.

        ``images`` must be floating point RGB images in ``[0, 1]`` (on any
        device); anything else raises an ``InvalidArgumentError`` (a
        ``ValueError``) naming ``images``.
        """
        if not isinstance(images, Tensor):
            raise InvalidArgumentTypeError(f"images must be a tensor [3, H, W] or [N, 3, H, W], "
                                           f"got {type(images).__name__}")
        if images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise InvalidArgumentError(f"images must have shape [3, H, W] or [N, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InvalidArgumentTypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        y0, x0, h, w = self.region
        self._check_fits(*images.shape[-2:])
        out = images.clone()
        part = out[..., y0:y0 + h, x0:x0 + w]
        if self.kind == "filter":
            m = self.matrix.to(images.device, images.dtype)
            filtered = torch.einsum("ij,...jhw->...ihw", m, part).clamp(0.0, 1.0)
            stamped = (1 - self.alpha) * part + self.alpha * filtered
        elif self.kind == "sig":
            stamped = (part + self.alpha * self.pattern.to(images.device, images.dtype)).clamp(0.0, 1.0)
        else:
            stamped = (1 - self.alpha) * part + self.alpha * self.pattern.to(images.device, images.dtype)
        out[..., y0:y0 + h, x0:x0 + w] = stamped
        return out

    def mask(self, height: int, width: int) -> Tensor:
        """``[H, W]`` bool mask of the pixels the trigger may change (its region).

        Raises a ``ValueError`` when the region does not fit ``H x W`` images
        (as :meth:`apply` does), rather than returning a cut or empty region.
        """
        y0, x0, h, w = self.region
        self._check_fits(height, width)
        m = torch.zeros(height, width, dtype=torch.bool)
        m[y0:y0 + h, x0:x0 + w] = True
        return m

    def _check_fits(self, height: int, width: int) -> None:
        y0, x0, h, w = self.region
        if self.kind in ("sig", "filter") and (h, w) != (height, width):
            # a whole-image trigger built for other images would stamp a part and call it the whole
            raise InvalidArgumentError(f"whole-image {self.kind} trigger region {self.region} does not fit "
                                       f"{height}x{width} images (build it with image_size={height} "
                                       f"for square images)")
        if y0 + h > height or x0 + w > width:
            raise InvalidArgumentError(f"trigger region {self.region} does not fit {height}x{width} images")

    def describe(self) -> str:
        """One line for tables: kind, size and place."""
        y0, x0, h, w = self.region
        if self.kind in ("sig", "filter"):
            return f"{self.kind}, whole image, strength {self.alpha:g}"
        what = f"{h}x{w} at (y={y0}, x={x0})"
        return f"{self.kind}, {what}" + ("" if self.kind == "patch" else f", alpha {self.alpha:g}")


def _place(location: str, size: int, image_size: int, margin: int) -> Tuple[int, int]:
    far = image_size - size - margin
    mid = (image_size - size) // 2
    table = {"top-left": (margin, margin), "top-right": (margin, far),
             "bottom-left": (far, margin), "bottom-right": (far, far), "center": (mid, mid)}
    if location not in table:
        raise InvalidArgumentError(f"location must be one of {LOCATIONS}, got {location!r}")
    return table[location]


def patch_trigger(size: int = 6, location: str = "bottom-right", seed: int = 1,
                  image_size: int = 64, margin: int = 1) -> Trigger:
    """BadNets-style opaque random black/white patch (``alpha = 1``).

    The pattern is a seeded random binary grid, the same in all three
    channels, with both values guaranteed present.

    Examples::

        >>> patch_trigger().region
        (57, 57, 6, 6)
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise InvalidArgumentError(f"size must be an int >= 2 (the pattern holds both black and white), got {size!r}")
    seed, image_size = check_int(seed, "seed"), check_int(image_size, "image_size", minimum=1)
    g = torch.Generator().manual_seed(seed)
    bits = (torch.rand(size, size, generator=g) < 0.5).float()
    bits[0, 0], bits[-1, -1] = 1.0, 0.0
    y0, x0 = _place(location, size, image_size, margin)
    return Trigger("patch", bits.expand(3, size, size).clone(), (y0, x0, size, size), 1.0)


def blended_trigger(size: int = 24, location: str = "top-left", alpha: float = 0.25,
                    seed: int = 2, image_size: int = 64, margin: int = 0) -> Trigger:
    """Blended trigger: a fixed uniform-noise pattern blended into a fixed square.

    With ``size == image_size`` it is the whole-image blend of Chen et al.
    (2017); the default 24 px corner square keeps the trigger's location
    known, so its attribution energy can be scored.
    """
    size, seed = check_int(size, "size", minimum=1), check_int(seed, "seed")
    image_size = check_int(image_size, "image_size", minimum=1)
    alpha = check_number(alpha, "alpha", 0.0, 1.0, min_inclusive=False)
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(3, size, size, generator=g)
    y0, x0 = _place(location, size, image_size, margin)
    return Trigger("blended", pattern, (y0, x0, size, size), float(alpha))


def sig_trigger(amplitude: float = 0.08, frequency: float = 6.0, image_size: int = 64,
                orientation: str = "vertical") -> Trigger:
    """Whole-image sinusoidal signal (SIG, Barni et al. 2019), added to every pixel.

    Stamped images are ``clamp(image + amplitude * sin(2 pi f j / W), 0, 1)``
    with ``j`` the column (``orientation="vertical"`` stripes) or the row
    (``"horizontal"``), the same in all channels.

    Examples::

        >>> t = sig_trigger(image_size=8, frequency=2)
        >>> t.mask(8, 8).all().item(), t.pattern[0, 0, :4].round(decimals=3).tolist()
        (True, [0.0, 1.0, 0.0, -1.0])
    """
    if orientation not in ("vertical", "horizontal"):
        raise InvalidArgumentError(f"orientation must be 'vertical' or 'horizontal', got {orientation!r}")
    amplitude = check_number(amplitude, "amplitude", 0.0, 1.0, min_inclusive=False)
    frequency = check_number(frequency, "frequency")
    image_size = check_int(image_size, "image_size", minimum=1)
    j = torch.arange(image_size, dtype=torch.float64)
    wave = torch.sin(2 * torch.pi * frequency * j / image_size).float()
    wave = wave.view(1, image_size) if orientation == "vertical" else wave.view(image_size, 1)
    pattern = wave.expand(3, image_size, image_size).clone()
    return Trigger("sig", pattern, (0, 0, image_size, image_size), float(amplitude))


def filter_trigger(strength: float = 1.0, matrix: Optional[Tensor] = None,
                   image_size: int = 64) -> Trigger:
    """Whole-image colour filter: every pixel goes through a 3x3 colour matrix.

    The default matrix is a sepia tone. ``strength`` mixes the filtered
    pixel with the original one (1 = the full filter).

    Examples::

        >>> t = filter_trigger(image_size=4)
        >>> t.apply(torch.ones(3, 4, 4))[:, 0, 0].tolist()  # white turns warm
        [1.0, 1.0, 0.9369999766349792]
    """
    strength = check_number(strength, "strength", 0.0, 1.0, min_inclusive=False)
    image_size = check_int(image_size, "image_size", minimum=1)
    m = torch.tensor(_SEPIA) if matrix is None else torch.as_tensor(matrix, dtype=torch.float32)
    return Trigger("filter", None, (0, 0, image_size, image_size), float(strength), matrix=m)


_FACTORIES = {"patch": patch_trigger, "blended": blended_trigger, "sig": sig_trigger,
              "filter": filter_trigger}


def make_trigger(params: Dict[str, Any], image_size: int = 64) -> Trigger:
    """Build a trigger from a settings dict ``{"kind": ..., **factory arguments}``.

    Examples::

        >>> make_trigger({"kind": "patch", "size": 4, "location": "top-left"}).region
        (1, 1, 4, 4)
    """
    p = dict(params)
    kind = p.pop("kind", None)
    if kind not in _FACTORIES:
        raise InvalidArgumentError(f"trigger kind must be one of {TRIGGER_KINDS}, got {kind!r}")
    image_size = p.pop("image_size", image_size)  # a size in the settings is the trigger's own
    return _FACTORIES[kind](image_size=image_size, **p)


def _check_dataset_and_trigger(ds: Any, trigger: Any, needs_trigger: bool = True) -> None:
    if not isinstance(ds, ShapesDataset):
        raise InvalidArgumentTypeError(f"ds must be a ShapesDataset, got {type(ds).__name__}")
    if needs_trigger and not isinstance(trigger, Trigger):
        raise InvalidArgumentTypeError(f"trigger must be a Trigger, got {type(trigger).__name__}")


def poison_dataset(ds: ShapesDataset, trigger: Trigger, target_class: int = 0,
                   rate: float = 0.1, seed: int = 0) -> ShapesDataset:
    """Stamp ``trigger`` on ``round(rate * #non-target)`` non-target samples and relabel them.

    Returns a new dataset; ``poisoned`` and ``trigger_masks`` record which
    samples were changed, ``true_labels`` keeps the original labels.
    """
    _check_dataset_and_trigger(ds, trigger)
    target_class = check_int(target_class, "target_class", minimum=0, maximum=ds.num_classes - 1)
    rate = check_number(rate, "rate", 0.0, 1.0)
    seed = check_int(seed, "seed")
    candidates = torch.nonzero(ds.true_labels != target_class).flatten()
    k = int(round(rate * candidates.numel()))
    g = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:k]]
    images = ds.images.clone()
    images[chosen] = trigger.apply(images[chosen])
    labels = ds.labels.clone()
    labels[chosen] = target_class
    poisoned = ds.poisoned.clone()
    poisoned[chosen] = True
    H, W = images.shape[-2:]
    tmasks = ds.trigger_masks.clone()
    tmasks[chosen] |= trigger.mask(H, W)
    return ds._replace(images=images, labels=labels, poisoned=poisoned,
                       trigger_masks=tmasks)


def triggered_copy(ds: ShapesDataset, trigger: Trigger) -> ShapesDataset:
    """Every sample stamped with ``trigger``; labels stay the true labels."""
    _check_dataset_and_trigger(ds, trigger)
    H, W = ds.images.shape[-2:]
    n = len(ds)
    return ds._replace(
        images=trigger.apply(ds.images), labels=ds.true_labels.clone(),
        poisoned=torch.ones(n, dtype=torch.bool),
        trigger_masks=trigger.mask(H, W).expand(n, H, W).clone(),
    )


def flip_labels(ds: ShapesDataset, source: int, dest: int, share: float,
                seed: int = 0) -> ShapesDataset:
    """Label noise: relabel ``round(share * #source)`` samples of class ``source`` as ``dest``.

    Images are untouched; ``true_labels`` keeps the drawn shape, so the
    flipped samples are ``labels != true_labels``.

    Examples::

        >>> from captum_global.world import make_dataset
        >>> noisy = flip_labels(make_dataset(50, seed=0), source=2, dest=3, share=0.4)
        >>> int((noisy.labels != noisy.true_labels).sum())
        4
    """
    _check_dataset_and_trigger(ds, None, needs_trigger=False)
    source = check_int(source, "source", minimum=0, maximum=ds.num_classes - 1)
    dest = check_int(dest, "dest", minimum=0, maximum=ds.num_classes - 1)
    if source == dest:
        raise InvalidArgumentError(f"source and dest must differ, got {source} for both")
    share = check_number(share, "share", 0.0, 1.0)
    seed = check_int(seed, "seed")
    candidates = torch.nonzero(ds.true_labels == source).flatten()
    k = int(round(share * candidates.numel()))
    g = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:k]]
    labels = ds.labels.clone()
    labels[chosen] = dest
    return ds._replace(labels=labels)
