"""Is the condensation check blind? Fresh models with BatchNorm, with real statistics, with instance norm.

The condensation check of the class-wise measurements trains a fresh model
of the reference architecture on a small set and tests it on real images.
That architecture has BatchNorm: the fresh model tests with the running
statistics of the set it was trained on. A set whose pixel statistics
differ from the real data's is then judged partly on those statistics, not
on what it shows. This benchmark separates the two. Every set is judged
three ways (same training recipe, ``train_fresh``):

- ``batchnorm``: the fresh model as the class-wise measurements train it;
- ``real statistics``: the same model, its BatchNorm statistics
  re-estimated on ``--n-unlabelled`` unlabelled real images (no labels, none
  of the test images);
- ``instance norm``: a fresh model of the architecture with instance norm
  in place of BatchNorm (the normalisation of dataset condensation's
  evaluation network; it keeps no dataset statistics).

The sets, ``--ipc`` images per class each:

- ``synthetic``: the class-wise set of the clean reference model from noise
  (the measurements' recipe: gradient matching along the trajectory, the
  whole class imitated, ``--iterations``);
- ``random real``: random real images of the explained data (``--draws``);
- ``real, drawn without pixel noise``: real images of the world drawn with
  ``noise_std=0`` (the world adds noise of std 0.03), everything else equal;
- ``clean shapes``: the shape on a flat background (no texture, no pixel
  noise, one distractor mark).

Run::

    python -m benchmarks.classwise_fresh_norm --archs vgg
    python -m benchmarks.classwise_fresh_norm --archs resnet

Writes ``benchmarks/results/classwise_fresh_norm_<archs>.{md,json}``.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch
from torch import nn

from captum_global.world import WorldConfig, make_dataset

from benchmarks import classwise_common as common

DRAWN_SEED = 900  # + draw: the seeds of the drawn sets (no explained or test image among them)
UNLABELLED_SEED = 4242
DRAWN_SETS = {
    "real, drawn without pixel noise": WorldConfig(noise_std=0.0),
    "clean shapes": WorldConfig(max_distractors=1, texture_amplitude=0.0, noise_std=0.0),
}
EVALUATIONS = ("batchnorm", "real statistics", "instance norm")


@torch.no_grad()
def with_real_statistics(model: nn.Module, unlabelled: torch.Tensor, batch: int = 100) -> nn.Module:
    """``model`` with its BatchNorm running statistics re-estimated (cumulative average) on ``unlabelled``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for i in range(0, len(unlabelled), batch):
        model(unlabelled[i:i + batch])
    return model.eval()


def per_class(data, classes, n: int, seed: int) -> torch.Tensor:
    """``[C, n, ...]``: ``n`` random images of each class of ``data``."""
    return common.random_real_sets(data, classes, n, 1, seed)[0]


def judge(arch: str, images: torch.Tensor, test, unlabelled, args) -> Dict[str, List[float]]:
    """Test accuracy of fresh models trained on ``images`` ``[C, n, ...]``, per evaluation and training seed."""
    flat = images.flatten(0, 1)
    labels = torch.arange(images.shape[0]).repeat_interleave(images.shape[1])
    out: Dict[str, List[float]] = {name: [] for name in EVALUATIONS}
    for seed in range(args.train_seeds):
        model = common.train_fresh(arch, flat, labels, args.train_steps, seed)
        out["batchnorm"].append(common.accuracy(model, test))
        out["real statistics"].append(common.accuracy(with_real_statistics(model, unlabelled), test))
        model = common.train_fresh(arch, flat, labels, args.train_steps, seed, norm="instance")
        out["instance norm"].append(common.accuracy(model, test))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-unlabelled", type=int, default=500)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None, help="result stem (default classwise_fresh_norm_<archs>)")
    args = parser.parse_args(argv)
    args.out = args.out or "classwise_fresh_norm_" + "_".join(args.archs)
    torch.set_num_threads(1)
    start = time.perf_counter()
    test = make_dataset(args.n_test, seed=args.seed + 1000)       # the class-wise measurements' test images
    unlabelled = make_dataset(args.n_unlabelled, seed=UNLABELLED_SEED).images
    rows: List[Dict] = []
    for arch in args.archs:
        entry, model, trajectory, data = common.clean_reference(arch, args.n_data, args.seed)
        for n in args.ipc:
            t0 = time.perf_counter()
            result = common.synthesise(model, data, trajectory, n, "gradient", args.iterations, args.seed,
                                       real_examples=3, match="class", checkpoints_per_iteration=1)
            sets = {"synthetic": result.images}
            for i, s in enumerate(common.random_real_sets(data, result.classes, n, args.draws, seed=args.seed + 1)):
                sets[f"random real {i + 1}"] = s
            for name, config in DRAWN_SETS.items():
                for draw in range(args.draws):
                    drawn = make_dataset(40 * n, seed=DRAWN_SEED + draw, config=config)
                    sets[f"{name} {draw + 1}"] = per_class(drawn, result.classes, n, seed=draw)
            for name, images in sets.items():
                rows.append(dict(arch=arch, images_per_class=n, set=name,
                                 accuracy=judge(arch, images, test, unlabelled, args)))
                print(rows[-1], flush=True)
            print(f"{arch} {n}/class: {time.perf_counter() - t0:.0f} s", flush=True)
    common.write(args.out, "Class-wise synthesis: the condensation check with and without dataset statistics",
                 common.command_line("classwise_fresh_norm", args), time.perf_counter() - start,
                 table(rows, args), dict(args=vars(args), rows=rows))


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def table(rows: List[Dict], args) -> List[str]:
    lines = [f"Test accuracy on {args.n_test} real images (chance 0.20) of fresh models trained "
             f"{args.train_steps} steps on each set, mean (lowest - highest) over {args.train_seeds} training "
             f"seeds and, for real and drawn sets, over {args.draws} draws. `batchnorm`: as the class-wise "
             f"measurements judge sets; `real statistics`: the same model, BatchNorm statistics re-estimated on "
             f"{args.n_unlabelled} unlabelled real images; `instance norm`: a fresh model with instance norm in "
             "place of BatchNorm.", "",
             "| arch | n/class | set | " + " | ".join(EVALUATIONS) + " |",
             "|---|---|---|" + "---|" * len(EVALUATIONS)]
    groups: Dict = {}
    for r in rows:
        kind = r["set"].rstrip("0123456789").strip()
        groups.setdefault((r["arch"], r["images_per_class"], kind), []).append(r["accuracy"])
    for (arch, n, kind), runs in groups.items():
        cells = []
        for name in EVALUATIONS:
            values = [v for run in runs for v in run[name]]
            cells.append(f"{_mean(values):.3f} ({min(values):.3f} - {max(values):.3f})")
        lines.append(f"| {arch} | {n} | {kind} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
