"""SISE block by block, and its options, on the reference models (public API only).

Run: ``python -m benchmarks.sise_layer_study [--models vgg,resnet] [--n 16] [--split held-out]``

On the benchmark's images (``benchmarks.workloads``, shapes test split,
true class), or on held-out images of the same world (``--split
held-out``: ``make_dataset(n, seed=20261123)``, where the defaults were
chosen), it prints, per reference model:

- per block: EBPG of Captum ``LayerGradCam`` on that block, EBPG of SISE's
  block map ``V`` (``return_layer_maps=True``), the share of the image its
  Otsu gate keeps open (scikit-image's ``threshold_otsu``, 256 bins) and the
  share of the object inside that gate;
- Average Drop % per class for the paper's settings, the defaults and
  Grad-CAM on the last block (which images the drop comes from);
- SISE with each option changed from the defaults (``similarity_threshold``,
  ``fusion``, ``score``, ``mu``, and the paper's settings), with EBPG, bbox
  accuracy, Average Drop %, Increase %, insertion / deletion AUC (16 steps,
  as the benchmark run) and masked passes per image (:func:`option_rows`,
  which ``benchmarks.sise_photos --options`` runs on the photos).

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

__all__ = ["study", "option_rows", "option_header", "VARIANTS", "GROUPED_VARIANTS", "main"]

VARIANTS = (
    ("defaults", {}),
    ("paper settings", SISE_PAPER_SETTINGS),
    ("similarity_threshold=None", {"similarity_threshold": None}),
    ("similarity_threshold=0.5", {"similarity_threshold": 0.5}),
    ("similarity_threshold=0.3", {"similarity_threshold": 0.3}),
    ("similarity_threshold=0.1", {"similarity_threshold": 0.1}),
    ("fusion='otsu'", {"fusion": "otsu"}),
    ("fusion='soft-otsu'", {"fusion": "soft-otsu"}),
    ("fusion='mean'", {"fusion": "mean"}),
    ("fusion='none'", {"fusion": "none"}),
    ("score='softmax'", {"score": "softmax"}),
    ("score='softmax', similarity_threshold=None", {"score": "softmax", "similarity_threshold": None}),
    ("mu=-inf", {"mu": float("-inf")}),
    ("mu=0.5", {"mu": 0.5}),
)
# the options that keep the default grouping: cheap enough for the 224 px photos
GROUPED_VARIANTS = tuple(v for v in VARIANTS if v[0] in (
    "defaults", "similarity_threshold=0.5", "similarity_threshold=0.1", "fusion='otsu'", "fusion='soft-otsu'",
    "score='softmax'"))


def _ebpg(attr, masks) -> float:
    return energy_pointing_game(attr, masks).mean().item()


def _gate(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([m > float(threshold_otsu(m.numpy(), nbins=256)) for m in v]).float()


def option_rows(model, x, y, masks=None, variants=VARIANTS, batch: int = 64, n_steps: int = 16):
    """SISE with each option set: metric rows (EBPG and bbox only with ``masks``)."""
    sise = SISE(model)
    counter = EvaluationCounter(model)
    rows = []
    try:
        for label, kw in variants:
            counter.n_examples = 0
            with counter.counting():
                t0 = time.perf_counter()
                a = torch.cat([sise.attribute(x[i:i + 16], target=y[i:i + 16], perturbations_per_eval=batch, **kw)
                               for i in range(0, len(x), 16)])
                seconds = (time.perf_counter() - t0) / len(x)
            passes = counter.n_examples / len(x) - 1  # minus the gradient pass
            drop, inc = drop_and_increase(model, x, a, y, batch_size=32)
            row = {"variant": label, "drop": drop.mean().item(), "increase": inc.mean().item(),
                   "insertion": insertion_auc(model, x, a, y, n_steps=n_steps, batch_size=32).mean().item(),
                   "deletion": deletion_auc(model, x, a, y, n_steps=n_steps, batch_size=32).mean().item(),
                   "passes": passes, "seconds": seconds}
            if masks is not None:
                row.update(ebpg=_ebpg(a, masks), bbox=bbox_accuracy(a, masks).mean().item())
            rows.append(row)
            print(_row_text(row), flush=True)
    finally:
        counter.close()
    return rows


def _row_text(r) -> str:
    gt = f"{r['ebpg']:.3f} | {r['bbox']:.3f} | " if "ebpg" in r else ""
    return (f"| {r['variant']} | {gt}{r['drop']:.1f} | {r['increase']:.1f} | {r['insertion']:.3f} | "
            f"{r['deletion']:.3f} | {r['passes']:.1f} |")


def option_header(ground_truth: bool) -> str:
    gt = ("EBPG ↑ | bbox ↑ | ", " --- | --- |") if ground_truth else ("", "")
    return (f"| SISE | {gt[0]}Drop % ↓ | Increase % ↑ | ins AUC ↑ | del AUC ↓ | masked passes / image |\n"
            f"| --- |{gt[1]} --- | --- | --- | --- | --- |")


def _images(name: str, n: int, split: str):
    if split == "benchmark":
        work = load_workload(name, n)
        return work.model, work.images, work.targets, work.masks
    from captum_global.world import load_reference_model, make_dataset

    data = make_dataset(n, seed=20261123)  # held out: neither the benchmark's nor the training images
    return load_reference_model(name, "clean"), data.images, data.labels, data.object_masks


def study(name: str, n: int, batch: int, split: str = "benchmark") -> None:
    model, x, y, masks = _images(name, n, split)
    print(f"\n## {name}: {len(x)} {split} images, object share {masks.float().mean():.3f}\n")
    _, maps = SISE(model).attribute(x, target=y, perturbations_per_eval=batch, return_layer_maps=True)
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
    print("\n" + option_header(True))
    option_rows(model, x, y, masks, VARIANTS, batch)
    _drop_by_class(model, x, y, batch, LayerAttribution.interpolate(
        LayerGradCam(model, modules[list(maps)[-1]]).attribute(x, target=y, relu_attributions=True),
        tuple(x.shape[-2:]), interpolate_mode="bilinear"))


def _drop_by_class(model, x, y, batch, gradcam) -> None:
    """Where Average Drop comes from: its mean per class, paper settings vs defaults vs Grad-CAM."""
    from captum_global.world import CLASS_NAMES

    sise = SISE(model)
    maps = {"paper settings": sise.attribute(x, target=y, perturbations_per_eval=batch, **SISE_PAPER_SETTINGS),
            "defaults": sise.attribute(x, target=y, perturbations_per_eval=batch),
            "Grad-CAM (last block)": gradcam}
    drops = {k: drop_and_increase(model, x, a, y, batch_size=32)[0] for k, a in maps.items()}
    present = sorted(set(y.tolist()))
    print("\n| Average Drop % by class | " + " | ".join(CLASS_NAMES[c] for c in present) + " | all |")
    print("| --- |" + " --- |" * (len(present) + 1))
    for k, d in drops.items():
        print(f"| {k} | " + " | ".join(f"{d[y == c].mean().item():.1f}" for c in present)
              + f" | {d.mean().item():.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="SISE perturbations_per_eval")
    parser.add_argument("--split", choices=("benchmark", "held-out"), default="benchmark",
                        help="the benchmark's images, or held-out ones (make_dataset seed 20261123)")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for name in opts.models.split(","):
        study(name, opts.n, opts.batch, opts.split)


if __name__ == "__main__":
    main()
