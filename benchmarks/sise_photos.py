"""SISE on real photos at scale: every photo scikit-image and scikit-learn ship, ImageNet EfficientNet-Lite0.

Run: ``python -m benchmarks.sise_photos --out benchmarks/results --figure docs/figures/sise_photos.png``

The image set is :func:`captum_global.world.photos.photo_set` (21 photos, each
in two views: the centred square and a mirrored 3/4 zoom; 42 images at
224 px); the target is the model's top-1 class. For each method of the
line-up named in ``--methods`` (default: SISE with its defaults, SISE with the
paper's settings, Grad-CAM) it reports, over all images, the model-truth
metrics of ``captum_global.metrics`` (Average Drop %, Increase in Confidence
%, insertion AUC from a blurred image, deletion AUC to black; softmax
probability) and the masked passes per image; and draws one picture per
photo (its centred view) with each method's map.

``--options`` instead runs SISE with each option set of
``benchmarks.sise_layer_study.GROUPED_VARIANTS`` (the defaults, and one
option changed at a time) on the centred view of every photo: the check of
the defaults, chosen on the reference models, on real photos.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from captum.attr import visualization as captum_viz  # noqa: E402

from benchmarks.measure import EvaluationCounter  # noqa: E402
from captum_global.lineup import build_lineup  # noqa: E402
from captum_global.metrics import deletion_auc, drop_and_increase, insertion_auc  # noqa: E402
from captum_global.world.photos import efficientnet_lite0, imagenet_class_names, photo_set  # noqa: E402

__all__ = ["photo_check", "photo_grid", "options_check", "main"]

DEFAULT_METHODS = ("SISE", "SISE (paper settings)", "Grad-CAM")


def photo_check(methods=DEFAULT_METHODS, views=("centre", "zoom-flip"), n_steps: int = 16, batch: int = 6):
    """Maps and metric rows for every method on the photo set."""
    images, labels = photo_set(views=views)
    model = efficientnet_lite0()
    with torch.no_grad():
        targets = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    explainers = build_lineup(model, images[:1], methods)
    counter = EvaluationCounter(model)
    maps, rows = {}, []
    try:
        for name, explain in explainers.items():
            counter.n_examples = 0
            with counter.counting():
                t0 = time.perf_counter()
                attr = torch.cat([explain(images[i:i + batch], targets[i:i + batch]).detach()
                                  for i in range(0, len(images), batch)])
                seconds = (time.perf_counter() - t0) / len(images)
            passes = counter.n_examples / len(images)
            drop, increase = drop_and_increase(model, images, attr, targets, batch_size=32)
            ins = insertion_auc(model, images, attr, targets, n_steps=n_steps, batch_size=32)
            dele = deletion_auc(model, images, attr, targets, n_steps=n_steps, batch_size=32)
            maps[name] = attr[:, :1]
            rows.append({"method": name, "n_images": len(images), "average_drop": drop.mean().item(),
                         "increase": increase.mean().item(), "insertion_auc": ins.mean().item(),
                         "deletion_auc": dele.mean().item(), "evals_per_image": passes,
                         "seconds_per_image": seconds})
            print(rows[-1], flush=True)
    finally:
        counter.close()
    return images, labels, targets, maps, rows


def photo_grid(images, labels, targets, maps: Dict[str, torch.Tensor], view: str = "centre", per_row: int = 3):
    """One cell per photo (its ``view``): each method's map over the photo."""
    names = imagenet_class_names()
    picks = [i for i, label in enumerate(labels) if label.endswith("/" + view)]
    methods = list(maps)
    cols = per_row * len(methods)
    rows = -(-len(picks) // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(1.55 * cols, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for cell, i in enumerate(picks):
        for j, method in enumerate(methods):
            ax = axes[cell // per_row, (cell % per_row) * len(methods) + j]
            heat = maps[method][i, 0].float().numpy()[..., None]
            img = images[i].permute(1, 2, 0).numpy()
            if heat.max() > 0:
                captum_viz.visualize_image_attr(heat, img, method="blended_heat_map", sign="positive",
                                                plt_fig_axis=(fig, ax), use_pyplot=False, alpha_overlay=0.5,
                                                cmap="jet")
            else:
                ax.imshow(img)
            photo = labels[i].split("/")[0]
            ax.set_title(f"{photo}: {names[int(targets[i])][:14]}\n{method}" if j == 0 else f"\n{method}", fontsize=6)
            ax.axis("off")
    fig.suptitle("EfficientNet-Lite0 (ImageNet) on every shipped photo, target: top-1 class", fontsize=9)
    fig.tight_layout()
    return fig


def options_check(n_steps: int = 16) -> str:
    """SISE's option sets on the centred view of every photo, as a Markdown table."""
    from benchmarks.sise_layer_study import GROUPED_VARIANTS, option_header, option_rows

    images, _ = photo_set(views=("centre",))
    model = efficientnet_lite0()
    with torch.no_grad():
        targets = torch.cat([model(images[i:i + 8]).argmax(1) for i in range(0, len(images), 8)])
    print(option_header(False))
    rows = option_rows(model, images, targets, None, GROUPED_VARIANTS, batch=64, n_steps=n_steps)
    return "\n".join([option_header(False)] + [
        f"| {r['variant']} | {r['drop']:.1f} | {r['increase']:.1f} | {r['insertion']:.3f} | {r['deletion']:.3f} | "
        f"{r['passes']:.1f} |" for r in rows])


def _markdown(result: Dict[str, object]) -> str:
    lines = ["# SISE on real photos (EfficientNet-Lite0, ImageNet)", "", f"Command: `{result['command']}`", "",
             f"Images: {result['n_images']} ({result['data']}); target: the model's top-1 class; "
             f"insertion/deletion {result['n_steps']} steps; torch {result['torch']}, 1 thread.", "",
             "| method | Drop % ↓ | Increase % ↑ | insertion AUC ↑ | deletion AUC ↓ | evals / image | seconds / image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['average_drop']:.1f} | {r['increase']:.1f} | {r['insertion_auc']:.3f} | "
                     f"{r['deletion_auc']:.3f} | {r['evals_per_image']:.1f} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sise_photos", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="line-up names, comma separated")
    parser.add_argument("--views", default="centre,zoom-flip")
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for sise_photos.md/.json")
    parser.add_argument("--figure", default=None, help="path of the per-photo figure (PNG)")
    parser.add_argument("--options", action="store_true", help="SISE's option sets on the centred views")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    if opts.options:
        table = options_check(opts.n_steps)
        if opts.out:
            Path(opts.out, "sise_photo_options.md").write_text(
                "# SISE options on the photos (EfficientNet-Lite0, centred views, top-1 class)\n\n"
                "Command: `python -m benchmarks.sise_photos --options --out OUT`\n\n" + table + "\n")
        return {"table": table}
    command = "python -m benchmarks.sise_photos " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    images, labels, targets, maps, rows = photo_check(opts.methods.split(","), opts.views.split(","), opts.n_steps)
    result = {"command": command, "torch": torch.__version__, "n_images": len(images), "n_steps": opts.n_steps,
              "data": "photo_set(): views " + ", ".join(opts.views.split(",")), "rows": rows,
              "targets": {label: imagenet_class_names()[int(t)] for label, t in zip(labels, targets)}}
    print(_markdown(result))
    if opts.out:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        Path(opts.out, "sise_photos.json").write_text(json.dumps(result, indent=2))
        Path(opts.out, "sise_photos.md").write_text(_markdown(result))
    if opts.figure:
        fig = photo_grid(images, labels, targets, {m: maps[m] for m in maps if m != "SISE (paper settings)"} or maps)
        Path(opts.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(opts.figure, dpi=110)
        plt.close(fig)
    return result


if __name__ == "__main__":
    main()
