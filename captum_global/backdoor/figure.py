"""A figure of backdoor scans: every class's suspected trigger, side by side."""
from typing import Mapping, Optional, Sequence

from torch import Tensor

from captum_global._checks import check_finite
from captum_global.backdoor._common import check_trigger_mask
from captum_global.backdoor.result import BackdoorScan
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["scan_figure"]


def scan_figure(
    scans: Mapping[str, BackdoorScan],
    class_names: Optional[Sequence[str]] = None,
    planted: Optional[Tensor] = None,
    title: Optional[str] = None,
):
    """One row per scan, one column per class: the suspected trigger of each class.

    Each panel shows the class's stamp on a mid-grey image (its pattern
    where its mask is on), titled with the mask's l1 norm and the anomaly
    index; flagged classes are titled in red.

    Args:
        scans: row label -> :class:`BackdoorScan` (e.g. ``{"clean": ..., "patch": ...}``).
        class_names: column captions (default: the class indices).
        planted: optional bool ``[H, W]`` region of a known trigger, outlined in cyan.
        title: optional figure title.

    Returns:
        a ``matplotlib.figure.Figure`` (no pyplot state is touched).

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.backdoor import scan_for_backdoor, scan_figure
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> scan = scan_for_backdoor(net, torch.zeros(1, 3, 16, 16), clean_inputs=torch.rand(8, 3, 16, 16),
        ...                          n_steps=1, batch_size=4)
        >>> fig = scan_figure({"tiny": scan})
        >>> len(fig.axes)
        3
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    _check_figure_arguments(scans, class_names)
    rows = list(scans)
    if planted is not None:
        h, w = next(iter(scans.values())).trigger_masks.shape[-2:]
        planted = check_trigger_mask(planted, h, w, "planted")
    columns = max(len(s.classes) for s in scans.values())
    fig = Figure(figsize=(1.75 * columns, 2.3 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for i, label in enumerate(rows):
        scan = scans[label]
        masks = scan.trigger_masks.detach().float().cpu().unsqueeze(1)
        patterns = scan.trigger_patterns.detach().float().cpu()
        low, high = float(patterns.min()), float(patterns.max())
        grey = (low + high) / 2
        stamps = (1 - masks) * grey + masks * patterns
        for j in range(columns):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(scan.classes):
                continue
            c = scan.classes[j]
            # one [0, 1] scale per row (mid-grey for a row with no contrast at all), never each panel stretched
            # to its own range, as imshow would stretch a one-channel image
            scaled = (stamps[j] - low) / (high - low) if high > low else stamps[j].new_full(stamps[j].shape, 0.5)
            image = scaled.permute(1, 2, 0).numpy()
            ax.imshow(image if image.shape[2] == 3 else image[..., 0], cmap=None if image.shape[2] == 3 else "gray",
                      vmin=0.0, vmax=1.0)
            if planted is not None:
                ys, xs = planted.nonzero(as_tuple=True)
                ax.add_patch(Rectangle((float(xs.min()) - 0.5, float(ys.min()) - 0.5),
                                       float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1),
                                       fill=False, edgecolor="cyan", linewidth=1))
            name = class_names[c] if class_names is not None else str(c)
            stat = next(iter(scan.statistics.values()))[j]
            flagged = c in scan.flagged
            head = f"{label}: " if j == 0 else ""
            ax.set_title(f"{head}{name}\nl1 {float(stat):.0f}, index {float(scan.anomaly_index[j]):.1f}"
                         + (" FLAGGED" if flagged else ""), fontsize=7, color="red" if flagged else "black")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _check_figure_arguments(scans, class_names) -> None:
    """A non-empty mapping of scans, and a caption for every scanned class id."""
    if not isinstance(scans, Mapping):
        raise InvalidArgumentTypeError(
            f"scans must be a mapping row label -> BackdoorScan, got {type(scans).__name__}")
    if not scans:
        raise InvalidArgumentError("scans is empty: give at least one BackdoorScan")
    for label, scan in scans.items():
        if not isinstance(scan, BackdoorScan):
            raise InvalidArgumentTypeError(f"scans[{label!r}] must be a BackdoorScan, got {type(scan).__name__}")
        # a NaN would blank its panel and, through the row's value range, every panel of the row
        check_finite(scan.trigger_masks, f"scans[{label!r}].trigger_masks")
        check_finite(scan.trigger_patterns, f"scans[{label!r}].trigger_patterns")
    if class_names is not None:
        top = max(max(scan.classes) for scan in scans.values())
        if isinstance(class_names, str) or len(class_names) <= top:
            raise InvalidArgumentError(
                f"class_names must hold a name for every class id up to {top} (it is indexed by class id), "
                f"got {len(class_names) if not isinstance(class_names, str) else 'a string'}")
