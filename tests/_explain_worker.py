"""One process of the 2-process (gloo, CPU) explain_dataset test.

Run as ``python _explain_worker.py RANK WORLD INIT_FILE OUT LOG``: explains
``problem()``'s data into OUT and appends the shards this rank computed to
LOG (one JSON list). ``problem()`` is shared with the single-process run in
tests/test_explain.py.
"""
import json
import sys

import torch
from torch import nn

SETTINGS = dict(batch_size=3, seed=11)


def problem():
    """A tiny CNN, 10 images (4 shards of 3, the last of 1) and a NoiseTunnel that draws from the global RNG."""
    from captum.attr import NoiseTunnel, Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    tunnel = NoiseTunnel(Saliency(model))

    def method(inputs, target):
        return tunnel.attribute(inputs, target=target, nt_samples=3, stdevs=0.1)

    return model, images, method


def main(rank: int, world: int, init_file: str, out: str, log: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from captum_global.explain import explain_dataset

        model, images, method = problem()
        done = []

        def recording(inputs, target):
            done.append(int(torch.nonzero((images == inputs[0]).flatten(1).all(1))[0]))  # first example's index
            return method(inputs, target)

        explain_dataset(model, recording, images, out, **SETTINGS)
        with open(log, "a") as handle:
            handle.write(json.dumps({"rank": rank, "starts": done}) + "\n")
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
