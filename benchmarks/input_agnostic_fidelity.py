"""Fidelity of InputAgnosticSaliency on the reference world.

Measures, per reference model (``{vgg, resnet} x {clean, patch, blended}``):

- targeted success: share of fresh noise samples, and of held-out real
  images of the other classes, that the model assigns to class ``c`` once
  ``rho_c`` is added (and clipped to [0, 1]); for the raw ``rho`` and for the
  refined one rescaled to the same l2 norm; the no-perturbation rate as
  baseline;
- seed stability: Pearson correlation of the heat maps of one class across
  two seeds, against the correlation between different classes;
- backdoor signature: share of each class map's energy inside the trigger
  region (``trigger_energy_share``), and the MAD anomaly index over classes
  (``mad_anomaly_index``) of that share;

for two noise distributions: ``uniform`` (input-agnostic, the default) and
``real`` (a pool of held-out real images as ``D``, a smaller radius).

Writes ``benchmarks/results/input_agnostic.{json,md}`` and
``docs/figures/input_agnostic_maps.png``. Run::

    .venv/bin/python benchmarks/input_agnostic_fidelity.py

Models whose weights are not shipped are skipped (never trained here).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from captum_global.attr import InputAgnosticSaliency
from captum_global.metrics import mad_anomaly_index, trigger_energy_share
from captum_global.world import load_reference_model, make_dataset, reference_target_class, reference_trigger
from captum_global.world import training as _training

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def success(model, base, rho, c):
    """Share of ``base`` (clipped ``base + rho``) that the model assigns to ``c``."""
    with torch.no_grad():
        return (model((base + rho).clamp(0, 1)).argmax(1) == c).float().mean().item()


def pearson(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return (a @ b / (a.norm() * b.norm()).clamp(min=1e-12)).item()


def run_one(model, dist_name, dist, radius, args, seed, real_eval, labels_eval, noise_eval, mask):
    ias = InputAgnosticSaliency(model)
    n_cls = 5
    t0 = time.time()
    maps, rho = ias.attribute(
        torch.zeros(n_cls, 3, 64, 64), target=list(range(n_cls)), distribution=dist, radius=radius,
        n_steps=args.n_steps, samples_per_step=args.samples_per_step, seed=seed, return_perturbation=True)
    seconds = time.time() - t0
    norm = rho.flatten(1).norm(dim=1)

    def same_norm(r):
        return r * (norm / r.flatten(1).norm(dim=1).clamp(min=1e-12)).view(-1, 1, 1, 1)

    refined = same_norm(ias.refine_perturbation(rho))  # the default refinement ("smooth")
    blurred = same_norm(ias.refine_perturbation(rho, "blur"))
    rows = []
    for c in range(n_cls):
        others = real_eval[labels_eval != c]
        rows.append(dict(
            cls=c,
            noise_base=success(model, noise_eval, torch.zeros_like(rho[c]), c),
            noise_raw=success(model, noise_eval, rho[c], c),
            noise_refined=success(model, noise_eval, refined[c], c),
            real_base=success(model, others, torch.zeros_like(rho[c]), c),
            real_raw=success(model, others, rho[c], c),
            real_refined=success(model, others, refined[c], c),
            real_blur=success(model, others, blurred[c], c),
        ))
    share = trigger_energy_share(maps[:, 0], mask) if mask is not None else None
    return dict(dist=dist_name, radius=radius, seed=seed, seconds=round(seconds, 1),
                evaluations=ias.last_num_evaluations, classes=rows,
                trigger_share=None if share is None else [round(v, 4) for v in share.tolist()],
                trigger_mad=None if share is None else [round(v, 2) for v in mad_anomaly_index(share).tolist()],
                ), maps[:, 0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="vgg,resnet")
    ap.add_argument("--variants", default="clean,patch,blended")
    ap.add_argument("--dists", default="uniform,real")
    ap.add_argument("--n-steps", type=int, default=30)
    ap.add_argument("--samples-per-step", type=int, default=8)
    ap.add_argument("--radius-uniform", type=float, default=8.0)
    ap.add_argument("--radius-real", type=float, default=3.0)
    ap.add_argument("--stability-seed", type=int, default=1, help="second seed (uniform D, clean and patch models); -1: skip")
    ap.add_argument("--stability-archs", default="vgg", help="archs whose clean and patch models get the second seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "input_agnostic"))
    ap.add_argument("--figure", default=str(FIGURES / "input_agnostic_maps.png"), help="'' for none")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    held = make_dataset(100, seed=20_261_123)          # evaluation images
    pool = make_dataset(200, seed=20_261_124).images   # D = "real" samples, disjoint seed
    noise_eval = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(99))
    target = reference_target_class()
    report = dict(settings=vars(args), target_class=target, models=[],
                  argv=" ".join(argv if argv is not None else __import__("sys").argv[1:]))
    figure_maps = {}
    for arch in args.archs.split(","):
        for variant in args.variants.split(","):
            if not (_training.WEIGHTS_DIR / f"{arch}_{variant}.safetensors").exists():
                report["models"].append(dict(arch=arch, variant=variant, skipped="weights not shipped"))
                continue
            model = load_reference_model(arch, variant)
            entry = dict(arch=arch, variant=variant, runs=[])
            masks = {t: reference_trigger(t).mask(64, 64) for t in ("patch", "blended")}
            mask = masks.get(variant)
            for dist_name in args.dists.split(","):
                dist = pool if dist_name == "real" else dist_name
                radius = args.radius_real if dist_name == "real" else args.radius_uniform
                run, maps = run_one(model, dist_name, dist, radius, args, 0, held.images, held.labels, noise_eval, mask)
                # On the clean model, score both trigger regions (the "same class on clean" baseline).
                if variant == "clean":
                    run["trigger_share_clean"] = {t: [round(v, 4) for v in trigger_energy_share(maps, m).tolist()]
                                                  for t, m in masks.items()}
                entry["runs"].append(run)
                figure_maps[(arch, variant, dist_name)] = maps
                print(arch, variant, dist_name, json.dumps(run), flush=True)
            if args.stability_seed >= 0 and variant in ("clean", "patch") and "uniform" in args.dists \
                    and arch in args.stability_archs.split(","):
                _, maps2 = run_one(model, "uniform", "uniform", args.radius_uniform, args, args.stability_seed,
                                   held.images, held.labels, noise_eval, None)
                maps1 = figure_maps[(arch, variant, "uniform")]
                same = [pearson(maps1[c], maps2[c]) for c in range(5)]
                cross = [pearson(maps1[a], maps1[b]) for a in range(5) for b in range(5) if a < b]
                entry["stability"] = dict(same_class_across_seeds=[round(v, 3) for v in same],
                                          across_classes_mean=round(sum(cross) / len(cross), 3))
                print(arch, variant, "stability", entry["stability"], flush=True)
            report["models"].append(entry)
    report["total_seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    if args.figure:
        save_figure(figure_maps, Path(args.figure))
    print(out.with_suffix(".md").read_text())


def markdown(report):
    s = report["settings"]
    lines = [
        "# InputAgnosticSaliency fidelity (reference world)", "",
        f"Command: `.venv/bin/python benchmarks/input_agnostic_fidelity.py {report.get('argv', '')}` (n_steps={s['n_steps']}, "
        f"samples_per_step={s['samples_per_step']}, l2 radius {s['radius_uniform']} for uniform D, "
        f"{s['radius_real']} for real D, seed 0). Target class of the backdoors: {report['target_class']}. "
        f"Total {report['total_seconds']} s on CPU.", "",
        "Success = share predicted as class c (mean over classes; base = no perturbation, raw = + rho, "
        "ref = + refined rho (default refine='smooth') rescaled to rho's l2 norm, blur = refine='blur' "
        "rescaled likewise). Noise = 64 fresh uniform samples; real = 100 "
        "held-out images of the other classes.", "",
        "| arch | variant | D | noise base | noise raw | noise ref | real base | real raw | real ref | real blur | "
        "trigger share target / others / same class on clean | MAD index of target (argmax?) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    clean_share = {}
    for m in report["models"]:
        if m.get("variant") == "clean":
            for r in m.get("runs", []):
                clean_share[(m["arch"], r["dist"])] = r.get("trigger_share_clean")
    t = report["target_class"]
    for m in report["models"]:
        if "skipped" in m:
            lines.append(f"| {m['arch']} | {m['variant']} | - | skipped: {m['skipped']} ||||||||||")
            continue
        for r in m["runs"]:
            mean = {k: sum(c[k] for c in r["classes"]) / len(r["classes"]) for k in r["classes"][0] if k != "cls"}
            trig, mad = "-", "-"
            if r["trigger_share"] is not None:
                sh = r["trigger_share"]
                others = [v for i, v in enumerate(sh) if i != t]
                cs = clean_share.get((m["arch"], r["dist"]))
                on_clean = f"{cs[m['variant']][t]:.3f}" if cs else "n/a"
                trig = f"{sh[t]:.3f} / {sum(others) / len(others):.3f} / {on_clean}"
                top = max(range(len(sh)), key=lambda i: sh[i])
                mad = f"{r['trigger_mad'][t]:.2f} ({'yes' if top == t else 'no, ' + str(top)})"
            lines.append(
                f"| {m['arch']} | {m['variant']} | {r['dist']} | {mean['noise_base']:.2f} | {mean['noise_raw']:.2f} | "
                f"{mean['noise_refined']:.2f} | {mean['real_base']:.2f} | {mean['real_raw']:.2f} | "
                f"{mean['real_refined']:.2f} | {mean['real_blur']:.2f} | {trig} | {mad} | {r['seconds']} |")
    lines += ["", "Trigger area share of the image: patch 36/4096 = 0.009, blended 576/4096 = 0.141.", "",
              "Seed stability (uniform D): Pearson correlation of a class's map across seeds 0 and "
              f"{s['stability_seed']} vs mean correlation between classes (seed 0).", "",
              "| arch | variant | same class across seeds (per class) | across classes |", "|---|---|---|---|"]
    for m in report["models"]:
        if "stability" in m:
            st = m["stability"]
            lines.append(f"| {m['arch']} | {m['variant']} | {st['same_class_across_seeds']} | {st['across_classes_mean']} |")
    lines += ["", "Per-class success rates, trigger shares and MAD indices: `input_agnostic.json`."]
    return "\n".join(lines) + "\n"


def save_figure(figure_maps, path):
    if not figure_maps:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(figure_maps)
    fig, axes = plt.subplots(len(keys), 5, figsize=(8, 1.7 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        for c in range(5):
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
    plt.close(fig)


if __name__ == "__main__":
    main()
