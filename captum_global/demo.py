"""The embedded default job: explain reference models and real photos, with pictures.

``captum-global demo --out DIR`` runs this offline in a fresh environment:
it loads the reference CNNs that ship with the package (training them only
if their weights are missing), explains a handful of test images of the
reference world with every method of the line-up, scores each map against
the known object masks and the model, and writes galleries, a backdoor
figure, the class-wise synthetic sets and a metrics table. With the ``real``
extra installed it also explains real photos with the ImageNet-pretrained
EfficientNet-Lite0.
"""
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from captum_global import viz
from captum_global._checks import check_int
from captum_global._seeding import seeded_global_rng
from captum_global.attr import ClassWiseSynthesis
from captum_global.backdoor import BackdoorScan, scan_figure, scan_for_backdoor
from captum_global.errors import InvalidArgumentError
from captum_global.lineup import LINEUP, build_lineup, build_lineup_with_parts
from captum_global.metrics import bbox_accuracy, drop_and_increase, energy_pointing_game
from captum_global.world import CLASS_NAMES, make_dataset, zoo_entry
from captum_global.world.training import load_reference_model, reference_target_class, reference_trigger

__all__ = ["run_demo"]

_TEST_SEED = 20_261_123  # a split no reference model was trained on


def _log(message: str) -> None:
    print(f"[captum-global demo] {message}", flush=True)


def _pick_examples(model: nn.Module, n: int):
    """The first correctly classified test image of each class (then more)."""
    data = make_dataset(64, seed=_TEST_SEED)
    with torch.no_grad():
        correct = model(data.images).argmax(1) == data.labels
    chosen: List[int] = []
    for c in range(len(CLASS_NAMES)):
        hits = torch.nonzero(correct & (data.labels == c)).flatten().tolist()
        chosen += hits[:1]
    return data.subset(chosen[:n])


def explain_reference(arch: str, n_images: int, methods: Sequence[str], out: Path) -> List[Dict]:
    """Gallery and metric rows for one reference architecture."""
    model = load_reference_model(arch, "clean")
    data = _pick_examples(model, n_images)
    x, y = data.images, data.labels
    explainers = build_lineup_with_parts(model, x, list(methods))
    attributions, scores, rows, parts_of = {}, {}, [], {}
    for name, explain in explainers.items():
        explain(x[:1], y[:1])  # untimed: one-off costs (lazy imports, the first backward pass) are not per image
        start = time.perf_counter()
        attr, parts = explain(x, y)
        attr = attr.detach()
        if parts:
            parts_of[name] = parts
        seconds = (time.perf_counter() - start) / len(x)
        ebpg = energy_pointing_game(attr, data.object_masks)
        bbox = bbox_accuracy(attr, data.boxes)
        drop, increase = drop_and_increase(model, x, attr, target=y)
        attributions[name] = attr
        scores[name] = {"EBPG": ebpg, "bbox": bbox}
        rows.append({
            "model": f"{arch} (reference, clean)", "method": name,
            "EBPG": float(ebpg.mean()), "bbox_acc": float(bbox.mean()),
            "avg_drop_pct": float(drop.mean()), "increase_pct": float(increase.float().mean()),
            "seconds_per_image": seconds,
        })
        _log(f"{arch}: {name} done ({seconds:.2f} s/image)")
    titles = [f"{CLASS_NAMES[int(c)]}" for c in y]
    viz.save(viz.explanation_gallery(x, attributions, data.boxes, titles, scores,
                                     title=f"reference {arch} (clean): explanations with object box"),
             out / f"gallery_{arch}.png")
    specs = {spec.name: spec for spec in LINEUP}
    for name, parts in parts_of.items():
        spec = specs[name]
        viz.save(viz.explanation_gallery(x, {**parts, name: attributions[name]}, data.boxes, titles,
                                         title=f"{name} on reference {arch}: {spec.parts_caption}"),
                 out / f"{spec.parts_file or 'parts_' + name}_{arch}.png")
    return rows


def backdoor_figure(arch: str, variant: str, out: Path, n_steps: int = 120, clean_size: int = 100,
                    clean_scan: Optional[BackdoorScan] = None) -> Tuple[Dict, BackdoorScan]:
    """Scan the clean and the backdoored model; figure of every class's suspected trigger.

    Returns the report and the clean model's scan (pass it back as
    ``clean_scan`` to draw another variant without scanning the clean model again).
    """
    trigger_mask = reference_trigger(variant).mask(64, 64)
    clean = make_dataset(clean_size, seed=_TEST_SEED + 2).images

    def scan(label: str) -> BackdoorScan:
        return scan_for_backdoor(load_reference_model(arch, label), clean[:1], clean_inputs=clean,
                                 trigger_mask=trigger_mask, n_steps=n_steps, seed=0)

    scans = {"clean": clean_scan if clean_scan is not None else scan("clean"), variant: scan(variant)}
    fig = scan_figure(scans, CLASS_NAMES, planted=trigger_mask,
                      title=f"suspected trigger per class, {arch}: clean vs {variant} backdoor "
                            f"(planted trigger in cyan; red = flagged)")
    fig.savefig(out / f"backdoor_{arch}_{variant}.png", dpi=100)
    _log(f"backdoor {arch}/{variant}: flagged {scans[variant].flagged} (target {reference_target_class()}), "
         f"clean twin flagged {scans['clean'].flagged}")
    report = {
        "model": f"{arch} ({variant} backdoor)", "target_class": reference_target_class(),
        "scan_backdoored": scans[variant].as_dict(), "scan_clean": scans["clean"].as_dict(),
    }
    return report, scans["clean"]


def classwise_figure(arch: str, out: Path, iterations: int) -> Dict:
    """Class-wise synthetic sets of a reference model, matched along its training run."""
    entry = zoo_entry(f"{arch}_clean")
    model, trajectory = entry.load(), entry.trajectory()
    data = make_dataset(250, seed=_TEST_SEED + 1)
    result = ClassWiseSynthesis(model).attribute(
        data, images_per_class=2, checkpoints=trajectory, parametrization="spectrum", lr=0.05,
        checkpoints_per_iteration=1, iterations=iterations, real_examples=2, batch_size=250, seed=0)
    real = torch.stack([result.real_examples[c] for c in result.classes])
    viz.save(viz.classwise_sets_figure(result.images, CLASS_NAMES, real_examples=real, confidence=result.confidence,
                                       stretch=True, title=f"reference {arch}: class-wise sets matched along "
                                                           f"{len(trajectory)} checkpoints\n(from noise; contrast "
                                                           "stretched), real examples"),
             out / f"classwise_{arch}.png")
    confidence = result.confidence.mean(1)
    _log(f"class-wise {arch}: confidence per class {[round(v, 3) for v in confidence.tolist()]}")
    return {"model": entry.name, "checkpoints": list(result.checkpoint_names), "note": result.note,
            "confidence_per_class": confidence.tolist(),
            "distance_per_checkpoint_start": result.initial_distances.sum(1).tolist(),
            "distance_per_checkpoint_end": result.distances.sum(1).tolist()}


# At 224 px each masked pass of EfficientNet-Lite0 costs ~20-30 ms on two
# cores: the photo part explains a few photos (three from scikit-image, one
# from scikit-learn); ``python -m benchmarks.sise_photos`` runs all of them.
PHOTO_METHODS = ("SISE", "Grad-CAM", "Integrated Gradients")
DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "china")


def explain_photos(out: Path, methods: Sequence[str] = PHOTO_METHODS,
                   names: Sequence[str] = DEMO_PHOTOS) -> List[Dict]:
    """Real photos, real ImageNet model (optional ``real`` extra)."""
    from captum_global.world import photos

    if not photos.real_available():
        _log("real extra not installed: skipping photos (pip install 'captum_global[real]')")
        return []
    model = photos.efficientnet_lite0()
    images, labels = photos.photo_set(size=224, names=names, views=("centre",))
    with torch.no_grad():
        top1 = model(images).argmax(1)
    classes = photos.imagenet_class_names()
    explainers = build_lineup(model, images, list(methods))
    attributions, rows = {}, []
    for name, explain in explainers.items():
        start = time.perf_counter()
        attr = explain(images, top1).detach()
        seconds = (time.perf_counter() - start) / len(images)
        drop, increase = drop_and_increase(model, images, attr, target=top1)
        attributions[name] = attr
        rows.append({"model": "EfficientNet-Lite0 (ImageNet)", "method": name, "avg_drop_pct": float(drop.mean()),
                     "increase_pct": float(increase.float().mean()), "seconds_per_image": seconds})
        _log(f"photos: {name} done ({seconds:.2f} s/image)")
    titles = [f"{label.split('/')[0]}: {classes[int(c)]}" for label, c in zip(labels, top1)]
    viz.save(viz.explanation_gallery(images, attributions, row_titles=titles,
                                     title="EfficientNet-Lite0 on real photos (target: top-1 class)"),
             out / "gallery_photos.png")
    return rows


def _markdown(rows: List[Dict]) -> str:
    keys = ["model", "method", "EBPG", "bbox_acc", "avg_drop_pct", "increase_pct", "seconds_per_image"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [row.get(k, "") for k in keys]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run_demo(out: Path, archs: Sequence[str] = ("vgg", "resnet"), n_images: int = 4,
             methods: Sequence[str] = (), photos: bool = True, quick: bool = False) -> Dict:
    """Run the whole demo and write its files under ``out``; returns the summary.

    Args:
        out: output folder (created if missing).
        archs: reference architectures, among ``"vgg"`` and ``"resnet"``.
        n_images: test images per architecture, 1 to 5 (one per class).
        methods: line-up names (empty: all of them).
        photos: also explain real photos when the ``real`` extra is installed.
        quick: fewer optimisation steps for the global methods.

    Whatever draws from torch's global generator runs seeded with 0, and
    the caller's global random state is restored afterwards.
    """
    out = Path(out)
    if isinstance(archs, str) or not archs or any(a not in ("vgg", "resnet") for a in archs):
        raise InvalidArgumentError(f"archs must be a non-empty list among 'vgg', 'resnet', got {archs!r}")
    n_images = check_int(n_images, "n_images", minimum=1, maximum=len(CLASS_NAMES))
    unknown = [m for m in methods if m not in {spec.name for spec in LINEUP}]
    if unknown:
        raise InvalidArgumentError(f"methods holds unknown method names {unknown}; expected some of "
                                   f"{[spec.name for spec in LINEUP]}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: List[Dict] = []
    with seeded_global_rng(0):
        for arch in archs:
            rows += explain_reference(arch, n_images, methods, out)
        backdoor, clean_scan = [], None
        for variant in ("patch", "blended"):
            report, clean_scan = backdoor_figure(archs[0], variant, out, n_steps=20 if quick else 120,
                                                 clean_size=40 if quick else 100, clean_scan=clean_scan)
            backdoor.append(report)
        classwise = classwise_figure(archs[0], out, iterations=5 if quick else 40)
        if photos:
            rows += explain_photos(out, methods or PHOTO_METHODS)
    summary = {"explanations": rows, "backdoor": backdoor, "classwise": classwise,
               "seconds_total": time.perf_counter() - start, "torch": torch.__version__}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "metrics.md").write_text(_markdown(rows))
    _log(f"wrote {sorted(p.name for p in out.iterdir())} to {out} in {summary['seconds_total']:.0f} s")
    return summary
