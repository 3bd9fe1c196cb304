"""Dataset condensation's own recipe on the reference world: can any gradient matching condense it?

A check of the claim behind section 1 of the class-wise measurements
(fresh models trained on the synthetic sets stay at chance): is that our
method, or the world? This script runs the recipe of dataset condensation
(Zhao, Mopuri & Bilen, ICLR 2021) written out independently of
:class:`~captum_global.attr.ClassWiseSynthesis`, with the siamese
augmentation of its follow-up (Zhao & Bilen, ICML 2021):

- every iteration matches on a *freshly initialised* network of the
  architecture (BatchNorm statistics from a mixed real batch, then frozen,
  as that paper does for BatchNorm networks);
- per class, the gradient of the cross-entropy on a real batch of the class
  against that on the class's synthetic images, the per-output-channel
  cosine distance (:func:`~captum_global.attr.classwise.gradient_distance`),
  summed over classes; SGD with momentum 0.5 on the pixels;
- the real and the synthetic batch of a class get the *same* random view
  (flips, a quarter turn, a channel permutation, inversion, a circular
  shift), every iteration;
- at one image per class the paper takes one matching step per network
  (no inner training), which is what runs here.

Then, as in ``classwise_fidelity``: fresh models trained only on the set
(the same protocol and seeds), against random real images of the same
number per class, tested on held-out real images. Run::

    python -m benchmarks.classwise_condensation_baseline --arch vgg --iterations 500 --lr 0.01
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global.attr.classwise import gradient_distance
from captum_global.world import build_model, make_dataset

from benchmarks import classwise_common as common


def shared_view(gen: torch.Generator):
    """One random label-preserving view, to apply alike to a real and a synthetic batch."""
    flip_h, flip_v, invert = (bool(torch.rand(1, generator=gen) < 0.5) for _ in range(3))
    turns = int(torch.randint(4, (1,), generator=gen))
    perm = torch.randperm(3, generator=gen)
    shift = torch.randint(-8, 9, (2,), generator=gen).tolist()

    def view(x: Tensor) -> Tensor:
        x = x.flip(-1) if flip_h else x
        x = x.flip(-2) if flip_v else x
        x = torch.rot90(x, turns, (-2, -1))[:, perm]
        x = 1 - x if invert else x
        return torch.roll(x, shift, (-2, -1))
    return view


def fresh_network(arch: str, by_class: List[Tensor], gen: torch.Generator):
    """A new initialisation whose BatchNorm layers hold the statistics of a mixed real batch, frozen."""
    net = build_model(arch)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch gives its exact statistics
    net.train()
    with torch.no_grad():
        net(torch.cat([x[torch.randint(len(x), (16,), generator=gen)] for x in by_class]))
    return net.eval()


def condense(arch: str, by_class: List[Tensor], ipc: int, iterations: int, lr: float, real_batch: int,
             seed: int) -> Dict:
    gen = torch.Generator().manual_seed(seed)
    k = len(by_class)
    syn = (0.5 + 0.2 * torch.randn(k * ipc, 3, 64, 64, generator=gen)).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=0.5)
    losses = []
    for _ in range(iterations):
        net = fresh_network(arch, by_class, gen)
        params = [p for p in net.parameters() if p.dim() > 1]
        loss = syn.new_zeros(())
        for c, real in enumerate(by_class):
            view = shared_view(gen)
            x_real = view(real[torch.randint(len(real), (real_batch,), generator=gen)])
            x_syn = view(syn[c * ipc:(c + 1) * ipc])
            g_real = torch.autograd.grad(F.cross_entropy(net(x_real), torch.full((real_batch,), c)), params)
            g_syn = torch.autograd.grad(F.cross_entropy(net(x_syn), torch.full((ipc,), c)), params,
                                        create_graph=True)
            loss = loss + gradient_distance(g_syn, [g.detach() for g in g_real])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return dict(images=syn.detach().clamp(0, 1), losses=losses)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["vgg", "resnet"], default="vgg")
    parser.add_argument("--ipc", type=int, default=1, help="images per class (one matching step per network)")
    parser.add_argument("--iterations", type=int, default=500, help="fresh networks, one matching step each")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD step on the pixels (momentum 0.5)")
    parser.add_argument("--real-batch", type=int, default=64, help="real images per class and iteration")
    parser.add_argument("--n-data", type=int, default=2000, help="real images matched (make_dataset(n, seed))")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--draws", type=int, default=2, help="random real sets of the same size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_condensation_baseline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    real = make_dataset(args.n_data, seed=args.seed)
    test = make_dataset(args.n_test, seed=args.seed + 1000)
    classes = sorted(set(real.labels.tolist()))
    by_class = [real.images[real.labels == c] for c in classes]
    run = condense(args.arch, by_class, args.ipc, args.iterations, args.lr, args.real_batch, args.seed)
    labels = torch.tensor(classes).repeat_interleave(args.ipc)

    def fresh(images: Tensor) -> List[float]:
        return [common.accuracy(common.train_fresh(args.arch, images, labels, args.train_steps, s), test)
                for s in range(args.train_seeds)]

    on_set = fresh(run["images"])
    on_real = [fresh(r.flatten(0, 1)) for r in common.random_real_sets(real, classes, args.ipc, args.draws, args.seed)]
    flat_real = [a for draw in on_real for a in draw]
    tenth = max(1, args.iterations // 10)
    first, last = sum(run["losses"][:tenth]) / tenth, sum(run["losses"][-tenth:]) / tenth
    lines = [f"{args.arch}, {args.ipc} image(s) per class from noise, {args.iterations} fresh networks (one matching "
             f"step each), pixels by SGD at lr {args.lr}; matching distance on the fresh networks, mean of the first "
             f"and of the last {tenth} iterations; fresh models trained only on the set ({args.train_steps} steps, "
             f"{args.train_seeds} seeds) against random real images of the same number ({args.draws} draws x "
             f"{args.train_seeds} seeds), tested on {args.n_test} held-out real images; chance "
             f"{1 / len(classes):.2f}.", "",
             "| arch | n/class | iterations | lr | distance: first -> last | fresh model on the set | "
             "fresh model on random real images |", "|---|---|---|---|---|---|---|",
             f"| {args.arch} | {args.ipc} | {args.iterations} | {args.lr} | {first:.0f} -> {last:.0f} | "
             f"{sum(on_set) / len(on_set):.3f} ({min(on_set):.3f} - {max(on_set):.3f}) | "
             f"{sum(flat_real) / len(flat_real):.3f} ({min(flat_real):.3f} - {max(flat_real):.3f}) |"]
    common.write(args.out, "Dataset condensation's recipe on the reference world",
                 common.command_line("classwise_condensation_baseline", args), time.perf_counter() - start, lines,
                 dict(args=vars(args), fresh_on_set=on_set, fresh_on_random_real=on_real, losses=run["losses"],
                      pixel_std=float(run["images"].std())))


if __name__ == "__main__":
    main()
