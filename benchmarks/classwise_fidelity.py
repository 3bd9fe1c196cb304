"""Fidelity of ClassWiseSynthesis on the clean reference models.

For each architecture (the zoo's ``{arch}_clean`` model and its training
trajectory), noise-initialised synthetic sets of 1 and 10 images per class,
made four ways: gradient matching at the final weights only (the method
without a trajectory), gradient matching at every checkpoint (one drawn
per iteration), the same with each image imitating one group of its class
(``match="clusters"``), and trajectory matching. All use the spectral
parametrisation and random shifts and flips. For each set:

- agreement: the model's prediction and softmax confidence on each image;
- matching: the gradient-matching distance per checkpoint at the start and
  the end, and that of random real subsets of the same size;
- condensation: a fresh model of the same architecture trained only on the
  set, then tested on held-out real images, against random real subsets of
  the same size, under two protocols: a random initialisation with
  label-preserving augmentation (``views``), and the trajectory's own
  initialisation trained with the reference training's optimiser without
  augmentation (does the set replay the training run?). Chance is 0.20.

``--checkpoints random-init`` replaces the trajectory, for the runs that
match along it, by ``--iterations`` freshly initialised models of the
architecture (seeded; one drawn per iteration with
``--checkpoints-per-iteration 1``), as in dataset condensation (Zhao et
al., ICLR 2021): the set is matched over many initialisations instead of
one training run. Evaluation and baselines are unchanged.

Writes ``benchmarks/results/classwise_fidelity.{md,json}`` and a figure per
architecture under ``docs/figures/``. Run::

    python -m benchmarks.classwise_fidelity
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import torch

from captum_global import viz
from captum_global.attr import ClassWiseSynthesis
from captum_global.world import CLASS_NAMES, build_model, make_dataset

from benchmarks import classwise_common as common

# run name -> (mode, along the trajectory, match)
RUNS = {"final": ("gradient", False, "class"), "gradient": ("gradient", True, "class"),
        "clusters": ("gradient", True, "clusters"), "trajectory": ("trajectory", True, "class")}


def fresh_initialisations(arch: str, count: int, seed: int):
    """A callable for ``checkpoints=``: yields ``count`` freshly initialised
    models of ``arch``, the k-th drawn from seed ``seed + k`` (the caller's
    global RNG is left as found)."""
    def models():
        for k in range(count):
            with torch.random.fork_rng():
                torch.manual_seed(seed + k)
                model = build_model(arch)
            yield model
    return models


def condensation(arch: str, sets: Dict[str, torch.Tensor], classes, test, args, init) -> Dict[str, Dict]:
    """Test accuracy of fresh models trained on each set, under both protocols."""
    out = {}
    for label, images in sets.items():
        n = images.shape[1]
        labels = torch.tensor(classes).repeat_interleave(n)
        flat = images.flatten(0, 1)
        out[label] = dict(
            random_init=[common.accuracy(common.train_fresh(arch, flat, labels, args.train_steps, s), test)
                         for s in range(args.train_seeds)],
            trajectory_init=common.accuracy(common.train_fresh(arch, flat, labels, args.replay_steps, 0, init=init,
                                                               augment=False), test),
        )
        print(arch, n, label, out[label], flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--checkpoints", default="trajectory", choices=["trajectory", "random-init"],
                        help="what runs along the trajectory match along: the zoo model's trajectory, or "
                             "--iterations fresh initialisations of the architecture")
    parser.add_argument("--checkpoints-per-iteration", type=int, default=1)
    parser.add_argument("--student-steps", type=int, default=5)
    parser.add_argument("--student-batch", type=int, default=25)
    parser.add_argument("--n-data", type=int, default=500, help="real examples explained (balanced)")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--train-steps", type=int, default=300, help="fresh model, random initialisation")
    parser.add_argument("--replay-steps", type=int, default=189, help="fresh model from the trajectory's start")
    parser.add_argument("--train-seeds", type=int, default=1)
    parser.add_argument("--draws", type=int, default=2, help="random real subsets per size")
    parser.add_argument("--condensation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--priors", default="{}",
                        help='JSON priors for the synthesis, e.g. \'{"class": 10}\' (the model\'s cross-entropy on '
                             'the set); default none, as the recipe')
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_fidelity")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    test = make_dataset(args.n_test, seed=args.seed + 1000)
    priors = json.loads(args.priors)
    rows: List[Dict] = []
    for arch in args.archs:
        entry, model, trajectory, data = common.clean_reference(arch, args.n_data, args.seed)
        method = ClassWiseSynthesis(model)
        targets = {along: method.real_class_gradients(data, checkpoints=trajectory if along else None,
                                                      real_examples=max(args.ipc + [3]), batch_size=250)
                   for along in sorted({RUNS[r][1] for r in args.runs})}
        fresh = None
        if args.checkpoints == "random-init":
            fresh = method.real_class_gradients(
                data, checkpoints=fresh_initialisations(arch, args.iterations, args.seed * 1000),
                real_examples=max(args.ipc + [3]), batch_size=250)
        for n in args.ipc:
            sets, per_run = {}, {}
            for run in args.runs:
                mode, along, match = RUNS[run]
                if match == "clusters" and n == 1:
                    continue  # one group per class is the class itself
                t0 = time.perf_counter()
                source = fresh if along and fresh is not None else targets[along]
                if match == "clusters":
                    source = method.real_class_gradients(data, checkpoints=trajectory, real_examples=3,
                                                         batch_size=250, clusters=n)
                per_mode = (dict(match=match, checkpoints_per_iteration=args.checkpoints_per_iteration)
                            if mode == "gradient" else
                            dict(student_steps=args.student_steps, student_batch=args.student_batch))
                r = common.synthesise(model, source, None, n, mode, args.iterations, args.seed,
                                      real_examples=3, priors=priors or None, **per_mode)
                seconds = time.perf_counter() - t0
                own = torch.tensor(r.classes).view(-1, 1)
                along_d = method.matching_distance(r.images, targets[True], per_checkpoint=True) if True in targets else None
                sets[run], per_run[run] = r.images, r
                rows.append(dict(arch=arch, images_per_class=n, run=run, mode=mode, seconds=round(seconds, 1),
                                 checkpoints=args.checkpoints if along else "final",
                                 agreement=float((r.predictions == own).float().mean()),
                                 confidence_mean=float(r.confidence.mean()), confidence_min=float(r.confidence.min()),
                                 distance_initial=[float(v) for v in r.initial_distances.sum(1)],
                                 distance_final=[float(v) for v in r.distances.sum(1)],
                                 distance_along_trajectory=None if along_d is None else [float(v) for v in along_d.sum(1)],
                                 trajectory_distance=None if r.trajectory_distances is None else
                                 [float(v) for v in r.trajectory_distances],
                                 initial_trajectory_distance=None if r.initial_trajectory_distances is None else
                                 [float(v) for v in r.initial_trajectory_distances]))
                print({k: v for k, v in rows[-1].items()}, flush=True)
            classes = next(iter(per_run.values())).classes
            reals = common.random_real_sets(data, classes, n, args.draws, seed=args.seed + 1)
            real_d = [method.matching_distance(s, targets[max(targets)], per_checkpoint=True).sum(1) for s in reals]
            real_t = []  # how close a student trained on real data gets to the next checkpoint
            if "trajectory" in args.runs:
                real_t = [method.attribute(targets[True], images_per_class=n, init=s, mode="trajectory", iterations=0,
                                           student_steps=args.student_steps, student_batch=args.student_batch,
                                           value_range=None).initial_trajectory_distances.tolist() for s in reals]
            for i, s in enumerate(reals):
                sets[f"random real {i + 1}"] = s
            acc = condensation(arch, sets, classes, test, args, trajectory[0]) if args.condensation else {}
            for row in rows:
                if row["arch"] == arch and row["images_per_class"] == n and "run" in row:
                    row["condensation"] = acc.get(row["run"])
            rows.append(dict(arch=arch, images_per_class=n, random_real_distance=[[float(v) for v in d] for d in real_d],
                             random_real_trajectory_distance=real_t,
                             random_real_condensation=[acc.get(f"random real {i + 1}") for i in range(len(reals))]))
            show = per_run.get("gradient", next(iter(per_run.values())))
            figure = viz.classwise_sets_figure(
                show.images, list(CLASS_NAMES), real_examples=torch.stack([show.real_examples[c] for c in classes]),
                confidence=show.confidence, stretch=True,
                title=f"{entry.name}: {n} synthetic image(s) per class ({show.mode} matching along "
                      f"{len(show.trajectory)} {'fresh initialisations' if fresh is not None else 'checkpoints'}, "
                      "from noise; contrast stretched), then real examples")
            suffix = f"_random_init_{args.iterations}" if fresh is not None else ""
            suffix += "".join(f"_{name}_prior_{weight:g}" for name, weight in sorted(priors.items()))
            viz.save(figure, common.FIGURES / f"classwise_{arch}_{n}{suffix}.png")
    seconds = time.perf_counter() - start
    common.write(args.out, "Class-wise synthesis: fidelity on the clean reference models",
                 common.command_line("classwise_fidelity", args), seconds, table(rows, args), dict(args=vars(args), rows=rows))


def table(rows: List[Dict], args) -> List[str]:
    lines = ["Chance is 0.20. `final`: gradient matching at the final weights only; `gradient`: at every "
             "checkpoint of the trajectory; `clusters`: the same, each image imitating one group of its class; "
             "`trajectory`: trajectory matching. Distances are the "
             "gradient-matching distance summed over classes and checkpoints (of the weights each run "
             "matched); the trajectory distance (mean over starts; 1 = no closer than staying at the start) of "
             "a random real subset is that of a student trained on it. Fresh models: random initialisation, augmented views, "
             f"{args.train_steps} steps, mean over {args.train_seeds} seeds; and the trajectory's initialisation, "
             f"no augmentation, {args.replay_steps} steps (the reference training's optimiser)."
             + (f" Here `gradient` matched over {args.iterations} fresh initialisations instead of the trajectory "
                "(`--checkpoints random-init`): its distances are summed over those, not comparable with the "
                "random real subsets' (summed over the trajectory's checkpoints)."
                if getattr(args, "checkpoints", "trajectory") == "random-init" else ""), "",
             "| arch | n/class | set | agreement | conf. mean (min) | distance start -> end | trajectory distance "
             "start -> end | fresh model, random init | fresh model, trajectory's init | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "run" in r:
            c = r.get("condensation") or {}
            ri = c.get("random_init")
            td = "-"
            if r["trajectory_distance"] is not None:
                td = (f"{sum(r['initial_trajectory_distance']) / len(r['initial_trajectory_distance']):.3f} -> "
                      f"{sum(r['trajectory_distance']) / len(r['trajectory_distance']):.3f}")
            lines.append(
                f"| {r['arch']} | {r['images_per_class']} | {r['run']} | {r['agreement']:.2f} | "
                f"{r['confidence_mean']:.3f} ({r['confidence_min']:.3f}) | {sum(r['distance_initial']):.0f} -> "
                f"{sum(r['distance_final']):.0f} | {td} | {'-' if ri is None else f'{sum(ri) / len(ri):.3f}'} | "
                f"{'-' if 'trajectory_init' not in c else format(c['trajectory_init'], '.3f')} | {r['seconds']:.0f} |")
        else:
            for i, c in enumerate(r["random_real_condensation"]):
                if c is None:
                    continue
                ri = c["random_init"]
                rt = r["random_real_trajectory_distance"]
                td = f"{sum(rt[i]) / len(rt[i]):.3f}" if rt else "-"
                lines.append(f"| {r['arch']} | {r['images_per_class']} | random real {i + 1} | - | - | "
                             f"{sum(r['random_real_distance'][i]):.0f} | {td} | {sum(ri) / len(ri):.3f} | "
                             f"{c['trajectory_init']:.3f} | - |")
    return lines


if __name__ == "__main__":
    main()
