"""What class-wise synthetic sets reveal about how a model was trained.

For each architecture, three zoo models trained from the same seed: the
normal one (``clean``), one trained with noisy labels (a share of one
class's labels flipped to another: the *source* class's shapes are taught
as the *receiving* class) and one trained adversarially (PGD). Each gets a
synthetic set per class, from noise, along its own training trajectory
(gradient matching at every checkpoint, one drawn per iteration; the data
is altered as its training data was), each image imitating one group of
its class (``match="clusters"``: k-means of the model's penultimate
features), so a class made of two populations gets an image for each.

The sets are read by *judges*: clean models trained from other seeds, of
both architectures, that never saw the explained models. Numbers:

- noisy labels: the judges' probability of the source class on the
  receiving class's synthetic images (the highest over the set, with the
  size of the group that image imitates, and the mean), for the
  noisy-label model vs the normal model (the flipped shapes should show in
  the receiving class's set);
- adversarial training: the judges' accuracy and mean probability of the
  right class on every synthetic image (perceptually aligned features of
  robust models should make the sets readable by other models), and the
  images' total variation (smoothness), vs the normal model.

Writes ``benchmarks/results/classwise_procedures.{md,json}`` and a figure
per architecture under ``docs/figures/``. Run::

    python -m benchmarks.classwise_procedures
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from captum_global import viz
from captum_global.world import CLASS_NAMES, zoo_entry

from benchmarks import classwise_common as common

JUDGES = ("vgg_clean_s1", "vgg_clean_s2", "resnet_clean_s1", "resnet_clean_s2")


@torch.no_grad()
def judge_probabilities(images: torch.Tensor, judges) -> torch.Tensor:
    """``[C, n, K]`` softmax of the judges, averaged over judges."""
    flat = images.flatten(0, 1)
    probs = torch.stack([torch.softmax(j(flat), -1) for j in judges]).mean(0)
    return probs.view(*images.shape[:2], -1)


def total_variation(images: torch.Tensor) -> float:
    return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
                 + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--judges", nargs="+", default=list(JUDGES))
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--parametrization", default="spectrum", choices=["pixels", "spectrum"])
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_procedures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    judges = [zoo_entry(name).load() for name in args.judges]
    rows: List[Dict] = []
    for arch in args.archs:
        results = {}
        for kind in ("clean", "noisy_label", "adversarial"):
            name = f"{arch}_{kind}"
            entry = zoo_entry(name)
            data = common.explained_data(name, args.n_data, args.seed)
            t0 = time.perf_counter()
            r = common.synthesise(entry.load(), data, entry.trajectory(), args.ipc, "gradient", args.iterations,
                                  args.seed, augment=True, parametrization=args.parametrization, lr=args.lr,
                                  match="clusters", checkpoints_per_iteration=1, real_examples=3)
            seconds = time.perf_counter() - t0
            results[kind] = r
            probs = judge_probabilities(r.images, judges)
            own = torch.tensor(r.classes).view(-1, 1)
            row = dict(arch=arch, model=name, description=entry.description, seconds=round(seconds, 1),
                       agreement=float((r.predictions == own).float().mean()),
                       judge_accuracy=float((probs.argmax(-1) == own).float().mean()),
                       judge_own_probability=float(probs.gather(-1, own.unsqueeze(-1).expand(-1, r.images.shape[1], 1)).mean()),
                       total_variation=total_variation(r.images))
            noise = zoo_entry(f"{arch}_noisy_label").settings["label_noise"]
            source, dest = noise["source"], noise["dest"]
            row_index = r.classes.index(dest)
            receiving = probs[row_index]
            best = int(receiving[:, source].argmax())
            row.update(source=source, dest=dest,
                       judge_source_probability_on_receiving_max=float(receiving[best, source]),
                       receiving_group_of_that_image=int(r.cluster_sizes[row_index, best]),
                       receiving_group_sizes=r.cluster_sizes[row_index].tolist(),
                       judge_source_probability_on_receiving=float(receiving[:, source].mean()),
                       judge_source_share_on_receiving=float((receiving.argmax(-1) == source).float().mean()))
            rows.append(row)
            print(row, flush=True)
        sets = torch.cat([results[k].images for k in ("clean", "noisy_label", "adversarial")], 1)
        real = torch.stack([results["clean"].real_examples[c] for c in results["clean"].classes])
        captions = [sum(([f"{int(m)} real" for m in results[k].cluster_sizes[c]]
                         for k in ("clean", "noisy_label", "adversarial")), []) for c in range(len(CLASS_NAMES))]
        figure = viz.classwise_sets_figure(
            sets, list(CLASS_NAMES), real_examples=real, max_images=3 * args.ipc, captions=captions, stretch=True,
            title=(f"{arch}: sets of the normal model | the noisy-label model ({CLASS_NAMES[source]} -> "
                   f"{CLASS_NAMES[dest]}) | the adversarially trained model ({args.ipc} each; caption: real examples "
                   "in the group it imitates; contrast stretched), then real examples"))
        viz.save(figure, common.FIGURES / f"classwise_procedures_{arch}.png")
    lines = ["Judges: clean zoo models of other seeds (" + ", ".join(JUDGES) + "), softmax averaged. "
             f"{args.ipc} synthetic images per class, each imitating one group of its class, noise "
             f"initialisation, {args.iterations} iterations, gradient matching along each model's trajectory "
             f"(one checkpoint per iteration), {args.parametrization} parametrisation, random shifts and flips.", "",
             "| model | own agreement | judges: accuracy | judges: p(own class) | TV | receiving class's set: "
             "judges' p(source), best image (its group; all groups) | mean over the set | share called source |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['agreement']:.2f} | {r['judge_accuracy']:.2f} | "
                     f"{r['judge_own_probability']:.3f} | {r['total_variation']:.4f} | "
                     f"{r['judge_source_probability_on_receiving_max']:.3f} ({r['receiving_group_of_that_image']}; "
                     f"{', '.join(map(str, r['receiving_group_sizes']))}) | "
                     f"{r['judge_source_probability_on_receiving']:.3f} | {r['judge_source_share_on_receiving']:.2f} |")
    seconds = time.perf_counter() - start
    common.write(args.out, "Class-wise synthesis: models trained differently",
                 common.command_line("classwise_procedures", args), seconds, lines, dict(args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
