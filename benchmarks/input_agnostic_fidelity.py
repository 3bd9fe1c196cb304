"""Class specificity and fidelity of InputAgnosticSaliency on the reference models.

For every model and two settings (``defaults``: the library's defaults;
``previous``: uniform noise and the raw-magnitude map of the earlier
defaults, rebuilt through the public API), it computes the maps of the five
classes with two seeds and measures:

- class specificity: the Pearson correlation of a class's map across the
  two seeds (same class), against the mean correlation between the maps of
  different classes (seed 0); maps about the class have the first well
  above the second;
- fidelity: the share of held-out real images of the other classes that
  the model assigns to class ``c`` once ``rho_c`` (raw, and refined with the
  setting's refinement rescaled to the same l2 norm) is added, with the
  unperturbed rate as baseline;
- for backdoored models with a local trigger: the share of the target
  class map's energy on the trigger region, against the other classes'.

    python -m benchmarks.input_agnostic_fidelity                 # the six original models
    python -m benchmarks.input_agnostic_fidelity --models vgg_patch --settings defaults

Writes benchmarks/results/input_agnostic.{md,json} and docs/figures/input_agnostic_maps.png.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from captum_global.attr import InputAgnosticSaliency
from captum_global.metrics import trigger_energy_share
from captum_global.world import make_dataset, reference_zoo

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
ORIGINAL = "vgg_clean,vgg_patch,vgg_blended,resnet_clean,resnet_patch,resnet_blended"
CLASSES = 5


def previous_refine(rho):
    # The earlier defaults' map: raw magnitude of the pixels kept by the smooth refinement.
    return InputAgnosticSaliency.refine_perturbation(rho, "smooth", 1.0, 0.5)


SETTINGS = {
    "defaults": {},
    "previous": dict(distribution="uniform", refine=previous_refine),
}


def pearson(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-12))


def success(model, base, rho, c):
    with torch.no_grad():
        return float((model((base + rho).clamp(0, 1)).argmax(1) == c).float().mean())


def run(model, setting, seed, args):
    kwargs = dict(SETTINGS[setting])
    if args.n_steps:
        kwargs["n_steps"] = args.n_steps
    if args.samples_per_step:
        kwargs["samples_per_step"] = args.samples_per_step
    start = time.perf_counter()
    maps, rho = InputAgnosticSaliency(model).attribute(
        torch.zeros(CLASSES, 3, 64, 64), target=list(range(CLASSES)), seed=seed, return_perturbation=True, **kwargs)
    return maps[:, 0], rho, time.perf_counter() - start


def measure(entry, setting, args, held):
    model = entry.load()
    maps0, rho, seconds = run(model, setting, 0, args)
    maps1, _, _ = run(model, setting, 1, args)
    same = [pearson(maps0[c], maps1[c]) for c in range(CLASSES)]
    cross = [pearson(maps0[a], maps0[b]) for a in range(CLASSES) for b in range(a + 1, CLASSES)]
    refine = SETTINGS[setting].get("refine", "smooth")
    refined = InputAgnosticSaliency.refine_perturbation(rho) if refine == "smooth" else refine(rho)
    norm = rho.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    refined = refined * norm / refined.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    fidelity = {"base": [], "raw": [], "refined": []}
    for c in range(CLASSES):
        others = held.images[held.labels != c]
        fidelity["base"].append(success(model, others, torch.zeros_like(rho[c]), c))
        fidelity["raw"].append(success(model, others, rho[c], c))
        fidelity["refined"].append(success(model, others, refined[c], c))
    row = dict(model=entry.name, setting=setting, same_class=same, same_class_mean=sum(same) / len(same),
               between_classes_mean=sum(cross) / len(cross), seconds=seconds,
               fidelity={k: sum(v) / len(v) for k, v in fidelity.items()})
    if entry.trigger is not None and entry.kind in ("patch", "blended"):
        share = trigger_energy_share(maps0, entry.trigger.mask(64, 64)).tolist()
        t = entry.target_class
        row["trigger_energy"] = {"target": share[t], "others_mean": (sum(share) - share[t]) / (CLASSES - 1),
                                 "target_is_top": max(range(CLASSES), key=lambda i: share[i]) == t}
    return row, maps0


def markdown(rows, command):
    lines = ["# InputAgnosticSaliency: class specificity and fidelity (reference models)", "",
             f"Command: `{command}`; torch {torch.__version__}, one thread.", "",
             "Correlation = Pearson correlation of heat maps: a class's map across seeds 0 and 1 (same class, "
             "mean over the 5 classes) against the mean over pairs of different classes (seed 0). Success = share "
             "of 100 held-out real images of the other classes assigned to class c with rho_c added (mean over "
             "classes): base = no perturbation, raw = rho, refined = the setting's refinement rescaled to rho's "
             "l2 norm.", "",
             "| model | setting | same class across seeds | between classes | success base / raw / refined "
             "| trigger energy: target / others (top?) | s per run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        f = r["fidelity"]
        trig = "-"
        if "trigger_energy" in r:
            t = r["trigger_energy"]
            trig = f"{t['target']:.3f} / {t['others_mean']:.3f} ({'yes' if t['target_is_top'] else 'no'})"
        lines.append(f"| {r['model']} | {r['setting']} | {r['same_class_mean']:.2f} | {r['between_classes_mean']:.2f} "
                     f"| {f['base']:.2f} / {f['raw']:.2f} / {f['refined']:.2f} | {trig} | {r['seconds']:.0f} |")
    lines += ["", "Per-class correlations: `input_agnostic.json`."]
    return "\n".join(lines) + "\n"


def save_figure(figure_maps, path):
    from matplotlib.figure import Figure

    keys = list(figure_maps)
    fig = Figure(figsize=(8, 1.7 * len(keys)))
    axes = fig.subplots(len(keys), CLASSES, squeeze=False)
    for row, key in enumerate(keys):
        for c in range(CLASSES):
            ax = axes[row][c]
            ax.imshow(figure_maps[key][c].numpy(), cmap="inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"class {c}", fontsize=8)
        axes[row][0].set_ylabel("\n".join(key), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=ORIGINAL, help="comma-separated zoo names")
    ap.add_argument("--settings", default="defaults,previous")
    ap.add_argument("--n-steps", type=int, default=0, help="0: the library default")
    ap.add_argument("--samples-per-step", type=int, default=0, help="0: the library default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "input_agnostic"))
    ap.add_argument("--figure", default=str(FIGURES / "input_agnostic_maps.png"), help="'' for none")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = {e.name: e for e in reference_zoo()}
    held = make_dataset(100, seed=20_261_123)
    command = "python -m benchmarks.input_agnostic_fidelity " + " ".join(argv if argv is not None else sys.argv[1:])
    rows, figure_maps = [], {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        for setting in args.settings.split(","):
            row, maps = measure(zoo[name], setting, args, held)
            rows.append(row)
            figure_maps[(name, setting)] = maps
            print(json.dumps(row), flush=True)
            out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
            out.with_suffix(".md").write_text(markdown(rows, command.strip()))
    if args.figure:
        save_figure(figure_maps, Path(args.figure))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
