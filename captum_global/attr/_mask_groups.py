"""Which SISE masks to score: groups of near-duplicate masks share one forward pass.

Most feature maps of a block are near-copies of each other at low
resolution (a deep block's 4 x 4 maps most of all). Scoring every one of
them spends a forward pass on nearly the same masked image again and again.
Per example and layer, the kept maps are grouped:

1. the kept maps are ordered by ``alpha`` (largest first, ties by channel);
2. similarity is the Pearson correlation of two low-resolution maps (it is
   blind to the min-max scaling the masks get, and 0 for unrelated maps);
3. representatives are chosen farthest-first: the first map, then again and
   again the map least similar to every representative so far, as long as
   that similarity is below ``threshold``;
4. every kept map joins the representative it is most similar to (ties: the
   earlier representative).

Only representatives are scored; each map keeps its own mask in the layer map
``V`` with its representative's score. When no two maps reach ``threshold``
every map is its own representative, so the result is exactly that of scoring
every map. The grouping is decided before any scoring, so it never depends on
``perturbations_per_eval``.
"""
from typing import Optional

import torch
from torch import Tensor

__all__ = ["map_similarity", "group_kept_maps"]


def map_similarity(maps: Tensor) -> Tensor:
    """``[K, K]`` Pearson correlation of ``K`` maps ``[K, h, w]`` (constant maps: 0 to others)."""
    flat = maps.flatten(1).to(torch.float64)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    flat = torch.where(norm > 0, flat / norm.clamp(min=1e-300), torch.zeros_like(flat))
    return flat @ flat.T


def _representatives(similarity: Tensor, threshold: float) -> Tensor:
    """Farthest-first representatives of ``K`` ordered maps; returns ``[K]`` index of each map's one."""
    k = similarity.shape[0]
    reps = [0]
    closest = similarity[:, 0].clone()
    closest[0] = float("inf")
    while len(reps) < k:
        nxt = int(torch.argmin(closest))
        if closest[nxt] >= threshold:
            break
        reps.append(nxt)
        closest = torch.maximum(closest, similarity[:, nxt])
        closest[nxt] = float("inf")
    index = torch.tensor(reps, device=similarity.device)
    assign = index[similarity[:, index].argmax(dim=1)]  # argmax: first of equal maxima
    assign[index] = index
    return assign


def group_kept_maps(act: Tensor, kept: Tensor, alpha: Tensor, threshold: Optional[float]) -> Tensor:
    """The representative channel of every kept map.

    Args:
        act: ``[N, K, h, w]`` activations of one layer.
        kept: ``[N, K]`` bool, the maps that become masks.
        alpha: ``[N, K]`` their gradient weights (the order of step 1).
        threshold: similarity at or above which a map shares a representative's
            score; ``None`` makes every kept map its own representative.

    Returns:
        ``[N, K]`` long: for a kept map the channel of its representative (its
        own channel when it is scored), ``-1`` for maps not kept.
    """
    n, k = kept.shape
    channels = torch.arange(k, device=kept.device).expand(n, k)
    rep = torch.where(kept, channels, torch.full_like(channels, -1))
    if threshold is None:
        return rep
    for e in range(n):
        idx = kept[e].nonzero().flatten()
        if idx.numel() < 2:
            continue
        # largest alpha first; a stable sort of channels keeps ties in channel order
        idx = idx[torch.sort(alpha[e, idx], descending=True, stable=True).indices]
        assign = _representatives(map_similarity(act[e, idx]), threshold)
        rep[e, idx] = idx[assign]
    return rep
