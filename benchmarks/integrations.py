"""quantus and pytorch-grad-cam scores of every line-up method, through captum_global.integrations.

For each reference CNN (clean weights) and a fixed set of test images, every
method of the line-up (SISE, SISE with a 25% budget, Captum's Grad-CAM,
Occlusion, Integrated Gradients), InputAgnosticSaliency and a random map
(the floor) is scored by quantus 0.6 metrics through
:func:`captum_global.integrations.quantus.explain` (one of each family:
faithfulness, robustness, randomisation, localisation) and by
pytorch-grad-cam's ROAD and confidence-change metrics through
:func:`captum_global.integrations.grad_cam.attributions_to_cams`.

    python -m benchmarks.integrations --archs vgg,resnet --n-images 16

Writes benchmarks/results/integrations.{md,json}; ``--figure PATH`` also
draws grad-cam's overlays of a few maps (the figure of docs/use/integrations.md).
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from captum_global.integrations import InputAgnosticWarning, attributions_to_cams, explain
from captum_global.lineup import LINEUP
from captum_global.world import load_reference_model, make_dataset

RESULTS = Path(__file__).parent / "results"

# (column, better direction, what it measures)
COLUMNS = [
    ("faithfulness_correlation", "higher", "quantus FaithfulnessCorrelation (50 random subsets of 224 features)"),
    ("pixel_flipping_auc", "lower", "quantus PixelFlipping, mean class probability over the flipping curve"),
    ("max_sensitivity", "lower", "quantus MaxSensitivity (5 samples, radius 0.1)"),
    ("mprt_last", "lower", "quantus MPRT, rank correlation with the fully randomised model's map"),
    ("random_logit", "lower", "quantus RandomLogit, similarity to a random other class's map"),
    ("attribution_localisation", "higher", "quantus AttributionLocalisation, share of the map inside the object"),
    ("pointing_game", "higher", "quantus PointingGame, the map's peak inside the object"),
    ("road_combined", "higher", "grad-cam ROADCombined (20/40/60/80 %)"),
    ("cam_mult_change", "higher", "grad-cam CamMultImageConfidenceChange (logit change on image x map)"),
]


def random_maps(model, inputs, targets, **kwargs):
    """The floor: a uniform random map per image (seeded by the batch, so repeated calls agree)."""
    rng = np.random.default_rng(int(np.asarray(inputs).sum() * 1e3) % (2**32))
    return rng.random((len(inputs), 1) + tuple(np.shape(inputs)[-2:])).astype(np.float32)


def methods(ias_steps):
    table = {spec.name: {"method": spec} for spec in LINEUP}
    table["InputAgnosticSaliency"] = {"method": "InputAgnosticSaliency", "n_steps": ias_steps, "samples_per_step": 16}
    table["random map"] = None
    return table


def _refused(error):
    """quantus refuses a batch whose maps are all zero (e.g. Grad-CAM after its ReLU finds no evidence)."""
    if "all equal to zero" not in str(error):
        raise error
    return None


def quantus_scores(model, x, y, masks, explain_func, kwargs):
    import quantus

    common = dict(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain_func,
                  explain_func_kwargs=kwargs)
    a = explain_func(model, x, y, **kwargs)
    runs = {
        "faithfulness_correlation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=50, subset_size=224, perturb_baseline="black", disable_warnings=True)(a_batch=a, **common),
        # quantus 0.6 computes its AUC with np.trapz, which NumPy 2.4 removed: the mean of the curve instead
        "pixel_flipping_auc": lambda: np.mean(quantus.PixelFlipping(
            features_in_step=256, perturb_baseline="black", disable_warnings=True)(a_batch=a, **common), axis=1),
        "max_sensitivity": lambda: quantus.MaxSensitivity(nr_samples=5, lower_bound=0.1, disable_warnings=True)(
            **common),
        "mprt_last": lambda: quantus.MPRT(return_last_correlation=True, seed=0, disable_warnings=True)(**common),
        "random_logit": lambda: quantus.RandomLogit(num_classes=5, seed=0, disable_warnings=True)(
            a_batch=a, **common),
        "attribution_localisation": lambda: quantus.AttributionLocalisation(disable_warnings=True)(
            a_batch=a, s_batch=masks, **common),
        "pointing_game": lambda: quantus.PointingGame(disable_warnings=True)(a_batch=a, s_batch=masks, **common),
    }
    scores = {}
    for name, run in runs.items():
        np.random.seed(0)  # quantus draws from NumPy's global generator: the same draws for every method
        try:
            scores[name] = np.ravel(run()).tolist()
        except AssertionError as error:
            scores[name] = _refused(error)
    return a, scores


def grad_cam_scores(model, images, labels, maps):
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    cams = attributions_to_cams(torch.from_numpy(maps))
    return {
        "road_combined": np.ravel(ROADCombined(percentiles=[20, 40, 60, 80])(images, cams, targets, model)).tolist(),
        "cam_mult_change": np.ravel(CamMultImageConfidenceChange()(images, cams, targets, model)).tolist(),
    }


def draw_figure(path, rows):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    images, panels = rows
    fig, axes = plt.subplots(len(images), len(panels) + 1, figsize=(1.6 * (len(panels) + 1), 1.7 * len(images)))
    for i, image in enumerate(images):
        rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
        axes[i, 0].imshow(rgb)
        axes[i, 0].set_title("image" if i == 0 else "", fontsize=8)
        for j, (name, cams) in enumerate(panels.items(), start=1):
            axes[i, j].imshow(show_cam_on_image(rgb, cams[i], use_rgb=True))
            axes[i, j].set_title(name if i == 0 else "", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(path, model, data):
    """grad-cam overlays of the line-up's Grad-CAM, SISE and InputAgnosticSaliency on four images."""
    x, y = data.images[:4].numpy(), data.labels[:4].numpy()
    grad_cam = next(spec for spec in LINEUP if spec.name == "Grad-CAM")
    panels = {
        "Grad-CAM": explain(model, x, y, method=grad_cam),
        "SISE": explain(model, x, y, method="SISE"),
        "InputAgnosticSaliency": explain(model, x, y, method="InputAgnosticSaliency", n_steps=30),
    }
    draw_figure(path, (data.images[:4], {k: attributions_to_cams(torch.from_numpy(v)) for k, v in panels.items()}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="vgg,resnet")
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the test images")
    parser.add_argument("--ias-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", default=None, help="also write grad-cam overlays (PNG) here")
    parser.add_argument("--name", default="integrations")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run of this command")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", InputAgnosticWarning)  # the caveat is stated in the table
    data = make_dataset(args.n_images, seed=args.seed)
    x, y = data.images.numpy(), data.labels.numpy()
    masks = data.object_masks.numpy()[:, None].astype(np.float32)
    command = (f"python -m benchmarks.integrations --archs {args.archs} --n-images {args.n_images} "
               f"--seed {args.seed} --ias-steps {args.ias_steps} --threads {args.threads}")
    if args.figure:
        figure(args.figure, load_reference_model(args.archs.split(",")[0], "clean"), data)
    results, done_seconds = [], 0.0
    saved = RESULTS / f"{args.name}.json"
    if args.resume and saved.exists():
        previous = json.loads(saved.read_text())
        if previous["meta"]["command"] == command:
            results = previous["results"]
            done_seconds = sum(r["seconds"] for r in results)
    start = time.perf_counter()
    for arch in args.archs.split(","):
        model = load_reference_model(arch, "clean")
        for name, kwargs in methods(args.ias_steps).items():
            if any(r["arch"] == arch and r["method"] == name for r in results):
                continue
            t0 = time.perf_counter()
            explain_func = random_maps if kwargs is None else explain
            maps, scores = quantus_scores(model, x, y, masks, explain_func, kwargs or {})
            scores.update(grad_cam_scores(model, data.images, data.labels, maps))
            results.append({"arch": arch, "method": name, "seconds": time.perf_counter() - t0,
                            "scores": {k: None if v is None else [float(e) for e in v] for k, v in scores.items()}})
            print(arch, name, {k: None if v is None else round(float(np.mean(v)), 3) for k, v in scores.items()},
                  f"{results[-1]['seconds']:.0f}s", flush=True)
            # written after every row, so an interrupted run keeps what it measured (see --resume)
            write(results, command, done_seconds + time.perf_counter() - start, args)


def write(results, command, total, args):
    import quantus
    import pytorch_grad_cam

    RESULTS.mkdir(exist_ok=True)
    meta = {"command": command, "seconds": total, "torch": torch.__version__, "numpy": np.__version__,
            "quantus": quantus.__version__, "grad_cam": getattr(pytorch_grad_cam, "__version__", "1.5.x"),
            "columns": [{"name": c, "better": b, "what": w} for c, b, w in COLUMNS]}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        "# quantus and pytorch-grad-cam scores of the line-up",
        "",
        f"Command: `{command}`; {total:.0f} s in all; torch {torch.__version__}, NumPy {np.__version__}, "
        f"quantus {quantus.__version__}. Means over {args.n_images} test images of the reference world "
        "(clean reference CNNs).",
        "",
        "| column | better | what |",
        "| --- | --- | --- |",
    ] + [f"| {c} | {b} | {w} |" for c, b, w in COLUMNS]
    for arch in dict.fromkeys(r["arch"] for r in results):
        lines += ["", f"## {arch}", "", "| method | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
                  "| --- |" + " ---: |" * len(COLUMNS)]
        for row in (r for r in results if r["arch"] == arch):
            cells = []
            for column, _, _ in COLUMNS:
                if row["scores"][column] is None:
                    cells.append("refused (all-zero maps)")
                    continue
                values = np.asarray(row["scores"][column], dtype=float)
                undefined = int(np.isnan(values).sum())  # e.g. a rank correlation with a constant map
                value = float(np.nanmean(values)) if undefined < len(values) else float("nan")
                agnostic = row["method"] == "InputAgnosticSaliency" and column == "max_sensitivity"
                cells.append(f"{value:.3f}" + (" (by construction)" if agnostic else "")
                             + (f" ({undefined} undefined)" if undefined else ""))
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
