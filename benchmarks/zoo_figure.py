"""Figure of the reference world: one image per class, and every zoo trigger stamped on one image.

Writes ``docs/figures/world_zoo.png``. No training; seconds.

Usage::

    python benchmarks/zoo_figure.py [--out docs/figures/world_zoo.png]
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from captum_global.world import CLASS_NAMES, make_dataset, reference_zoo  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/figures/world_zoo.png"))
    args = ap.parse_args(argv)
    data = make_dataset(40, seed=20261128)
    per_class = [int(torch.nonzero(data.labels == c)[0]) for c in range(len(CLASS_NAMES))]
    backdoors = [e for e in reference_zoo() if e.trigger is not None]
    base = data.images[per_class[2]]
    cols = max(len(per_class), (len(backdoors) + 1) // 2)
    fig, axes = plt.subplots(3, cols, figsize=(1.9 * cols, 6.3))
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(per_class):
        axes[0, j].imshow(data.images[i].permute(1, 2, 0).numpy())
        axes[0, j].set_title(CLASS_NAMES[j], fontsize=9)
    for k, entry in enumerate(backdoors):
        ax = axes[1 + k // cols, k % cols]
        ax.imshow(entry.trigger.apply(base).permute(1, 2, 0).clamp(0, 1).numpy())
        ax.text(0.5, -0.03, f"{entry.name} -> {CLASS_NAMES[entry.target_class]}", fontsize=8,
                ha="center", va="top", transform=ax.transAxes)
    fig.suptitle("Top: one image per class. Below: the same triangle with each backdoored "
                 "zoo model's trigger (model -> target class written under each)", fontsize=9)
    fig.tight_layout(h_pad=1.5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
