"""Fidelity of ClassWiseSynthesis on the reference world.

Measures, for each reference architecture:

- agreement: the model's prediction and softmax confidence on each synthetic
  image (should be its class, confidently);
- matching: the gradient-matching distance at initialisation, at the end,
  and of random real subsets of the same size (mean of ``--draws`` draws);
- condensation: a freshly initialised copy of the architecture trained only
  on the synthetic sets (1 and 10 images per class) with an augmented
  recipe (``train_fresh``) and evaluated on a held-out real test set,
  against the same training on the real images the synthesis started from,
  on random real subsets of the same size, and on all explained examples
  (chance is 20%);
- backdoor: on the backdoored models (patch and blended triggers), the share
  of ``|S - S_init|`` (summed over channels) that lies on the trigger region,
  for the target class vs the other classes (the trigger's area share is the
  level of an evenly spread change).

Writes ``benchmarks/results/classwise.{md,json}``. Run::

    .venv/bin/python benchmarks/classwise_fidelity.py --archs vgg

(700 s on the loaded shared machine; ``--no-clean`` / ``--no-backdoor``
run one half, ``--backdoor-parameters fc`` matches only those weights.)

The run uses one CPU thread: double backward through small convolutions is
dominated by thread hand-offs, and one thread was ~8x faster than two on the
shared 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from captum_global.attr import ClassWiseSynthesis
from captum_global.metrics import trigger_energy_share
from captum_global.world import (
    build_model,
    load_reference_model,
    make_dataset,
    poison_dataset,
    reference_target_class,
    reference_trigger,
)

RESULTS = Path(__file__).resolve().parent / "results"


def random_real_sets(data, classes, n: int, draws: int, seed: int):
    """``draws`` tensors ``[C, n, ...]`` of random real examples per class."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        rows = []
        for c in classes:
            idx = (data.labels == c).nonzero().flatten()
            rows.append(data.images[idx[torch.randperm(len(idx), generator=gen)[:n]]])
        out.append(torch.stack(rows))
    return out


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving random views of shape images: flips, quarter turns,
    channel permutation, colour inversion and circular shifts up to 12 px
    (the class is the shape; colour, position and orientation are random)."""
    n = x.shape[0]
    for dim in (-1, -2):
        x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(dim), x)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), (-2, -1))
    perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(n)])
    x = torch.gather(x, 1, perm.view(n, 3, 1, 1).expand_as(x))
    x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), 1 - x, x)
    shifts = torch.randint(-12, 13, (n, 2), generator=gen).tolist()
    return torch.stack([torch.roll(xi, (a, b), (-2, -1)) for xi, (a, b) in zip(x, shifts)])


def train_fresh(arch: str, images: torch.Tensor, labels: torch.Tensor, args, seed: int = 0):
    """A freshly initialised model trained on ``images`` only.

    ``args.train_steps`` Adam steps (lr ``args.train_lr``, cosine decay) on
    mini-batches of ``args.train_batch`` augmented views: a set smaller than
    the batch is tiled (each copy a different view), so BatchNorm always sees
    a full batch. Without augmentation a fresh model fitted 5-50 images and
    stayed at chance on the test set (0.19-0.28, see docs/classwise.md).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=args.train_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.train_steps)
    model.train()
    batch = args.train_batch
    for _ in range(args.train_steps):
        if len(images) > batch:
            idx = torch.randint(len(images), (batch,), generator=gen)
        else:
            idx = torch.arange(batch) % len(images)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(augment(images[idx], gen)), labels[idx]).backward()
        opt.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, data) -> float:
    preds = torch.cat([model(data.images[i:i + 250]).argmax(1) for i in range(0, len(data), 250)])
    return float((preds == data.labels).float().mean())


def clean_rows(arch, args, test):
    model = load_reference_model(arch, "clean")
    data = make_dataset(args.n_data, seed=args.seed)
    method = ClassWiseSynthesis(model)
    rg = method.real_class_gradients(data, batch_size=250, real_examples=max(args.ipc))
    # The same recipe on every real example that was explained: the ceiling.
    full_acc = accuracy(train_fresh(arch, data.images, data.labels, args), test)
    print(dict(arch=arch, full_real_test_acc=full_acc), flush=True)
    rows = []
    for n in args.ipc:
        r = method.attribute(rg, images_per_class=n, init=args.init, iterations=args.iterations, seed=args.seed)
        classes = torch.tensor(r.classes)
        real_sets = random_real_sets(data, r.classes, n, args.draws, seed=args.seed + 1)
        real_d = torch.stack([method.matching_distance(s, rg).sum() for s in real_sets])
        labels = classes.repeat_interleave(n)
        syn_acc = accuracy(train_fresh(arch, r.images.flatten(0, 1), labels, args), test)
        real_acc = [accuracy(train_fresh(arch, s.flatten(0, 1), labels, args), test)
                    for s in real_sets[:args.train_draws]]
        init_acc = None
        if args.init == "real":  # the real images the synthesis started from, unchanged
            init_acc = accuracy(train_fresh(arch, r.initial_images.flatten(0, 1), labels, args), test)
        rows.append(dict(
            arch=arch, images_per_class=n, init=args.init, iterations=args.iterations,
            agreement=float((r.predictions == classes.view(-1, 1)).float().mean()),
            confidence_mean=float(r.confidence.mean()), confidence_min=float(r.confidence.min()),
            distance_initial=float(r.initial_distance.sum()), distance_final=float(r.final_distance.sum()),
            distance_real_subsets=float(real_d.mean()), distance_real_subsets_min=float(real_d.min()),
            condensed_test_acc=syn_acc, init_real_test_acc=init_acc,
            random_real_test_acc=sum(real_acc) / len(real_acc), random_real_test_accs=real_acc,
            full_real_test_acc=full_acc,
        ))
        print(rows[-1], flush=True)
    return rows


def backdoor_rows(arch, args):
    rows = []
    target = reference_target_class()
    for variant in ("patch", "blended"):
        model = load_reference_model(arch, variant)
        trigger = reference_trigger(variant)
        data = poison_dataset(make_dataset(args.n_data, seed=args.seed), trigger, target, 0.1, args.seed)
        r = ClassWiseSynthesis(model).attribute(data, images_per_class=1, init=args.init,
                                                iterations=args.iterations, seed=args.seed,
                                                parameters=args.backdoor_parameters)
        change = (r.images - r.initial_images).abs().sum(2)  # [C, n, H, W]
        mask = trigger.mask(*change.shape[-2:])
        share = trigger_energy_share(change.flatten(0, 1), mask, normalize=False).view(change.shape[:2]).mean(1)
        t = r.classes.index(target)
        others = torch.cat([share[:t], share[t + 1:]])
        rows.append(dict(
            arch=arch, variant=variant, target_class=target, parameters=args.backdoor_parameters or "all", trigger_area_share=float(mask.float().mean()),
            target_share=float(share[t]), other_share_mean=float(others.mean()),
            other_share_max=float(others.max()), agreement=float((r.predictions.flatten() == torch.tensor(r.classes)).float().mean()),
        ))
        print(rows[-1], flush=True)
    return rows


def command_line(args) -> str:
    """The command that reproduces a run with these ``args``."""
    words = []
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            words.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, list):
            words.append(f"{flag} {' '.join(map(str, v))}")
        elif v is not None:
            words.append(f"{flag} {v}")
    return ".venv/bin/python benchmarks/classwise_fidelity.py " + " ".join(words)


def write(results, seconds, args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(dict(args=vars(args), seconds=seconds, **results), indent=2))
    lines = ["# ClassWiseSynthesis fidelity", "",
             f"Command: `{command_line(args)}` ({seconds:.0f} s, 1 CPU thread).", ""]
    if args.clean:
        lines += [
            "## Agreement, matching distance, condensation (clean models)", "",
            "| arch | n/class | agreement | conf. mean (min) | distance init -> final | real subsets (best) "
            "| test acc of a fresh model trained on: S | its real init | random real (draws) | all real |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["clean"]:
            init = "-" if r["init_real_test_acc"] is None else f"{r['init_real_test_acc']:.3f}"
            draws = ", ".join(f"{a:.3f}" for a in r["random_real_test_accs"])
            lines.append(
                f"| {r['arch']} | {r['images_per_class']} | {r['agreement']:.2f} | {r['confidence_mean']:.3f} "
                f"({r['confidence_min']:.3f}) | {r['distance_initial']:.0f} -> {r['distance_final']:.0f} | "
                f"{r['distance_real_subsets']:.0f} ({r['distance_real_subsets_min']:.0f}) | "
                f"{r['condensed_test_acc']:.3f} | {init} | {r['random_real_test_acc']:.3f} ({draws}) | "
                f"{r['full_real_test_acc']:.3f} |")
        lines += ["", "Chance is 0.20. Distances are summed over the 5 classes. The fresh model: same "
                  "architecture, freshly initialised, trained with the augmented recipe of `train_fresh` "
                  f"({args.train_steps} Adam steps, batch {args.train_batch}, lr {args.train_lr}); "
                  f"'all real' is the same recipe on all {args.n_data} explained examples.", ""]
    if args.backdoor:
        lines += ["## Backdoor: share of |S - S_init| on the trigger", "",
                  "| arch | trigger | matched weights | target class | others: mean (max) | trigger area | agreement |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["backdoor"]:
            params = " ".join(r["parameters"]) if isinstance(r["parameters"], list) else r["parameters"]
            lines.append(
                f"| {r['arch']} | {r['variant']} | {params} | {r['target_share']:.3f} | {r['other_share_mean']:.3f} "
                f"({r['other_share_max']:.3f}) | {r['trigger_area_share']:.3f} | {r['agreement']:.2f} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--n-data", type=int, default=500, help="real examples explained (balanced)")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--init", default="real", choices=["noise", "real"])
    parser.add_argument("--train-steps", type=int, default=150, help="steps of the fresh model's training")
    parser.add_argument("--train-batch", type=int, default=50)
    parser.add_argument("--train-lr", type=float, default=1e-3)
    parser.add_argument("--draws", type=int, default=3, help="random real subsets for the matching distance")
    parser.add_argument("--train-draws", type=int, default=2, help="of which a fresh model is trained on")
    parser.add_argument("--clean", action=argparse.BooleanOptionalAction, default=True,
                        help="agreement, matching distance and condensation on the clean models")
    parser.add_argument("--backdoor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backdoor-parameters", nargs="+", default=None,
                        help="submodules whose weight gradients are matched on the backdoored models")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise", help="stem of the files under benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    test = make_dataset(args.n_test, seed=args.seed + 1000)
    results = dict(clean=[], backdoor=[])
    for arch in args.archs:
        if args.clean:
            results["clean"] += clean_rows(arch, args, test)
        if args.backdoor:
            results["backdoor"] += backdoor_rows(arch, args)
    seconds = time.perf_counter() - start
    write(results, round(seconds, 1), args)
    print(f"classwise fidelity: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
