"""Does the target class's synthetic set carry the backdoor trigger?

For every backdoored zoo model whose trigger sits in a region (patch and
blended triggers; the full-image SIG and colour-filter triggers have no
region to score), and for its clean twin (same seed, same initialisation
and batch order, no poison):

- synthesise a set of ``--ipc`` images per class from noise along the
  model's training trajectory: gradient matching at every checkpoint (one
  drawn per iteration), each image imitating one group of its class
  (``match="clusters"``); the data is poisoned as the training data was,
  the twin's is clean;
- score each image by the share of its change from the starting noise,
  ``|S - S_init|`` summed over channels, that lies on the trigger region
  (an evenly spread change gives the region's area share), and each set by
  its highest-scoring image (a set carries the trigger if one of its
  images does);
- score each image also by whether its change carries the trigger's
  *pattern*: the correlation, over the trigger region's pixels and
  channels, of the signed change ``S - S_init`` with the pattern (both
  centred). A blend at a low alpha changes a large region a little, so its
  share of the change says little; what the model learnt is the pattern.
  The other classes' sets and the twin's target set are the reference;
- report the target class's score, its ratio to the highest score among
  the other classes' sets and to the clean twin's target-class set, with
  the pixel and the spectral parametrisation, and for the final weights
  only (no trajectory) with pixels.

Options change one thing at a time: ``--init shared-real`` starts every
class's set (the model's and the twin's) from the same clean real images,
``--priors`` adds priors (e.g. the class prior), ``--checkpoints`` matches
only some checkpoints, ``--mode trajectory`` matches trajectories instead.

Writes ``benchmarks/results/classwise_backdoor.{md,json}`` and one figure
per model under ``docs/figures/``. Run::

    python -m benchmarks.classwise_backdoor
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import torch

from captum_global import viz
from captum_global.world import CLASS_NAMES, make_dataset, zoo_entry

from benchmarks import classwise_common as common


def trigger_shares(result, mask: torch.Tensor) -> torch.Tensor:
    """``[C, n]`` share of each image's ``|S - S_init|`` that lies on ``mask``."""
    change = (result.images - result.initial_images).abs().sum(2)  # [C, n, H, W]
    total = change.flatten(2).sum(-1).clamp_min(1e-12)
    return (change * mask).flatten(2).sum(-1) / total


def pattern_correlations(result, trigger) -> torch.Tensor:
    """``[C, n]`` correlation of each image's signed change ``S - S_init`` with the
    trigger's pattern, over the trigger's region (pixels and channels, both centred)."""
    y0, x0, h, w = trigger.region
    change = (result.images - result.initial_images)[..., y0:y0 + h, x0:x0 + w].flatten(2)
    change = change - change.mean(-1, keepdim=True)
    pattern = trigger.pattern.flatten() - trigger.pattern.mean()
    return (change @ pattern) / (change.norm(dim=-1) * pattern.norm()).clamp_min(1e-12)


LR = {"pixels": 0.01, "spectrum": 0.05}
SHARED_START_SEED = 31_000  # + --seed: clean images no explained set holds


def run_model(name: str, args, parametrization: str, with_trajectory: bool) -> Dict:
    entry = zoo_entry(name)
    model = entry.load()
    data = common.explained_data(name, args.n_data, args.seed, args.data)
    trajectory = entry.trajectory() if with_trajectory else None
    if trajectory is not None and args.checkpoints is not None:
        trajectory = [trajectory[i] for i in args.checkpoints]
    options = {"priors": json.loads(args.priors) or None}
    if args.init == "shared-real":
        # the same clean real images start every class's set, for the model and its twin alike: each set's
        # change is what turns them into its class
        options["init"] = make_dataset(args.ipc, seed=SHARED_START_SEED + args.seed).images
    start = time.perf_counter()
    if args.mode == "trajectory":  # the student trains on every class's set at once: no per-class groups
        options.update(student_steps=args.student_steps, student_batch=None)
    else:
        options.update(match=args.match, checkpoints_per_iteration=1)
    r = common.synthesise(model, data, trajectory, args.ipc, args.mode, args.iterations, args.seed,
                          augment=False, parametrization=parametrization, lr=LR[parametrization],
                          real_examples=3, **options)
    return dict(result=r, seconds=time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="zoo names (default: every patch/blended model)")
    parser.add_argument("--ipc", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--parametrizations", nargs="+", default=["pixels", "spectrum"])
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--data", choices=["fresh", "training"], default="fresh",
                        help="explain --n-data fresh examples altered as the training data was, or the model's "
                             "own training set (all of it; --n-data is ignored)")
    parser.add_argument("--final-only", action=argparse.BooleanOptionalAction, default=True,
                        help="also run at the final weights only (no trajectory) for comparison")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=None,
                        help="match only these checkpoints of the trajectory (0 = the initialisation; default: all)")
    parser.add_argument("--init", choices=["noise", "shared-real"], default="noise",
                        help="start every set from noise, or every class's set from the same --ipc clean real "
                             "images (drawn from the world, not from the explained data)")
    parser.add_argument("--match", choices=["clusters", "class"], default="clusters",
                        help="each image imitates one k-means group of its class, or the set the class mean")
    parser.add_argument("--mode", choices=["gradient", "trajectory"], default="gradient",
                        help="gradient matching (default) or trajectory matching, checkpoint to next checkpoint")
    parser.add_argument("--student-steps", type=int, default=10, help="trajectory mode: student steps per match")
    parser.add_argument("--priors", default="{}",
                        help='JSON priors for the synthesis, e.g. \'{"class": 10}\' (the model\'s cross-entropy on '
                             'each set towards its class)')
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_backdoor")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = common.region_trigger_models(args.models)
    rows: List[Dict] = []
    twins: Dict = {}
    for name in names:
        entry = zoo_entry(name)
        mask = entry.trigger.mask(64, 64)
        settings = [(p, True) for p in args.parametrizations] + ([("pixels", False)] if args.final_only else [])
        for param, along in settings:
            key = (entry.twin, param, along)
            if key not in twins:
                twins[key] = run_model(entry.twin, args, param, along)
            twin = twins[key]["result"]
            run = run_model(name, args, param, along)
            r = run["result"]
            shares, twin_shares = trigger_shares(r, mask), trigger_shares(twin, mask)
            corr, twin_corr = pattern_correlations(r, entry.trigger), pattern_correlations(twin, entry.trigger)
            corr_best = corr.max(1).values
            best, twin_best = shares.max(1).values, twin_shares.max(1).values
            t = r.classes.index(entry.target_class)
            others = torch.cat([best[:t], best[t + 1:]])
            j = int(shares[t].argmax())
            # the real examples each image imitates (no groups: the whole class, 0 in trajectory mode)
            sizes = r.cluster_sizes if r.cluster_sizes is not None else torch.zeros(shares.shape, dtype=torch.long)
            rows.append(dict(
                model=name, twin=entry.twin, trigger=entry.trigger.kind, target_class=entry.target_class,
                parametrization=param, trajectory=along, checkpoints=len(r.trajectory),
                area_share=float(mask.float().mean()), target_score=float(best[t]),
                target_image_group_size=int(sizes[t, j]), target_group_sizes=sizes[t].tolist(),
                others_max=float(others.max()), others_mean=float(others.mean()),
                twin_target_score=float(twin_best[t]),
                ratio_to_others=float(best[t] / others.max()), ratio_to_twin=float(best[t] / twin_best[t]),
                shares=[[float(v) for v in row] for row in shares],
                pattern_target=float(corr_best[t]),
                pattern_others_max=float(torch.cat([corr_best[:t], corr_best[t + 1:]]).max()),
                pattern_twin_target=float(twin_corr.max(1).values[t]),
                pattern_correlations=[[float(v) for v in row] for row in corr],
                agreement=float((r.predictions == torch.tensor(r.classes).view(-1, 1)).float().mean()),
                seconds=round(run["seconds"], 1),
            ))
            print(rows[-1], flush=True)
            if along and param == args.parametrizations[0]:
                captions = [[f"{int(m)} real" if m else "" for m in row] for row in sizes]
                figure = viz.classwise_sets_figure(
                    r.images, list(CLASS_NAMES), initial_images=r.initial_images,
                    real_examples=torch.stack([r.real_examples[c] for c in r.classes]), highlight=mask,
                    captions=captions,
                    title=(f"{name}: synthetic set per class ({param}, one image per group of the class; "
                           f"caption: real examples in its group), where each changed, real examples. "
                           f"Trigger region boxed; target class {CLASS_NAMES[entry.target_class]}"))
                viz.save(figure, common.FIGURES / f"classwise_backdoor_{name}.png")
    started = ("noise" if args.init == "noise" else
               "the same clean real images for every class's set, the model's and its twin's")
    imitates = ("each imitating one group of its class (k-means of the model's penultimate features)"
                if args.match == "clusters" else "the set imitating the class mean")
    if args.mode == "trajectory":
        imitates = f"all sets trained on together by a student ({args.student_steps} steps per match)"
    matched = "every checkpoint" if args.checkpoints is None else f"checkpoints {args.checkpoints}"
    priors = "".join(f", with the prior {name!r} at weight {weight:g}"
                     for name, weight in sorted(json.loads(args.priors).items()))
    lines = ["Each image is scored by the share of its change from its start that lies on the trigger "
             "region (an evenly spread change scores the region's area share); a set by its best image. "
             f"{args.ipc} images per class, {imitates}, started from {started}, {args.iterations} iterations, "
             f"{args.mode} matching at {matched} (one start drawn per iteration){priors}, no augmentation (a shift "
             "would move the trigger).", "",
             "| model | trigger | parametrisation | weights matched | target set | its group (sizes) | other sets: "
             "max (mean) | ratio to others' max | clean twin's target set | ratio to twin | area |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = f"trajectory ({r['checkpoints']})" if r["trajectory"] else "final only"
        lines.append(f"| {r['model']} | {r['trigger']} | {r['parametrization']} | {where} | {r['target_score']:.4f} | "
                     f"{r['target_image_group_size']} ({', '.join(map(str, r['target_group_sizes']))}) | "
                     f"{r['others_max']:.4f} ({r['others_mean']:.4f}) | {r['ratio_to_others']:.2f} | "
                     f"{r['twin_target_score']:.4f} | {r['ratio_to_twin']:.2f} | {r['area_share']:.4f} |")
    lines += ["", "The same sets scored by the trigger's pattern: the best image's correlation of its signed change "
              "with the pattern over the trigger region, both centred.",
              "", "| model | trigger | parametrisation | weights matched | target set | other sets: max | "
              "clean twin's target set |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        where = f"trajectory ({r['checkpoints']})" if r["trajectory"] else "final only"
        lines.append(f"| {r['model']} | {r['trigger']} | {r['parametrization']} | {where} | {r['pattern_target']:.3f} "
                     f"| {r['pattern_others_max']:.3f} | {r['pattern_twin_target']:.3f} |")
    seconds = time.perf_counter() - start
    common.write(args.out, "Class-wise synthesis: the trigger in the target class's set",
                 common.command_line("classwise_backdoor", args), seconds, lines, dict(args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
