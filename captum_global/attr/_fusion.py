"""Block-wise fusion of per-layer SISE maps, from coarse to fine.

Kept apart from ``sise.py`` because the gates are small, testable pieces of
their own; heat-map primitives (min-max, Otsu) come from ``_maps``.
"""
from typing import List

import torch
from torch import Tensor

from captum_global._maps import minmax_normalise, otsu_threshold

__all__ = ["FUSIONS", "DEFAULT_FUSION", "fuse_layer_maps", "hard_gate", "soft_gate"]

FUSIONS = ("otsu-normalised", "otsu", "soft-otsu", "mean", "none")
DEFAULT_FUSION = "otsu-normalised"


def hard_gate(v: Tensor) -> Tensor:
    """Otsu binarisation of ``[N, H, W]`` maps in [0, 1]: 1 where ``v > t``."""
    t = otsu_threshold(v).view(-1, 1, 1)
    return (v > t).to(v.dtype)


def soft_gate(v: Tensor, sharpness: float = 100.0) -> Tensor:
    """``sigmoid(sharpness (v - t))`` with the threshold rule of the authors' code.

    ``t`` is the 256-bin Otsu threshold; it is raised to ``1.5 t`` when fewer
    than 10% of the pixels lie above ``1.5 t`` (as the reference
    implementation does, by the method's description).
    """
    t = otsu_threshold(v).view(-1, 1, 1)
    above = (v > 1.5 * t).to(v.dtype).mean(dim=(1, 2), keepdim=True)
    t = torch.where(above < 0.1, 1.5 * t, t)
    return torch.sigmoid(sharpness * (v - t))


def fuse_layer_maps(maps: List[Tensor], fusion: str) -> Tensor:
    """Fuse per-layer ``[N, H, W]`` maps (ordered input to output) into one.

    ``otsu`` (the paper) and ``soft-otsu``: ``E_1 = V_1``,
    ``E_l = (E_{l-1} + V_l) * gate(V_l)``: the higher block decides *where*,
    the lower ones add detail; every block weighs the same inside the last
    gate, so with five blocks the four finer ones make 4/5 of the map.
    ``otsu-normalised``: ``E_l = (minmax(E_{l-1}) + V_l) * gate(V_l)``, hard
    gate: each block weighs as much as all finer blocks together, so the
    coarse map fills the object and the finer ones refine it (the deepest
    block makes half of the map). ``mean``: the average map. ``none``: the
    highest block's map alone. The result is min-max normalised to [0, 1]. A
    layer map with no signal (all zeros) leaves the gate open and adds
    nothing, so it neither adds nor removes anything.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if fusion == "none":
        return minmax_normalise(maps[-1])
    if fusion == "mean":
        return minmax_normalise(torch.stack(maps).mean(dim=0))
    gate = soft_gate if fusion == "soft-otsu" else hard_gate
    fused = maps[0]
    for v in maps[1:]:
        flat = v.flatten(1)
        # a layer with no usable map (all zeros) must not erase the others
        dead = (flat.amax(dim=1) <= flat.amin(dim=1)).view(-1, 1, 1)
        if fusion == "otsu-normalised":
            fused = minmax_normalise(fused)
        fused = (fused + v) * torch.where(dead, torch.ones_like(v), gate(v))
    return minmax_normalise(fused)
