"""The figure of docs/use/metrics.md: three maps of one image and their deletion / insertion curves.

    python -m benchmarks.metrics_figure --out docs/figures/metrics_curves.png

The reference VGG (clean) on one shapes test image; Grad-CAM, Occlusion and
Integrated Gradients from the package's line-up; each map's EBPG against the
object mask, and the softmax probability of the true class as pixels are
deleted (to 0) or inserted (into a blur), most salient first.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from matplotlib.figure import Figure

from benchmarks.workloads import load_workload
from captum_global import viz
from captum_global.lineup import build_lineup
from captum_global.metrics import deletion_auc, energy_pointing_game, insertion_auc

METHODS = ("Grad-CAM", "Occlusion", "Integrated Gradients")


def make_figure(n_steps: int = 32, index: int = 3) -> Figure:
    work = load_workload("vgg", index + 1)
    x, y, mask = work.images[index:index + 1], work.targets[index:index + 1], work.masks[index:index + 1]
    explainers = build_lineup(work.model, x, list(METHODS))
    fig = Figure(figsize=(11.5, 2.6))
    axes = fig.subplots(1, len(METHODS) + 3)
    axes[0].imshow(x[0].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].contour(mask[0].float().numpy(), levels=[0.5], colors="white", linewidths=1.0)
    axes[0].set_title("input, object mask", fontsize=8)
    steps = torch.linspace(0, 1, n_steps + 1)
    for i, name in enumerate(METHODS):
        attr = explainers[name](x, y).detach()
        ebpg = energy_pointing_game(attr, mask).item()
        deletion, del_curve = deletion_auc(work.model, x, attr, y, n_steps=n_steps, return_curve=True)
        insertion, ins_curve = insertion_auc(work.model, x, attr, y, n_steps=n_steps, return_curve=True)
        heat = attr.sum(1)[0].clamp(min=0)  # the positive part of the channel sum, as the metrics read it
        axes[i + 1].imshow(heat.numpy(), cmap="jet", vmin=0)
        axes[i + 1].set_title(f"{name}\nEBPG {ebpg:.2f}", fontsize=8)
        axes[-2].plot(steps, del_curve[0], label=f"{name} ({deletion.item():.2f})")
        axes[-1].plot(steps, ins_curve[0], label=f"{name} ({insertion.item():.2f})")
    for ax in axes[:-2]:
        ax.axis("off")
    for ax, title in ((axes[-2], "deletion (AUC, lower better)"), (axes[-1], "insertion (AUC, higher better)")):
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("share of pixels changed", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="center right" if ax is axes[-2] else "lower right")
    axes[-2].set_ylabel("probability of the true class", fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/metrics_curves.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    viz.save(make_figure(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
