"""How much of the target class's training gradient do the poisoned images carry?

Class-wise synthesis by gradient matching can only put the trigger into the
target class's set if the trigger matters to what it imitates: the
class-mean gradient of the loss at each checkpoint. For every patch and
blended model of the zoo, on the data the benchmarks explain it on (500
fresh images poisoned as its training data was, ``--seed``), this splits the
target class's summed gradient at every checkpoint of the trajectory into
the part of the poisoned images (stamped, relabelled into the target) and
the part of the clean target images, and reports

- ``share``: the norm of the poisoned part over the norm of the total;
- ``cos``: the cosine between the poisoned part and the total.

At the initialisation every image pulls the same way (cos 1, share = their
count share); once the trigger is learnt, poisoned images the model already
sends to the target add little to the gradient.

    python -m benchmarks.classwise_poison_share

Writes benchmarks/results/classwise_poison_share.{md,json}.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from captum_global.world import zoo_entry

from benchmarks import classwise_common as common


def gradient_parts(model, state, data, target: int):
    """``(poisoned, clean)`` flattened gradients of the summed loss of the target class's examples."""
    model.load_state_dict(state)
    model.eval()
    parameters = [p for p in model.parameters() if p.requires_grad]
    parts = []
    for rows in (data.poisoned, (data.labels == target) & ~data.poisoned):
        loss = F.cross_entropy(model(data.images[rows]), data.labels[rows], reduction="sum")
        parts.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)]))
    return parts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="zoo names (default: every patch/blended model)")
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_poison_share")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = common.region_trigger_models(args.models)
    rows = []
    for name in names:
        entry = zoo_entry(name)
        model = entry.load()
        data = common.explained_data(name, args.n_data, args.seed)
        points = []
        for state in entry.trajectory():
            poisoned, clean = gradient_parts(model, state, data, entry.target_class)
            total = poisoned + clean
            points.append(dict(share=float(poisoned.norm() / total.norm()),
                               cos=float(F.cosine_similarity(poisoned, total, dim=0))))
        rows.append(dict(model=name, trigger=entry.trigger.kind, target_class=entry.target_class,
                         poisoned=int(data.poisoned.sum()),
                         clean_target=int(((data.labels == entry.target_class) & ~data.poisoned).sum()),
                         checkpoints=points))
        print(rows[-1], flush=True)
    count = max(len(r["checkpoints"]) for r in rows)
    head = " | ".join(f"checkpoint {k}: share / cos" for k in range(count))
    lines = ["Norm share of the poisoned images in the target class's summed gradient, and their cosine with it, "
             "at each checkpoint of the trajectory (0: the initialisation; the last: the final weights).", "",
             f"| model | trigger | poisoned / clean target images | {head} |",
             "|---|---|---|" + "---|" * count]
    for r in rows:
        cells = " | ".join(f"{p['share']:.2f} / {p['cos']:.2f}" for p in r["checkpoints"])
        lines.append(f"| {r['model']} | {r['trigger']} | {r['poisoned']} / {r['clean_target']} | {cells} |")
    common.write(args.out, "Class-wise synthesis: the poisoned images' share of the target class's gradient",
                 common.command_line("classwise_poison_share", args), time.perf_counter() - start, lines,
                 dict(args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
