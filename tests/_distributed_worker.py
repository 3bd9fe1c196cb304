"""One process of the 2-process (gloo, CPU) ClassWiseSynthesis test.

Run as ``python _distributed_worker.py RANK WORLD INIT_FILE OUT``; rank 0
saves the result to OUT. ``problem()`` builds the model, data and a
two-checkpoint trajectory shared with the single-process reference in
tests/test_classwise.py; the classes are split into two groups each
(``match="clusters"``), so the features are gathered across processes too.
"""
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

# SGD: Adam divides by the gradient's size, which turns the last-bit differences of
# summing in another order into visible ones where a pixel's gradient is near zero.
SETTINGS = dict(images_per_class=2, iterations=8, batch_size=5, init="real", seed=3, match="clusters",
                optimizer="sgd", lr=0.5)


def problem():
    """A tiny BatchNorm CNN, an odd-sized labelled dataset (shards differ in
    size) and a trajectory of two checkpoints (an earlier point, the model)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1, generator=gen)
        model[1].running_var.uniform_(0.5, 1.5, generator=gen)
    earlier = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    x = torch.rand(23, 3, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=gen)
    y[:3] = torch.arange(3)
    return model, TensorDataset(x, y), [earlier, model.state_dict()]


def main(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world)
    try:
        from captum_global.attr import ClassWiseSynthesis

        model, data, trajectory = problem()
        result = ClassWiseSynthesis(model).attribute(data, checkpoints=trajectory, **SETTINGS)
        if rank == 0:
            torch.save({"images": result.images, "counts": result.counts,
                        "initial": result.initial_images, "distances": result.distances,
                        "cluster_sizes": result.cluster_sizes}, out)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
