"""SISE block by block, and its options, on the reference models (public API only).

Run: ``python -m benchmarks.sise_layer_study [--models vgg,resnet] [--n 16]``

On the benchmark's images (``benchmarks.workloads``, shapes test split,
true class) it prints, per reference model:

- per block: EBPG of Captum ``LayerGradCam`` on that block, EBPG of SISE's
  block map ``V`` (``return_layer_maps=True``), the share of the image its
  Otsu gate keeps open (scikit-image's ``threshold_otsu``, 256 bins) and the
  share of the object inside that gate;
- SISE with each option changed alone from the defaults (``fusion``,
  ``score``, ``mu``, ``similarity_threshold``, and the paper's settings),
  with EBPG, bbox accuracy, Average Drop %, Increase %, insertion / deletion
  AUC (16 steps, as the benchmark run) and masked passes per image.

Nothing here changes a default: it only measures them.
"""
import argparse
import time

import torch
from captum.attr import LayerAttribution, LayerGradCam
from skimage.filters import threshold_otsu

from benchmarks.measure import EvaluationCounter
from benchmarks.workloads import load_workload
from captum_global.attr import SISE
from captum_global.lineup import SISE_PAPER_SETTINGS
from captum_global.metrics import bbox_accuracy, deletion_auc, drop_and_increase, energy_pointing_game, insertion_auc

__all__ = ["study", "main"]

VARIANTS = (
    ("defaults", {}),
    ("paper settings", SISE_PAPER_SETTINGS),
    ("similarity_threshold=None", {"similarity_threshold": None}),
    ("fusion='otsu'", {"fusion": "otsu"}),
    ("fusion='soft-otsu'", {"fusion": "soft-otsu"}),
    ("fusion='mean'", {"fusion": "mean"}),
    ("fusion='none'", {"fusion": "none"}),
    ("score='logit'", {"score": "logit"}),
    ("score='softmax'", {"score": "softmax"}),
    ("mu=-inf", {"mu": float("-inf")}),
    ("mu=0.5", {"mu": 0.5}),
)


def _ebpg(attr, masks) -> float:
    return energy_pointing_game(attr, masks).mean().item()


def _gate(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([m > float(threshold_otsu(m.numpy(), nbins=256)) for m in v]).float()


def study(name: str, n: int, batch: int) -> None:
    work = load_workload(name, n)
    model, x, y, masks = work.model, work.images, work.targets, work.masks
    sise = SISE(model)
    counter = EvaluationCounter(model)
    print(f"\n## {name}: {len(x)} images, object share {masks.float().mean():.3f}\n")

    def run(**kw):
        counter.n_examples = 0
        with counter.counting():
            t0 = time.perf_counter()
            out = sise.attribute(x, target=y, perturbations_per_eval=batch, return_layer_maps=True, **kw)
            dt = time.perf_counter() - t0
        return out, (counter.n_examples - len(x)) / len(x), dt

    (attr, maps), passes, dt = run()
    print("| block | Grad-CAM EBPG | SISE V EBPG | gate open share | object share in gate |")
    print("| --- | --- | --- | --- | --- |")
    obj = masks.float()
    modules = dict(model.named_modules())
    for layer, v in maps.items():
        gc = LayerGradCam(model, modules[layer]).attribute(x, target=y, relu_attributions=True)
        gc = LayerAttribution.interpolate(gc, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        gate = _gate(v[:, 0])
        inside = ((gate * obj).sum((1, 2)) / obj.sum((1, 2))).mean().item()
        print(f"| {layer} | {_ebpg(gc, masks):.3f} | {_ebpg(v, masks):.3f} | {gate.mean().item():.3f} | {inside:.3f} |")
    print("\n| SISE | EBPG ↑ | bbox ↑ | Drop % ↓ | Increase % ↑ | ins AUC ↑ | del AUC ↓ | passes / image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, kw in VARIANTS:
        (a, _), p, _ = run(**kw)
        drop, inc = drop_and_increase(model, x, a, y, batch_size=64)
        ins = insertion_auc(model, x, a, y, n_steps=16, batch_size=64).mean().item()
        dele = deletion_auc(model, x, a, y, n_steps=16, batch_size=64).mean().item()
        print(f"| {label} | {_ebpg(a, masks):.3f} | {bbox_accuracy(a, masks).mean().item():.3f} | "
              f"{drop.mean().item():.1f} | {inc.mean().item():.1f} | {ins:.3f} | {dele:.3f} | {p:.1f} |", flush=True)
    counter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="SISE perturbations_per_eval")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for name in opts.models.split(","):
        study(name, opts.n, opts.batch)


if __name__ == "__main__":
    main()
