"""Synthetic labelled shapes with ground truth.

Every image holds exactly one labelled object whose class is its *shape*
(colour, size and position are random), drawn over a smooth random texture
with one to three distractor marks (thick short strokes and small dots)
that are not class shapes. Each sample keeps the object's pixel mask and
bounding box, so localisation metrics have an exact ground truth.

Images are float32 in ``[0, 1]`` and are fed to the models unnormalised,
so an all-zero (black) baseline is meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._checks import check_int
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics.localization import boxes_to_masks as _metrics_boxes_to_masks

CLASS_NAMES: Tuple[str, ...] = ("disk", "square", "triangle", "cross", "ring")

# Fixed chunk size: noise is drawn per chunk from a generator derived from
# the seed, so results never depend on memory limits or the machine.
_CHUNK = 512


@dataclass(frozen=True)
class WorldConfig:
    """Settings of the reference world (data and training split sizes).

    Args:
        image_size: side of the square images in pixels.
        num_classes: number of shape classes (at most ``len(CLASS_NAMES)``).
        n_train, n_test: split sizes used by :func:`make_splits`.
        seed: base seed; the train split uses ``seed``, the test split
            ``seed + 1_000_003`` so the two never share a generator stream.
        min_size, max_size: object extent at 64 px (scaled with image_size).
        max_distractors: distractors per image are drawn in
            ``[1, max_distractors]``.
        noise_std: std of the per-pixel noise added to the background.
        texture_amplitude: amplitude of the low-frequency colour field.
    """

    image_size: int = 64
    num_classes: int = 5
    n_train: int = 4000
    n_test: int = 1000
    seed: int = 0
    min_size: float = 14.0
    max_size: float = 28.0
    max_distractors: int = 3
    noise_std: float = 0.03
    texture_amplitude: float = 0.15


class ShapesDataset(torch.utils.data.Dataset):
    """In-memory dataset of shape images with ground truth.

    Attributes:
        images: ``[N, 3, H, W]`` float32 in ``[0, 1]``.
        labels: ``[N]`` long, the training label (flipped if poisoned).
        true_labels: ``[N]`` long, the label of the drawn shape.
        boxes: ``[N, 4]`` long ``(x0, y0, x1, y1)``, exclusive ends, pixels.
        object_masks: ``[N, H, W]`` bool pixel mask of the labelled object.
        poisoned: ``[N]`` bool, whether a trigger was stamped.
        trigger_masks: ``[N, H, W]`` bool, trigger pixels (all False if clean).

    ``__getitem__`` returns ``(image, label)``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        boxes: Tensor,
        object_masks: Tensor,
        true_labels: Optional[Tensor] = None,
        poisoned: Optional[Tensor] = None,
        trigger_masks: Optional[Tensor] = None,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        n = images.shape[0]
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidArgumentError(
                f"images must have shape [N, 3, H, W], got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        self.images = images
        self.labels = labels.long()
        self.boxes = boxes.long()
        self.object_masks = object_masks.bool()
        self.true_labels = (
            self.labels.clone() if true_labels is None else true_labels.long()
        )
        self.poisoned = (
            torch.zeros(n, dtype=torch.bool) if poisoned is None else poisoned.bool()
        )
        self.trigger_masks = (
            torch.zeros(n, h, w, dtype=torch.bool)
            if trigger_masks is None
            else trigger_masks.bool()
        )
        self.class_names = tuple(class_names)
        for name in ("labels", "boxes", "object_masks", "true_labels",
                     "poisoned", "trigger_masks"):
            if getattr(self, name).shape[0] != n:
                raise InvalidArgumentError(f"{name} must have {n} rows")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _replace(self, **changes) -> "ShapesDataset":
        fields = dict(
            images=self.images, labels=self.labels, boxes=self.boxes,
            object_masks=self.object_masks, true_labels=self.true_labels,
            poisoned=self.poisoned, trigger_masks=self.trigger_masks,
            class_names=self.class_names,
        )
        fields.update(changes)
        return ShapesDataset(**fields)

    def subset(self, idx: Union[Tensor, Sequence[int], slice]) -> "ShapesDataset":
        """Return a new dataset holding the rows ``idx`` (index, list, mask or slice)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
            if idx.dtype != torch.bool:
                idx = idx.long()
        return self._replace(
            images=self.images[idx], labels=self.labels[idx], boxes=self.boxes[idx],
            object_masks=self.object_masks[idx], true_labels=self.true_labels[idx],
            poisoned=self.poisoned[idx], trigger_masks=self.trigger_masks[idx],
        )

    def __repr__(self) -> str:
        h, w = self.images.shape[-2:]
        return (f"ShapesDataset(n={len(self)}, size={h}x{w}, "
                f"poisoned={int(self.poisoned.sum())})")


# --------------------------------------------------------------------------
# Drawing helpers (vectorised over a batch of per-image parameters)
# --------------------------------------------------------------------------


def _grid(n: int, h: int, w: int, cx: Tensor, cy: Tensor) -> Tuple[Tensor, Tensor]:
    # Pixel centres relative to each object's centre, shape [n, h, w].
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    dy = ys.view(1, h, 1) - cy.view(n, 1, 1)
    dx = xs.view(1, 1, w) - cx.view(n, 1, 1)
    return dx, dy


def _shape_mask(kind: str, dx: Tensor, dy: Tensor, size: Tensor) -> Tensor:
    half = (size / 2).view(-1, 1, 1)
    if kind == "disk":
        return dx ** 2 + dy ** 2 <= half ** 2
    if kind == "square":
        # Slightly smaller than the disk so both cover similar areas.
        s = half * 0.85
        return (dx.abs() <= s) & (dy.abs() <= s)
    if kind == "triangle":
        # Upward isosceles triangle: width grows linearly from apex to base.
        t = (dy + half) / (2 * half)
        return (t >= 0) & (t <= 1) & (dx.abs() <= t * half)
    if kind == "cross":
        arm = half / 3
        return ((dx.abs() <= half) & (dy.abs() <= arm)) | (
            (dy.abs() <= half) & (dx.abs() <= arm)
        )
    if kind == "ring":
        r2 = dx ** 2 + dy ** 2
        return (r2 <= half ** 2) & (r2 >= (0.55 * half) ** 2)
    raise InvalidArgumentError(f"unknown shape {kind!r}")


def _stroke_mask(dx: Tensor, dy: Tensor, angle: Tensor, length: Tensor,
                 width: Tensor) -> Tensor:
    # Thick segment centred on the grid origin.
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    along = dx * c + dy * s
    across = -dx * s + dy * c
    return (along.abs() <= (length / 2).view(-1, 1, 1)) & (
        across.abs() <= (width / 2).view(-1, 1, 1)
    )


def _bbox_from_masks(masks: Tensor) -> Tensor:
    n, h, w = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).long()


def _contrasting(bg: Tensor, colour: Tensor) -> Tensor:
    # Push the channel with the largest gap to at least 0.5 away from the
    # background base colour, so the object is always visible.
    gap = colour - bg
    ch = gap.abs().argmax(dim=1, keepdim=True)
    b = bg.gather(1, ch)
    pushed = torch.where(b < 0.5, b + 0.5, b - 0.5)
    far = gap.abs().gather(1, ch) >= 0.5
    return colour.scatter(1, ch, torch.where(far, colour.gather(1, ch), pushed))


def make_dataset(
    n: int,
    seed: int,
    image_size: int = 64,
    config: Optional[WorldConfig] = None,
) -> ShapesDataset:
    """Generate ``n`` labelled shape images, deterministically from ``seed``.

    Args:
        n: number of images (an int >= 1).
        seed: an int, the seed of a private ``torch.Generator``; the global
            RNG is untouched.
        image_size: image side in pixels (an int >= 16); ignored if
            ``config`` is given.
        config: optional :class:`WorldConfig` for the drawing settings.

    Raises:
        InvalidArgumentError: (a ``ValueError``) for a count, size or seed
            out of range, naming the argument; ``InvalidArgumentTypeError``
            (also a ``TypeError``) for a float, bool or ``None`` where an int
            goes.

    Returns:
        A :class:`ShapesDataset` with exactly balanced classes (``n`` rounded
        over classes) in random order.

    Examples::

        >>> ds = make_dataset(10, seed=0, image_size=32)
        >>> ds.images.shape, ds.labels.shape
        (torch.Size([10, 3, 32, 32]), torch.Size([10]))
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed")
    # every generator seed derived from it (seed * 7919 + chunk start + 1) must be one torch accepts
    if seed < -(2**63) // 7919 + 1 or seed * 7919 + n > 2**64 - 1:
        raise InvalidArgumentError(f"seed must lie in [{-(2**63) // 7919 + 1}, {(2**64 - 1 - n) // 7919}], got {seed}")
    if config is None:
        config = WorldConfig(image_size=check_int(image_size, "image_size", minimum=16))
    elif not isinstance(config, WorldConfig):
        raise InvalidArgumentTypeError(f"config must be a WorldConfig or None, got {type(config).__name__}")
    check_int(config.num_classes, "config.num_classes", minimum=2, maximum=len(CLASS_NAMES))
    size = check_int(config.image_size, "config.image_size", minimum=16)
    scale = size / 64.0
    g = torch.Generator().manual_seed(int(seed))
    names = CLASS_NAMES[: config.num_classes]
    C = config.num_classes

    # All per-image parameters are drawn up front in a fixed order.
    labels = (torch.arange(n) % C)[torch.randperm(n, generator=g)]
    obj_size = (config.min_size + (config.max_size - config.min_size)
                * torch.rand(n, generator=g)) * scale
    margin = obj_size / 2 + 1.0
    cx = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    bg_base = 0.15 + 0.7 * torch.rand(n, 3, generator=g)
    obj_colour = _contrasting(bg_base, torch.rand(n, 3, generator=g))
    tex = torch.randn(n, 3, 4, 4, generator=g) * config.texture_amplitude
    D = config.max_distractors
    n_distr = torch.randint(1, D + 1, (n,), generator=g)
    d_kind = torch.rand(n, D, generator=g) < 0.5  # True = stroke, else dot
    d_x = size * torch.rand(n, D, generator=g)
    d_y = size * torch.rand(n, D, generator=g)
    d_angle = torch.pi * torch.rand(n, D, generator=g)
    d_len = (6 + 6 * torch.rand(n, D, generator=g)) * scale
    d_width = (2 + 1.5 * torch.rand(n, D, generator=g)) * scale
    d_rad = (1.5 + 1.5 * torch.rand(n, D, generator=g)) * scale
    d_colour = torch.rand(n, D, 3, generator=g)

    images = torch.empty(n, 3, size, size)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        m = sl.stop - sl.start
        gc = torch.Generator().manual_seed(int(seed) * 7919 + start + 1)
        field_ = F.interpolate(tex[sl], size=(size, size), mode="bilinear",
                               align_corners=True)
        img = bg_base[sl].view(m, 3, 1, 1) + field_
        img = img + config.noise_std * torch.randn(m, 3, size, size, generator=gc)
        for d in range(D):
            dx, dy = _grid(m, size, size, d_x[sl, d], d_y[sl, d])
            stroke = _stroke_mask(dx, dy, d_angle[sl, d], d_len[sl, d],
                                  d_width[sl, d])
            dot = dx ** 2 + dy ** 2 <= d_rad[sl, d].view(-1, 1, 1) ** 2
            dm = torch.where(d_kind[sl, d].view(-1, 1, 1), stroke, dot)
            dm &= (n_distr[sl] > d).view(-1, 1, 1)
            img = torch.where(dm.unsqueeze(1), d_colour[sl, d].view(m, 3, 1, 1), img)
        dx, dy = _grid(m, size, size, cx[sl], cy[sl])
        om = torch.zeros(m, size, size, dtype=torch.bool)
        lab = labels[sl]
        for k, name in enumerate(names):
            sel = lab == k
            if sel.any():
                om[sel] = _shape_mask(name, dx[sel], dy[sel], obj_size[sl][sel])
        img = torch.where(om.unsqueeze(1), obj_colour[sl].view(m, 3, 1, 1), img)
        images[sl] = img.clamp_(0.0, 1.0)
        masks[sl] = om
    boxes = _bbox_from_masks(masks)
    return ShapesDataset(images, labels, boxes, masks, class_names=names)


def make_splits(config: WorldConfig = WorldConfig()) -> Tuple[ShapesDataset, ShapesDataset]:
    """Return ``(train, test)`` generated from disjoint seeds of ``config``."""
    train = make_dataset(config.n_train, config.seed, config=config)
    test = make_dataset(config.n_test, config.seed + 1_000_003, config=config)
    return train, test


# The metrics own boxes_to_masks (floor 1 never reaches into the world for
# it); re-exported here so ``captum_global.world.boxes_to_masks`` keeps working.
boxes_to_masks = _metrics_boxes_to_masks
