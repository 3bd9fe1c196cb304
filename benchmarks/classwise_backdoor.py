"""Does the target class's synthetic set carry the backdoor trigger?

For every backdoored zoo model whose trigger sits in a region (patch and
blended triggers; the full-image SIG and colour-filter triggers have no
region to score), and for its clean twin (same seed, same initialisation
and batch order, no poison):

- synthesise one set per class from noise along the model's training
  trajectory (gradient matching at every checkpoint; the data is poisoned
  as the training data was, the twin's is clean);
- score each set by the share of its change from the starting noise,
  ``|S - S_init|`` summed over channels, that lies on the trigger region
  (an evenly spread change gives the region's area share);
- report the target class's share, its ratio to the mean of the other
  classes' shares and its ratio to the clean twin's target-class share,
  for the trajectory and for the final weights only (the earlier method).

Writes ``benchmarks/results/classwise_backdoor.{md,json}`` and one figure
per model under ``docs/figures/``. Run::

    python -m benchmarks.classwise_backdoor
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from captum_global import viz
from captum_global.world import CLASS_NAMES, reference_zoo, zoo_entry

from benchmarks import classwise_common as common


def trigger_shares(result, initial, mask: torch.Tensor) -> torch.Tensor:
    """``[C]`` share of ``|S - S_init|`` on ``mask``, averaged over each set."""
    change = (result.images - initial).abs().sum(2)  # [C, n, H, W]
    total = change.flatten(2).sum(-1).clamp_min(1e-12)
    return ((change * mask).flatten(2).sum(-1) / total).mean(1)


def run_model(name: str, args, with_trajectory: bool) -> Dict:
    entry = zoo_entry(name)
    model = entry.load()
    data = common.explained_data(name, args.n_data, args.seed)
    trajectory = entry.trajectory() if with_trajectory else None
    start = time.perf_counter()
    r = common.synthesise(model, data, trajectory, args.ipc, "gradient", args.iterations, args.seed,
                          augment=False, parametrization=args.parametrization, lr=args.lr, real_examples=2)
    return dict(result=r, seconds=time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="zoo names (default: every patch/blended model)")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--parametrization", default="pixels", choices=["pixels", "spectrum"])
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--final-only", action=argparse.BooleanOptionalAction, default=True,
                        help="also run at the final weights only (no trajectory) for comparison")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_backdoor")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = args.models or [e.name for e in reference_zoo() if e.kind in ("patch", "blended")]
    rows: List[Dict] = []
    twins: Dict = {}
    for name in names:
        entry = zoo_entry(name)
        mask = entry.trigger.mask(64, 64)
        settings = [True, False] if args.final_only else [True]
        for along in settings:
            key = (entry.twin, along)
            if key not in twins:
                twins[key] = run_model(entry.twin, args, along)
            twin = twins[key]["result"]
            run = run_model(name, args, along)
            r = run["result"]
            shares = trigger_shares(r, r.initial_images, mask)
            twin_shares = trigger_shares(twin, twin.initial_images, mask)
            t = r.classes.index(entry.target_class)
            others = torch.cat([shares[:t], shares[t + 1:]])
            rows.append(dict(
                model=name, twin=entry.twin, trigger=entry.trigger.kind, target_class=entry.target_class,
                trajectory=along, checkpoints=len(r.trajectory), area_share=float(mask.float().mean()),
                target_share=float(shares[t]), others_mean=float(others.mean()), others_max=float(others.max()),
                twin_target_share=float(twin_shares[t]),
                ratio_to_others=float(shares[t] / others.mean()), ratio_to_twin=float(shares[t] / twin_shares[t]),
                shares=[float(v) for v in shares], agreement=float((r.predictions == torch.tensor(r.classes).view(-1, 1)).float().mean()),
                seconds=round(run["seconds"], 1),
            ))
            print(rows[-1], flush=True)
            if along:
                figure = viz.classwise_sets_figure(
                    torch.cat([r.images, twin.images], 1), list(CLASS_NAMES),
                    real_examples=torch.stack([r.real_examples[c] for c in r.classes]),
                    highlight=mask,
                    title=(f"{name} (left) and its clean twin {entry.twin}: synthetic set per class "
                           f"(trigger region boxed; target class {CLASS_NAMES[entry.target_class]}), "
                           "then real examples"))
                viz.save(figure, common.FIGURES / f"classwise_backdoor_{name}.png")
    lines = ["Share of each synthetic set's change from its starting noise that lies on the trigger region "
             "(an evenly spread change gives the area share). One set per class, noise initialisation, "
             f"{args.iterations} iterations, gradient matching, {args.parametrization} parametrisation, "
             "no augmentation (a shift would move the trigger).", "",
             "| model | trigger | weights matched | target share | others: mean (max) | ratio to others "
             "| clean twin's target share | ratio to twin | area |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = f"trajectory ({r['checkpoints']} checkpoints)" if r["trajectory"] else "final weights only"
        lines.append(f"| {r['model']} | {r['trigger']} | {where} | {r['target_share']:.4f} | {r['others_mean']:.4f} "
                     f"({r['others_max']:.4f}) | {r['ratio_to_others']:.2f} | {r['twin_target_share']:.4f} | "
                     f"{r['ratio_to_twin']:.2f} | {r['area_share']:.4f} |")
    seconds = time.perf_counter() - start
    common.write(args.out, "Class-wise synthesis: the trigger in the target class's set",
                 common.command_line("classwise_backdoor", args), seconds, lines, dict(args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
