"""Heat maps from Captum attributions: reduce, normalise, resize, threshold.

A heat map is a ``[N, H, W]`` tensor, one map per example. These are the
operations the package's methods, metrics and figures use, public so that
a user's own pipeline treats maps the same way:

- :func:`to_heatmap` reduces an input-shaped (``[N, C, H, W]``) or
  layer-shaped (``[N, 1, h, w]``) attribution, or a tuple of them, to a
  heat map (``sign``: ``"positive"``, ``"absolute"`` or ``"all"``);
- :func:`minmax_normalise` scales each map to ``[0, 1]``; a map with no
  signal (constant up to ``NO_SIGNAL_RTOL``) becomes zero, never stretched
  noise;
- :func:`resize_maps` resizes ``[N, K, h, w]`` maps bilinearly to an image
  size, aligned as Captum's ``LayerAttribution.interpolate`` aligns them;
- :func:`otsu_threshold` gives each map's Otsu threshold.

Examples::

    >>> import torch
    >>> from captum_global.maps import minmax_normalise, to_heatmap
    >>> attribution = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]])  # [1, 2, 1, 2]
    >>> to_heatmap(attribution)
    tensor([[[2., 0.]]])
    >>> minmax_normalise(torch.tensor([[[2.0, 0.0]], [[5.0, 5.0]]]))
    tensor([[[1., 0.]],
    <BLANKLINE>
            [[0., 0.]]])
"""
from captum_global._maps import NO_SIGNAL_RTOL, minmax_normalise, otsu_threshold, resize_maps, to_heatmap

__all__ = ["to_heatmap", "minmax_normalise", "resize_maps", "otsu_threshold", "NO_SIGNAL_RTOL"]
