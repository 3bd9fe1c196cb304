"""What the scan's suspected triggers are: three checks that did not separate a backdoor from natural ease.

For each model, ``scan_for_backdoor`` runs with its defaults at two seeds
on the clean set of ``benchmarks/backdoor_scan.py``; every class's stamp
(mask and pattern) is then judged on held-out clean images of another
split:

1. Seed agreement: the cosine between the seed-0 and seed-1 masks of the
   class. A planted patch is one place; if the search found it, both
   seeds' masks would sit on it.
2. Pattern specificity: the stamp's success with its own pattern, and with
   the same mask filled with uniform noise (mean of 4 draws) or with grey
   0.5. The natural easy class ("ring") could have been the class a
   destroyed region falls into, whatever fills it; a trigger needs its
   pattern.
3. The stamped images' features (input of the last linear layer, images of
   other classes that the stamp flips): their spread (total variance over
   mean squared norm) divided by the spread of the class's own clean
   images, and the mean softmax confidence, against the clean images'.

Also the planted patch triggers themselves, moved to the other corners and
the centre: the share of held-out images of other classes they send to the
target.

    python -m benchmarks.backdoor_stamp_checks
    python -m benchmarks.backdoor_stamp_checks --models vgg_patch,vgg_clean

Writes benchmarks/results/backdoor_stamp_checks.{md,json}.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.backdoor_scan import CLEAN_SEED
from captum_global.backdoor import scan_for_backdoor
from captum_global.world import make_dataset, reference_zoo
from captum_global.world.triggers import make_trigger

RESULTS = Path(__file__).parent / "results"
HELD_SEED = 20_261_129      # held-out judging images: a split no zoo model and no scan saw
MODELS = "vgg_clean,vgg_clean_s1,vgg_patch,vgg_patch_s1,resnet_clean_s1,resnet_patch,resnet_patch_s2"
LOCATIONS = ("bottom-right", "bottom-left", "top-left", "top-right", "center")


def features_and_logits(model: nn.Module, images: torch.Tensor):
    """Input of the model's last linear layer, and the logits."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen = {}
    handle = last.register_forward_hook(lambda module, inputs, output: seen.update(features=inputs[0].detach()))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    return seen["features"], logits


def spread(features: torch.Tensor) -> float:
    return float(features.var(0).sum() / features.pow(2).sum(1).mean())


def stamp_checks(model: nn.Module, scans, held: torch.Tensor, labels: torch.Tensor, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    clean_features, clean_logits = features_and_logits(model, held)
    first, second = scans
    rows = []
    for k, c in enumerate(first.classes):
        mask, pattern = first.trigger_masks[k][None, None], first.trigger_patterns[k][None]

        def success(fill: torch.Tensor) -> float:
            with torch.no_grad():
                return float((model((1 - mask) * held + mask * fill).argmax(1) == c).float().mean())

        noise = sum(success(torch.rand(pattern.shape, generator=generator)) for _ in range(4)) / 4
        feats, logits = features_and_logits(model, (1 - mask) * held + mask * pattern)
        flipped = (logits.argmax(1) == c) & (labels != c)
        own = labels == c
        rows.append({
            "class": c,
            "mask_l1": [float(first.statistics["mask_l1"][k]), float(second.statistics["mask_l1"][k])],
            "seed_cosine": float(F.cosine_similarity(first.trigger_masks[k].flatten(),
                                                     second.trigger_masks[k].flatten(), dim=0)),
            "success": success(pattern), "success_noise_fill": noise,
            "success_grey_fill": success(torch.full_like(pattern, 0.5)),
            "flipped": int(flipped.sum()),
            "spread_ratio": spread(feats[flipped]) / spread(clean_features[own]) if int(flipped.sum()) > 1 else None,
            "confidence": [float(logits[flipped].softmax(1)[:, c].mean()) if int(flipped.sum()) else None,
                           float(clean_logits[own].softmax(1)[:, c].mean())],
        })
    return rows


def moved_patch(model: nn.Module, entry, held: torch.Tensor, labels: torch.Tensor):
    """Attack success of the planted patch placed at each of LOCATIONS."""
    settings = entry.settings["trigger"]
    size = held.shape[-1]
    others = held[labels != entry.target_class]
    out = {}
    for location in LOCATIONS:
        trigger = make_trigger({**settings, "location": location}, size)
        with torch.no_grad():
            out[location] = float((model(trigger.apply(others)).argmax(1) == entry.target_class).float().mean())
    return {"planted_at": settings["location"], "success": out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS / "backdoor_stamp_checks"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    zoo = {e.name: e for e in reference_zoo()}
    unknown = [n for n in args.models.split(",") if n not in zoo]
    if unknown:
        parser.error(f"unknown model(s) {unknown}")
    clean = make_dataset(100, seed=CLEAN_SEED).images
    judged = make_dataset(args.held_out, seed=HELD_SEED)
    held, labels = judged.images, judged.labels
    command = "python -m benchmarks.backdoor_stamp_checks " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "torch": torch.__version__, "models": {}}
    for name in args.models.split(","):
        entry = zoo[name]
        model = entry.load()
        scans = [scan_for_backdoor(model, clean[:1], clean_inputs=clean, seed=s) for s in (0, 1)]
        row = {"kind": entry.kind, "target": entry.target_class,
               "classes": stamp_checks(model, scans, held, labels)}
        if entry.kind == "patch":
            row["moved_patch"] = moved_patch(model, entry, held, labels)
        result["models"][name] = row
        print(name, json.dumps(row), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["# What the scan's suspected triggers are: seed agreement, pattern specificity, features", "",
             f"Command: `{result['command']}`; torch {result['torch']}, one thread; scans on the clean set of "
             f"`benchmarks/backdoor_scan.py` (seeds 0 and 1, default settings); judged on held-out images "
             f"(reference-world split seed {HELD_SEED}).", "",
             "Per class (target in bold): mask l1 at seeds 0 / 1; cosine between the two seeds' masks; success of "
             "the seed-0 stamp with its pattern, with the mask filled with uniform noise, with grey; spread of the "
             "flipped images' features over the class's own (ratio); mean confidence of the flipped images / of "
             "the class's own images.", "",
             "| model | class | mask l1 | seed cosine | success | noise fill | grey fill | spread ratio | confidence |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in result["models"].items():
        for r in row["classes"]:
            c = f"**{r['class']}**" if r["class"] == row["target"] else str(r["class"])
            lines.append(f"| {name} | {c} | {r['mask_l1'][0]:.0f} / {r['mask_l1'][1]:.0f} | {r['seed_cosine']:.2f} "
                         f"| {r['success']:.2f} | {r['success_noise_fill']:.2f} | {r['success_grey_fill']:.2f} "
                         f"| {f(r['spread_ratio'])} | {f(r['confidence'][0])} / {f(r['confidence'][1])} |")
    moved = {n: r["moved_patch"] for n, r in result["models"].items() if "moved_patch" in r}
    if moved:
        lines += ["", "The planted patch moved: share of held-out images of other classes sent to the target.", "",
                  "| model | planted at | " + " | ".join(LOCATIONS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in LOCATIONS) + " |"]
        for name, m in moved.items():
            lines.append(f"| {name} | {m['planted_at']} | "
                         + " | ".join(f"{m['success'][loc]:.2f}" for loc in LOCATIONS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
