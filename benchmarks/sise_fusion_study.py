"""Why SISE's Average Drop trails the CAM methods: fusion rules measured from the same block maps.

Run: ``python -m benchmarks.sise_fusion_study [--models vgg,resnet,photos] [--n 32] [--split held-out]``

SISE (defaults, ``return_layer_maps=True``) gives each block's map ``V``
once; every fusion rule below is then applied to those same maps, so the
rows differ only in the fusion. Gates are Otsu thresholds of ``V``
(scikit-image ``threshold_otsu``, 256 bins). Rules:

- ``sum`` (the paper): ``E_l = (E_{l-1} + V_l) * gate(V_l)``;
- ``sum, floor f``: the gate is ``f`` instead of 0 outside the foreground;
- ``sum, soft gate``: ``sigmoid(100 (V - t))`` instead of the hard gate;
- ``normalised`` (SISE's default ``otsu-normalised``):
  ``E_l = (minmax(E_{l-1}) + V_l) * gate(V_l)``;
- ``geometric``: ``E_l = sqrt(minmax(E_{l-1}) V_l) * gate(V_l)``;
- ``mean`` of the block maps; ``last block`` alone;

plus SISE's own output for the default fusion, and Grad-CAM on the last block.
For each: EBPG and bbox accuracy (reference models only), Average Drop %,
Increase %, insertion / deletion AUC (16 steps).
"""
import argparse

import torch
from captum.attr import LayerAttribution, LayerGradCam
from skimage.filters import threshold_otsu

from benchmarks.workloads import load_workload
from captum_global.attr import SISE
from captum_global.metrics import bbox_accuracy, deletion_auc, drop_and_increase, energy_pointing_game, insertion_auc

__all__ = ["RULES", "fuse", "study", "main"]


def _minmax(t: torch.Tensor) -> torch.Tensor:
    low, high = t.min(), t.max()
    return (t - low) / (high - low) if high > low else torch.zeros_like(t)


def _gate(v: torch.Tensor, soft: bool) -> torch.Tensor:
    t = float(threshold_otsu(v.numpy(), nbins=256))
    return torch.sigmoid(100 * (v - t)) if soft else (v > t).to(v.dtype)


def fuse(maps, rule: str, floor: float = 0.0) -> torch.Tensor:
    """One example's block maps ``[H, W]`` (input to output) fused by ``rule``."""
    if rule == "mean":
        return _minmax(torch.stack(maps).mean(0))
    if rule == "last block":
        return _minmax(maps[-1])
    fused = maps[0]
    for v in maps[1:]:
        if v.max() <= v.min():
            continue  # a block with no signal leaves the gate open and adds nothing
        gate = floor + (1 - floor) * _gate(v, rule == "sum, soft gate")
        if rule == "normalised":
            fused = (_minmax(fused) + v) * gate
        elif rule == "geometric":
            fused = (_minmax(fused) * v).sqrt() * gate
        else:
            fused = (fused + v) * gate
    return _minmax(fused)


RULES = (("sum (paper)", "sum", 0.0), ("sum, floor 0.1", "sum", 0.1), ("sum, floor 0.3", "sum", 0.3),
         ("sum, soft gate", "sum, soft gate", 0.0), ("normalised", "normalised", 0.0),
         ("geometric", "geometric", 0.0), ("mean", "mean", 0.0), ("last block", "last block", 0.0))


def _data(name: str, n: int, split: str):
    if name == "photos" or split == "benchmark":
        work = load_workload(name, n)
        return work.model, work.images, work.targets, work.masks
    from captum_global.world import load_reference_model, make_dataset

    data = make_dataset(n, seed=20261123)
    return load_reference_model(name, "clean"), data.images, data.labels, data.object_masks


def study(name: str, n: int, split: str) -> None:
    model, x, y, masks = _data(name, n, split)
    sise = SISE(model)
    parts, blocks = [], []
    for i in range(0, len(x), 8):
        attr, maps = sise.attribute(x[i:i + 8], target=y[i:i + 8], perturbations_per_eval=64, return_layer_maps=True)
        parts.append(attr[:, :1])
        blocks.append(torch.cat([v for v in maps.values()], dim=1))
    own, blocks = torch.cat(parts), torch.cat(blocks)  # [N, 1, H, W], [N, L, H, W]
    last = dict(model.named_modules())[sise.selected_layers(x)[-1]]
    gc = LayerAttribution.interpolate(LayerGradCam(model, last).attribute(x, target=y, relu_attributions=True),
                                      tuple(x.shape[-2:]), interpolate_mode="bilinear")
    rows = [(label, torch.stack([fuse(list(b), rule, floor) for b in blocks]).unsqueeze(1))
            for label, rule, floor in RULES]
    rows += [("SISE's own output (otsu-normalised)", own), ("Grad-CAM, last block", gc)]
    gt = masks is not None
    print(f"\n## {name}: {len(x)} {'photos' if name == 'photos' else split} images\n")
    print("| fusion | " + ("EBPG ↑ | bbox ↑ | " if gt else "") + "Drop % ↓ | Increase % ↑ | ins AUC ↑ | del AUC ↓ |")
    print("| --- |" + (" --- | --- |" if gt else "") + " --- | --- | --- | --- |")
    for label, a in rows:
        drop, inc = drop_and_increase(model, x, a, y, batch_size=32)
        ins = insertion_auc(model, x, a, y, n_steps=16, batch_size=32).mean().item()
        dele = deletion_auc(model, x, a, y, n_steps=16, batch_size=32).mean().item()
        loc = (f"{energy_pointing_game(a, masks).mean().item():.3f} | {bbox_accuracy(a, masks).mean().item():.3f} | "
               if gt else "")
        print(f"| {label} | {loc}{drop.mean().item():.1f} | {inc.mean().item():.1f} | {ins:.3f} | {dele:.3f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--split", choices=("benchmark", "held-out"), default="held-out",
                        help="reference models: the benchmark's images or held-out ones (make_dataset seed 20261123)")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    for name in opts.models.split(","):
        study(name, opts.n, opts.split)


if __name__ == "__main__":
    main()
