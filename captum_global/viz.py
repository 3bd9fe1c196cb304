"""Figures: explanation galleries, per-class maps and synthetic sets.

Heat maps are drawn with Captum's own ``visualize_image_attr`` so that what
the gallery shows is exactly what a Captum user would see for the same
attribution. Every function returns a ``matplotlib.figure.Figure`` built
with matplotlib's object-oriented API: nothing here touches pyplot's global
state, so importing this module never switches the process's backend, the
figures never appear in ``pyplot``'s figure list, and no window opens. Save
one with :func:`save` (or ``fig.savefig``); show one in a notebook by
leaving it as a cell's value.
"""
import textwrap
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import visualization as captum_viz
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from captum_global._checks import check_finite, check_tensor
from captum_global._maps import minmax_normalise, resize_maps, to_heatmap
from captum_global.errors import InvalidArgumentError

__all__ = ["explanation_gallery", "class_map_grid", "synthetic_set_grid", "classwise_sets_figure", "save"]


def _hwc(image: Tensor) -> np.ndarray:
    return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def _show(ax, image: Tensor) -> None:
    """Draw a ``[C, H, W]`` image in [0, 1] as it is: three channels as RGB; any other number (one, or
    two, four... which imshow cannot draw) as their mean in grey on the fixed [0, 1] scale (imshow would
    draw one channel in false colour, stretched to its own range)."""
    pixels = _hwc(image)
    if pixels.shape[2] == 3:
        ax.imshow(pixels)
    else:
        ax.imshow(pixels.mean(2), cmap="gray", vmin=0.0, vmax=1.0)


def _overlay(ax, image: Tensor, heatmap: Tensor, title: str) -> None:
    """Draw one heat map over its image with Captum's visualiser."""
    heat = heatmap.detach().float().cpu()
    if float(minmax_normalise(heat[None]).max()) == 0.0:
        # A map with no signal (all zero, or constant up to round-off): Captum's
        # normaliser would divide by zero or stretch a constant to full heat,
        # so show the plain image and say so.
        _show(ax, image)
        title = f"{title}\n(empty map)"
    else:
        captum_viz.visualize_image_attr(
            heat[..., None].numpy(), _hwc(image), method="blended_heat_map", sign="positive",
            plt_fig_axis=(ax.figure, ax), use_pyplot=False, alpha_overlay=0.5, cmap="jet",
        )
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _checked_heatmaps(maps: Tensor, argument: str, count: int, sign: str, per: str) -> Tensor:
    """``maps`` as finite ``[N, H, W]`` heat maps, ``count`` of them (one per ``per``)."""
    if not isinstance(maps, (Tensor, tuple)):
        raise InvalidArgumentError(f"{argument} must be a tensor [N, C, H, W] or [N, H, W], got {type(maps).__name__}")
    heat = check_finite(to_heatmap(maps, sign=sign), argument)
    if heat.shape[0] != count:
        raise InvalidArgumentError(f"{argument} holds {heat.shape[0]} map(s) for {count} {per}")
    return heat


def _check_row_names(class_names: Sequence[str], rows: int) -> None:
    """A caption for every row (class_names is indexed by row)."""
    if isinstance(class_names, str) or len(class_names) < rows:
        count = "a string" if isinstance(class_names, str) else f"{len(class_names)} name(s)"
        raise InvalidArgumentError(f"class_names holds {count} for {rows} class row(s): give one name per row")


def _box_of(highlight: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if not isinstance(highlight, Tensor) or highlight.dim() != 2:
        shape = tuple(highlight.shape) if isinstance(highlight, Tensor) else type(highlight).__name__
        raise InvalidArgumentError(f"highlight must be an [H, W] bool region, got {shape}")
    ys, xs = torch.nonzero(highlight, as_tuple=True)
    if xs.numel() == 0:
        raise InvalidArgumentError("highlight marks no pixel: give the region to outline, or highlight=None")
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _grid(rows: int, cols: int, figsize: Tuple[float, float]):
    """A figure with a ``rows x cols`` array of axes, outside pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _draw_box(ax, box: Sequence[int], color: str = "lime") -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2))


def explanation_gallery(
    images: Tensor,
    attributions: Mapping[str, Tensor],
    boxes: Optional[Tensor] = None,
    row_titles: Optional[Sequence[str]] = None,
    scores: Optional[Mapping[str, Mapping[str, Sequence[float]]]] = None,
    title: Optional[str] = None,
):
    """One row per image: the image (with its box), then one map per method.

    Args:
        images: ``[N, 3, H, W]`` in [0, 1] (other channel counts: their mean drawn in grey).
        attributions: method name -> attribution tensor following Captum's
            shape rules (``[N, C, H, W]`` or ``[N, H, W]``; a layer
            method's ``[N, 1, h, w]`` maps are upsampled to the images' size).
        boxes: optional ``[N, 4]`` ground-truth boxes ``(x0, y0, x1, y1)``.
        row_titles: optional caption for each image (e.g. the class).
        scores: optional method name -> metric name -> per-image values,
            printed in the map titles.
        title: optional figure title.

    Returns:
        matplotlib.figure.Figure

    Examples::

        >>> import torch
        >>> from captum_global import viz
        >>> images = torch.rand(2, 3, 16, 16)
        >>> fig = viz.explanation_gallery(images, {"grey": images, "none": torch.zeros(2, 3, 16, 16)},
        ...                               boxes=torch.tensor([[0, 0, 8, 8], [4, 4, 12, 12]]))
        >>> len(fig.axes)  # one image and two maps per row
        6
    """
    images = check_tensor(images, "images", dims=(4,))
    n = images.shape[0]
    names = list(attributions)
    # at the image's size (a layer method's [N, 1, h, w] maps upsampled bilinearly, as Captum's
    # LayerAttribution.interpolate): drawn at their own size they would cover a corner of the image
    heatmaps = {name: resize_maps(_checked_heatmaps(attr, f"attributions[{name!r}]", n, "positive", "image(s)")
                                  .float()[:, None], tuple(images.shape[-2:]))[:, 0]
                for name, attr in attributions.items()}
    if row_titles is not None and len(row_titles) != n:
        raise InvalidArgumentError(f"row_titles holds {len(row_titles)} caption(s) for {n} image(s)")
    fig, axes = _grid(n, len(names) + 1, (1.9 * (len(names) + 1), 2.1 * n))
    for i in range(n):
        ax = axes[i, 0]
        _show(ax, images[i])
        if boxes is not None:
            _draw_box(ax, boxes[i])
        ax.set_title(row_titles[i] if row_titles else "input", fontsize=7)
        ax.axis("off")
        for j, name in enumerate(names):
            caption = name
            for metric, values in (scores or {}).get(name, {}).items():
                caption += f"\n{metric} {float(values[i]):.2f}"
            _overlay(axes[i, j + 1], images[i], heatmaps[name][i], caption)
            if boxes is not None:
                _draw_box(axes[i, j + 1], boxes[i])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def class_map_grid(
    maps_by_model: Mapping[str, Tensor],
    class_names: Sequence[str],
    highlight: Optional[Tensor] = None,
    title: Optional[str] = None,
):
    """One row per model, one column per class: input-agnostic class maps.

    Args:
        maps_by_model: model label -> ``[num_classes, C, H, W]`` maps.
        class_names: column captions.
        highlight: optional ``[H, W]`` bool region (e.g. a planted trigger)
            outlined on every map.
        title: optional figure title.

    Returns:
        matplotlib.figure.Figure
    """
    rows = list(maps_by_model)
    if not rows:
        raise InvalidArgumentError("maps_by_model holds no model: give at least one label -> maps entry")
    # each map min-max scaled on its own, as imshow would, except that a map
    # with no signal (constant up to round-off) stays zero, never stretched noise
    heats = {}
    for label in rows:
        heat = _checked_heatmaps(maps_by_model[label], f"maps_by_model[{label!r}]", len(class_names), "absolute",
                                 "class name(s)")
        heats[label] = minmax_normalise(heat.detach().float().cpu())
    box = None if highlight is None else _box_of(highlight)
    fig, axes = _grid(len(rows), len(class_names), (1.8 * len(class_names), 1.9 * len(rows)))
    for i, label in enumerate(rows):
        heat = heats[label]
        for j, cname in enumerate(class_names):
            ax = axes[i, j]
            ax.imshow(heat[j].numpy(), cmap="inferno", vmin=0.0, vmax=1.0)
            if box is not None:
                _draw_box(ax, box, color="cyan")
            ax.set_title(f"{label}\n{cname}" if j == 0 else cname, fontsize=7)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def synthetic_set_grid(images_by_class: Tensor, class_names: Sequence[str], title: Optional[str] = None):
    """Synthetic sets: one row per class, one column per synthetic image.

    Args:
        images_by_class: ``[num_classes, n, 3, H, W]`` in [0, 1].
        class_names: row captions.
        title: optional figure title.

    Returns:
        matplotlib.figure.Figure
    """
    images_by_class = check_tensor(images_by_class, "images_by_class", dims=(5,))
    n_classes, per_class = images_by_class.shape[:2]
    _check_row_names(class_names, n_classes)
    fig, axes = _grid(n_classes, per_class, (1.6 * per_class + 0.6, 1.6 * n_classes))
    for c in range(n_classes):
        for k in range(per_class):
            ax = axes[c, k]
            _show(ax, images_by_class[c, k])
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(class_names[c], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    """Write ``fig`` to ``path`` (format from the suffix, 110 dpi).

    The figure is not registered with pyplot, so nothing needs closing: it
    is freed with its last reference.
    """
    fig.savefig(path, dpi=110)


def classwise_sets_figure(
    images_by_class: Tensor,
    class_names: Sequence[str],
    real_examples: Optional[Tensor] = None,
    confidence: Optional[Tensor] = None,
    highlight: Optional[Tensor] = None,
    title: Optional[str] = None,
    max_images: int = 6,
    initial_images: Optional[Tensor] = None,
    captions: Optional[Sequence[Sequence[str]]] = None,
    stretch: bool = False,
):
    """Class-wise synthesis as a person reads it: one row per class, the
    synthetic set beside real examples of the class.

    Args:
        images_by_class: ``[num_classes, n, 3, H, W]`` synthetic sets in [0, 1]
            (``ClassWiseResult.images``).
        class_names: row captions, one per row.
        real_examples: optional ``[num_classes, m, 3, H, W]`` real examples of
            each class, drawn after a gap to the right.
        confidence: optional ``[num_classes, n]`` probability of its class on
            each synthetic image (``ClassWiseResult.confidence``), in the titles.
        highlight: optional ``[H, W]`` bool region (e.g. a planted trigger)
            outlined on the synthetic images and their change maps.
        title: optional figure title.
        max_images: at most this many synthetic (and real) images per row.
        initial_images: optional starting images (``ClassWiseResult.initial_images``):
            then each synthetic image's change ``|S - S_init|`` (summed over
            channels, one colour scale per row) is drawn after the set, which
            shows *where* the synthesis changed the images.
        captions: optional ``[num_classes][n]`` titles of the synthetic images
            (e.g. how many real examples each stands for); override ``confidence``.
        stretch: draw each synthetic image min-max stretched to [0, 1] (its
            contrast, not its content, changes; say so in the title).
    """
    # finite: a NaN pixel would blank its panel, and with stretch or a change map its whole row's scale
    images_by_class = check_tensor(images_by_class, "images_by_class", dims=(5,))
    if initial_images is not None:
        initial_images = check_tensor(initial_images, "initial_images", dims=(5,))
    if real_examples is not None:
        real_examples = check_tensor(real_examples, "real_examples", dims=(5,))
    if confidence is not None:
        confidence = check_tensor(confidence, "confidence")
    syn = images_by_class[:, :max_images]
    n_classes, n_syn = syn.shape[:2]
    _check_row_names(class_names, n_classes)
    n_change = n_syn if initial_images is not None else 0
    n_real = 0 if real_examples is None else min(real_examples.shape[1], max_images)
    blocks = [("syn", n_syn)] + ([("change", n_change)] if n_change else []) + ([("real", n_real)] if n_real else [])
    ratios = []
    for b, (_, width) in enumerate(blocks):
        ratios += [1.0] * width + ([0.2] if b < len(blocks) - 1 else [])
    cols = len(ratios)
    fig = Figure(figsize=(1.2 * sum(ratios) + 0.5, 1.35 * n_classes + 0.5))
    axes = fig.subplots(n_classes, cols, squeeze=False, gridspec_kw={"width_ratios": ratios})
    box = None if highlight is None else _box_of(highlight)
    change = None
    if n_change:
        change = (syn - initial_images[:, :max_images].to(syn.device)).abs().sum(2).detach().float().cpu()
    for c in range(n_classes):
        col = 0
        for b, (kind, width) in enumerate(blocks):
            for k in range(width):
                ax = axes[c, col + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if kind == "syn":
                    image = syn[c, k]
                    if stretch:
                        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
                    _show(ax, image)
                    label = None
                    if captions is not None:
                        label = captions[c][k]
                    elif confidence is not None:
                        label = f"p={float(confidence[c, k]):.2f}"
                    if label:
                        ax.set_title(label, fontsize=6, pad=2)
                    elif c == 0:
                        ax.set_title("synthetic", fontsize=7, pad=2)
                elif kind == "change":
                    ax.imshow(change[c, k].numpy(), cmap="inferno", vmin=0, vmax=float(change[c].max()) or 1.0)
                    if c == 0:
                        ax.set_title("|change|", fontsize=7, pad=2)
                else:
                    _show(ax, real_examples[c, k])
                    if c == 0:
                        ax.set_title("real", fontsize=7, pad=2)
                if box is not None and kind != "real":
                    _draw_box(ax, box, color="cyan")
                if col + k == 0:
                    ax.set_ylabel(class_names[c], fontsize=7)
            col += width
            if b < len(blocks) - 1:
                axes[c, col].axis("off")
                col += 1
    if title:  # wrapped to the figure's width (about 15 characters of 8 pt text per inch)
        fig.suptitle(textwrap.fill(title, max(30, int(fig.get_figwidth() * 15))), fontsize=8)
    fig.tight_layout()
    return fig
