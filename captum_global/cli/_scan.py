"""``captum-global scan``: look for a backdoor in a reference model or the user's own (private).

The scan itself is :mod:`captum_global.backdoor`'s; this module loads the
model and the clean samples, calls the scan, prints the per-class table and
writes the report folder: ``scan.json``, and for each method
``maps_<method>.png`` (one picture per class) and ``trigger_<method>.png``
(the suspected trigger of the most anomalous class).
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from captum_global.cli._args import (
    UsageError,
    add_model_options,
    classes_with_gradients,
    existing_path,
    image_folder,
    image_tensor_file,
    int_in,
    int_list,
    model_from_args,
    output_folder,
    positive_float,
    prepare_output,
)

METHODS = ("ours", "neural-cleanse")


def _report_files(methods) -> tuple:
    """The names of the files a scan with ``methods`` writes, by exact name: ``--force`` removes
    these and nothing else (a user's "maps_holiday.png" in the folder is not ours)."""
    return ("scan.json",) + tuple(f"{kind}_{method}.png" for kind in ("maps", "trigger") for method in methods)


SCAN_FILES = _report_files(METHODS)
# Reference-world images no reference model was trained on (the demo's test split).
_CLEAN_SEED = 20_261_123


def add_parser(sub) -> argparse.ArgumentParser:
    scan = sub.add_parser(
        "scan", help="scan a model (a reference model or your own) for a backdoor trigger",
        description="Look for a class that a small, input-agnostic change reaches too easily (a planted "
                    "backdoor): per-class statistics, their MAD anomaly index over classes, the suspected "
                    "trigger. Prints a per-class table and writes a report folder.")
    add_model_options(scan, default_variant="patch")
    scan.add_argument("--clean", type=existing_path, metavar="DIR|FILE",
                      help="clean samples: a folder of images (resized to the input shape) or a tensor file "
                           "[N, C, H, W] in [0, 1] (.safetensors, or torch.save read with weights_only=True)")
    scan.add_argument("--max-clean", type=int_in(1, 100_000), default=64,
                      help="use at most this many clean samples (default 64)")
    scan.add_argument("--method", choices=["ours", "neural-cleanse", "both"], default="ours",
                      help="our input-agnostic scan, Neural Cleanse, or both (default ours)")
    scan.add_argument("--classes", type=int_list, help="class indices to scan, comma separated (default all; "
                                                       "at least 3 for the anomaly index)")
    scan.add_argument("--steps", type=int_in(1, 100_000), default=None,
                      help="length of the optimisation: n_steps of ours (optimisation steps, all classes "
                           "together), n_epochs of Neural Cleanse (passes over the clean samples per class); "
                           "default: each method's own")
    scan.add_argument("--threshold", type=positive_float, default=2.0,
                      help="anomaly index above which a class is flagged (default 2, as Neural Cleanse)")
    scan.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of the optimisation")
    scan.add_argument("--out", type=output_folder, default=Path("scan-out"), help="report folder (default scan-out)")
    scan.add_argument("--force", action="store_true", help="overwrite the report in an existing --out folder")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    return scan


def _clean_samples(args: argparse.Namespace, input_shape, reference: bool) -> Optional[Tensor]:
    if args.clean is None:
        if not reference:
            return None
        from captum_global.world import make_dataset

        return make_dataset(args.max_clean, seed=_CLEAN_SEED).images
    if args.clean.is_dir():
        files = image_folder(args.clean, "--clean", input_shape)
        images = torch.stack([files[i] for i in range(min(len(files), args.max_clean))])
    else:
        images = image_tensor_file(args.clean, "--clean", input_shape, args.max_clean)
    if images.shape[0] < 2:
        # the scan judges a stamp's success on other images than the one it was found on
        raise UsageError(f"--clean must give at least 2 clean images, got {images.shape[0]} "
                         "(from the folder or file, after --max-clean)")
    return images


def _run_one(method: str, model, example: Tensor, clean: Optional[Tensor], args, trigger_mask):
    from captum_global.backdoor import neural_cleanse, scan_for_backdoor

    options: Dict[str, Any] = dict(classes=args.classes, trigger_mask=trigger_mask, threshold=args.threshold,
                                   seed=args.seed, show_progress=not args.quiet)
    if method == "neural-cleanse":
        if args.steps is not None:
            options["n_epochs"] = args.steps
        return neural_cleanse(model, clean, **options)
    if args.steps is not None:
        options["n_steps"] = args.steps
    return scan_for_backdoor(model, example, clean_inputs=clean, **options)


def _figures(out: Path, method: str, scan, class_names: List[str], highlight) -> None:
    from matplotlib.figure import Figure

    from captum_global import viz

    names = [class_names[c] for c in scan.classes]
    viz.save(viz.class_map_grid({method: scan.maps}, names, highlight=highlight,
                                title=f"{method}: per-class maps (flagged {scan.flagged or 'none'})"),
             out / f"maps_{method}.png")
    row = scan.classes.index(scan.suspect)
    mask = scan.trigger_masks[row].detach().float().cpu()
    pattern = scan.trigger_patterns[row].detach().float().cpu().clamp(0, 1)
    channels = pattern.shape[0]
    # an image has 1 or 3 channels; other inputs (2, 4, 5, ... channels) are drawn as their channel mean
    note = "" if channels in (1, 3) else f" (mean of {channels} channels)"

    def picture(image: Tensor) -> Tensor:
        return image.permute(1, 2, 0).squeeze(-1) if channels in (1, 3) else image.mean(0)

    # outside pyplot (as every figure of viz): nothing stays registered after the command, also when it is
    # called repeatedly in one process
    fig = Figure(figsize=(6, 2.3))
    axes = fig.subplots(1, 3)
    shown = [(mask, "mask", "gray"), (picture(pattern), "pattern" + note, None),
             (picture(pattern * mask), "mask x pattern" + note, None)]
    for ax, (image, title, cmap) in zip(axes, shown):
        ax.imshow(image.numpy(), cmap=cmap or ("gray" if image.dim() == 2 else None), vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{method}: suspected trigger of class {scan.suspect} ({class_names[scan.suspect]})", fontsize=9)
    fig.tight_layout()
    viz.save(fig, out / f"trigger_{method}.png")


def run(args: argparse.Namespace) -> int:
    methods = list(METHODS) if args.method == "both" else [args.method]
    model, description, input_shape, trigger = model_from_args(args)
    reference = "reference" in description
    # both scans optimise a trigger through the gradient of the scores with respect to the input
    num_classes = classes_with_gradients(model, input_shape, "the scan")
    if num_classes < 3:
        raise UsageError(f"the model has {num_classes} classes; the anomaly index needs at least 3")
    if args.classes is not None:
        if len(args.classes) < 3 or max(args.classes) >= num_classes:
            raise UsageError(f"--classes needs at least 3 distinct classes in 0..{num_classes - 1}, "
                             f"got {args.classes}")
    if "neural-cleanse" in methods and args.clean is None and not reference:
        raise UsageError(f"--method {args.method} runs Neural Cleanse, which needs clean samples: "
                         "pass --clean DIR|FILE")
    clean = _clean_samples(args, input_shape, reference)  # a bad --clean leaves no folder behind
    prepare_output(args.out, args.force, SCAN_FILES)  # refuse before minutes of work
    trigger_mask = None if trigger is None else trigger.mask(*input_shape[1:])
    if reference:
        from captum_global.world import CLASS_NAMES

        class_names = list(CLASS_NAMES)
    else:
        class_names = [f"class {c}" for c in range(num_classes)]
    example = torch.zeros(1, *input_shape)
    report: Dict[str, Any] = {"model": description, "settings": {
        "steps": args.steps, "threshold": args.threshold, "seed": args.seed, "classes": args.classes,
        "clean_samples": 0 if clean is None else int(clean.shape[0])}, "methods": {}}
    if reference:
        print("classes: " + ", ".join(f"{c} {name}" for c, name in enumerate(class_names)))
    for method in methods:
        scan = _run_one(method, model, example, clean, args, trigger_mask)
        print(f"== {method} ==")
        print(scan.summary(), flush=True)
        _figures(args.out, method, scan, class_names, trigger_mask)
        report["methods"][method] = scan.as_dict()
    (args.out / "scan.json").write_text(json.dumps(report, indent=2))
    print(f"report written to {args.out}: {', '.join(sorted(_report_files(methods)))}")  # not the user's other files
    return 0
