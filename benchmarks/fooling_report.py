"""Tables and figures of ``benchmarks.fooling`` (Markdown from its JSON result; the maps figure)."""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["to_markdown", "maps_figure"]

_KIND = {"location": "location (border)", "top_k": "top-k (10%)", "center_mass": "centre of mass",
         "active": "active (swap disk/square)"}


def to_markdown(result: Dict) -> str:
    success = result["success"]
    lines = ["# Fooling the explanations: adversarial model manipulation", "",
             f"Command: `{result['command']}`", ""]
    if "total_seconds" in result:
        lines += [f"Total run time: {result['total_seconds']:.0f} s.", ""]
    lines += [f"Machine: torch {result['machine']['torch']}, {result['machine']['threads']} thread(s), CPU.", "",
              "Success thresholds (per map): " + "; ".join(
                  f"{k}: {s[0]} {'<' if s[2] == 'below' else '>'} {s[1]}" for k, s in success.items()) + ".", "",
              "Cells: fooling success rate / Spearman rank correlation of the map before and after / "
              "EBPG before → after on the object masks (for the active kind: each class's map on its own object "
              "in the two-object images). Input-agnostic maps ignore the image: each image gets its class's map.",
              ""]
    for arch, entry in result.get("archs", {}).items():
        lines += [f"## {arch}", "", f"Test accuracy of the original: {entry['accuracy_test']:.4f} "
                  f"(world test split, 1000 images). Images explained: {entry['facts'].get('data', '')}, "
                  f"{entry['rows'][0]['n_maps'] if entry['rows'] else 0} per method.", "",
                  "### Fine-tuning", "",
                  "| fooled explanation | fooling | penalty weight | validation accuracy | test accuracy | kept step | "
                  "fooling loss (validation) | seconds per step | × plain step |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in entry["manipulations"]:
            lines.append(
                f"| {'none (control)' if m['explanation'] == 'none' else m['explanation']} | {_KIND[m['fooling']]} | {m['settings']['fooling_weight']:g} | "
                f"{m['accuracy_before']:.3f} → {m['accuracy_after']:.3f} | "
                f"{entry['accuracy_test']:.3f} → {m['accuracy_test_after']:.3f} | {m['kept_step']} / {m['steps']} | "
                f"{m['fooling_loss_before']:.3f} → {m['fooling_loss_after']:.3f} | {m['seconds_per_step']:.2f} | "
                f"{m['cost_vs_plain_step']:.1f} |")
        by_expl: Dict[str, List[Dict]] = {}
        for row in entry["rows"]:
            by_expl.setdefault(row["explanation"], []).append(row)
        for explanation, rows in by_expl.items():
            kinds = list(dict.fromkeys(r["fooling"] for r in rows))
            title = {"soft_sise": "adaptive attack on SISE (soft-gated surrogate)",
                     "none": "none: ordinary fine-tuning, same steps, no penalty (control)"}.get(explanation, explanation)
            lines += ["", f"### Fooled explanation: {title}", "",
                      "| method | " + " | ".join(_KIND[k] for k in kinds) + " |",
                      "| --- |" + " --- |" * len(kinds)]
            for method in dict.fromkeys(r["method"] for r in rows):
                cells = []
                for k in kinds:
                    r = next(r for r in rows if r["method"] == method and r["fooling"] == k)
                    ebpg = f"{r['ebpg_before']:.2f} → {r['ebpg_after']:.2f}"
                    swappable = f" ({r['n_counted']}/{r['n_maps']} swappable)" if k == "active" and "n_counted" in r else ""
                    cells.append(f"{r['success_rate']:.2f}{swappable} / {r['spearman']:.2f} / {ebpg}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines += _block_table(rows)
        lines.append("")
    return "\n".join(lines) + "\n"


def _block_table(rows: List[Dict]) -> List[str]:
    """SISE's per-block maps (before fusion), where the benchmark recorded them."""
    with_blocks = [r for r in rows if r["method"] == "sise" and "blocks" in r]
    if not with_blocks:
        return []
    kinds = [r["fooling"] for r in with_blocks]
    lines = ["", "SISE's block maps before fusion (same cells; the fused map gates each block by the next "
             "deeper one, so the deepest block decides where the map can be):", "",
             "| SISE block | " + " | ".join(_KIND[k] for k in kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for block in with_blocks[0]["blocks"]:
        cells = [f"{b['success_rate']:.2f} / {b['spearman']:.2f} / {b['ebpg_before']:.2f} → {b['ebpg_after']:.2f}"
                 for b in (r["blocks"][block] for r in with_blocks)]
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return lines


def _show(ax, image: torch.Tensor, heat: torch.Tensor, title: str = "") -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def maps_figure(image: torch.Tensor, pair_image: torch.Tensor, columns: List[Tuple[str, Dict]],
                methods: Sequence[str], index: int, path: Path, title: str = "") -> None:
    """Rows: methods; columns: the map of image ``index`` before and after each fooling kind.

    Passive kinds show the map of the image's own class; ``active`` shows the
    disk map of a two-object (disk and square) image, next to that map before.
    """
    cells = []
    for name, maps in columns:
        if name == "active":
            cells.append(("original\n(disk map)", pair_image, {m: maps_of(columns[0][1], m, "c1", index) for m in methods}))
            cells.append(("after active\n(disk map)", pair_image, {m: maps_of(maps, m, "c1", index) for m in methods}))
        else:
            label = {"original": "original", "control": "after ordinary\nfine-tuning"}.get(name) or f"after {_KIND[name]}"
            cells.append((label, image, {m: maps_of(maps, m, "passive", index) for m in methods}))
    fig, axes = plt.subplots(len(methods), len(cells), figsize=(1.35 * len(cells), 1.35 * len(methods)), squeeze=False)
    for r, method in enumerate(methods):
        for c, (label, img, maps) in enumerate(cells):
            _show(axes[r, c], img, maps[method], label if r == 0 else "")
        axes[r, 0].set_ylabel(method, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def maps_of(maps: Dict, method: str, key: str, index: int) -> torch.Tensor:
    """The map of ``method`` for image ``index``."""
    return maps[method][key][index]
