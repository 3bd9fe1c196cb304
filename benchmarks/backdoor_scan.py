"""Backdoor scan of the reference models with input-agnostic saliency.

For every reference model (clean, patch, blended) and two sample
distributions (uniform noise; clean held-out images), runs
:func:`captum_global.backdoor.scan_for_backdoor` and records per class: the
map's energy on the planted trigger's region, the trigger-agnostic
energy-concentration statistic and its flags,.

    python -m benchmarks.backdoor_scan --archs vgg,resnet --steps 30 --samples 8

Writes benchmarks/results/backdoor_scan.{md,json}.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from captum_global.backdoor import scan_for_backdoor
from captum_global.world import make_dataset
from captum_global.world.training import load_reference_model, reference_target_class, reference_trigger

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="vgg,resnet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clean_pool = make_dataset(64, seed=777).images
    rows = []
    for arch in args.archs.split(","):
        for variant in ("clean", "patch", "blended"):
            model = load_reference_model(arch, variant)
            mask = reference_trigger("patch" if variant == "clean" else variant).mask(64, 64)
            for dist_name, dist, radius in (("uniform", "uniform", 8.0), ("clean images", clean_pool, 3.0)):
                t0 = time.perf_counter()
                scan = scan_for_backdoor(model, torch.zeros(1, 3, 64, 64), distribution=dist, trigger_mask=mask,
                                         n_steps=args.steps, samples_per_step=args.samples, radius=radius)
                rows.append({
                    "arch": arch, "variant": variant, "distribution": dist_name, "radius": radius,
                    "trigger_energy": scan.trigger_energy.tolist(), "concentration": scan.statistic.tolist(),
                    "flagged": scan.flagged, "top_trigger_energy_class": int(scan.trigger_energy.argmax()),
                    "seconds": time.perf_counter() - t0,
                })
                print(rows[-1], flush=True)
    total = time.perf_counter() - start
    target = reference_target_class()
    lines = [f"# Backdoor scan of the reference models (target class {target})", "",
             f"Command: `python -m benchmarks.backdoor_scan --archs {args.archs} --steps {args.steps} "
             f"--samples {args.samples} --threads {args.threads}`; total {total:.0f} s, torch {torch.__version__}.",
             "For clean models the region scored is the patch trigger's.", "",
             "| arch | model | distribution | trigger energy per class | class with most | concentration flags |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        energy = ", ".join(f"{v:.3f}" for v in r["trigger_energy"])
        lines.append(f"| {r['arch']} | {r['variant']} | {r['distribution']} | {energy} | "
                     f"{r['top_trigger_energy_class']} | {r['flagged'] or 'none'} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backdoor_scan.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "backdoor_scan.json").write_text(json.dumps({"rows": rows, "seconds_total": total,
                                                             "argv": vars(args)}, indent=2))
    print(f"done in {total:.0f} s")


if __name__ == "__main__":
    main()
