"""Training cost of the reference zoo's recipes, measured back to back in one process.

Times plain and adversarial training steps (batch 64, one thread) of both
architectures on a small train split, interleaved and repeated so that a
change of machine load hits every kind alike; reports the fastest repeat
per step, the ratio to the plain step of the same architecture and the
implied training time of each zoo recipe. Writes
``benchmarks/results/zoo_cost.md`` and ``.json``.

Usage (with the kernels the zoo is trained with)::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/zoo_cost.py [--steps 20] [--repeats 3]
"""
import argparse
import json
import platform
from pathlib import Path

import torch

from captum_global.world import WorldConfig, reference_zoo, train_reference_model
from captum_global.world.training import cpu_kernels

COMMAND = "python benchmarks/zoo_cost.py"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="training steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = WorldConfig(n_train=64 * args.steps, n_test=64)
    full_radius = dict(clean_epochs=0, warmup_epochs=0)  # every step attacked
    kinds = {"clean": {}, "adversarial": dict(adversarial=full_radius)}
    best = {}
    for _ in range(args.repeats):
        for arch in ("vgg", "resnet"):
            for kind, over in kinds.items():
                _, record = train_reference_model(arch, kind, config=config, epochs=1, **over)
                per_step = record["train_seconds"] / args.steps
                best[arch, kind] = min(best.get((arch, kind), float("inf")), per_step)
    rows = []
    for e in reference_zoo():
        s = e.settings
        steps = s["epochs"] * -(-s["config"]["n_train"] // s["batch_size"])
        kind = "adversarial" if e.kind == "adversarial" else "clean"
        attacked = steps
        if kind == "adversarial":
            a = s["adversarial"]
            attacked = steps - a.get("clean_epochs", 0) * steps // s["epochs"]
        seconds = (steps - attacked) * best[e.arch, "clean"] + attacked * best[e.arch, kind]
        rows.append(dict(name=e.name, steps=steps, attacked_steps=attacked if kind != "clean" else 0,
                         estimated_seconds=round(seconds, 1)))
    lines = [f"# Training cost of the zoo recipes\n\nCommand: `{COMMAND} --steps {args.steps} "
             f"--repeats {args.repeats}` (one thread; fastest of {args.repeats} interleaved repeats; "
             f"CPU kernels {cpu_kernels()}; {platform.machine()}).\n",
             "| arch | step | seconds per step (batch 64) | x plain step |", "|---|---|---|---|"]
    for arch in ("vgg", "resnet"):
        for kind in kinds:
            lines.append(f"| {arch} | {'plain' if kind == 'clean' else 'adversarial (clean + PGD-3)'} "
                         f"| {best[arch, kind]:.3f} | {best[arch, kind] / best[arch, 'clean']:.2f} |")
    lines += ["", "Implied training time of each recipe (steps x seconds per step; "
              "poisoned or noisy-label training costs a plain step):", "",
              "| model | steps | attacked steps | estimated seconds |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['steps']} | {r['attacked_steps']} | {r['estimated_seconds']:.0f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_cost.md").write_text(text)
    (args.out / "zoo_cost.json").write_text(json.dumps(dict(
        command=f"{COMMAND} --steps {args.steps} --repeats {args.repeats}", cpu_kernels=cpu_kernels(),
        seconds_per_step={f"{a}/{k}": v for (a, k), v in best.items()}, models=rows), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
