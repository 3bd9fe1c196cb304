"""SISE cost on one image: overhead over its own forward passes, vs Score-CAM.

Run: ``python benchmarks/sise_speed.py [--size 224] [--batch 64] [--device cpu]``

Prints, from one run (random-weight torchvision resnet18, one image):
- SISE wall time / (its masked passes x the forward time at the same batch
  size): the overhead of everything that is not a model evaluation
  (gradient pass, upsampling, bookkeeping, fusion); target <= 1.10;
- SISE wall time / pytorch_grad_cam.ScoreCAM(layer4) wall time;
- peak extra memory of the SISE call (``benchmarks/measure.py``).
Random weights only make the pass counts plausible; timings per pass do not
depend on the weights.

``--quality [--n 16]`` instead measures the budget trade-off on the shipped
reference models: EBPG (object mask and box) and masked passes for SISE with
every surviving map vs budgets, with Captum's LayerGradCam as a yardstick.
"""
import argparse
import math
import time

import torch
import torchvision

from measure import EvaluationCounter, forward_time, peak_memory

from captum_global.attr import SISE
from captum_global.attr._fusion import FUSIONS, fuse_layer_maps


def quality(n: int, budgets) -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    from captum_global.metrics import energy_pointing_game
    from captum_global.world import ARCHS, load_reference_model, make_dataset

    data = make_dataset(n, seed=20261123)
    x, y = data.images, data.labels
    for arch in ARCHS:
        model = load_reference_model(arch, "clean")
        acc = (model(x).argmax(1) == y).float().mean()
        sise = SISE(model)
        counter = EvaluationCounter(model)
        rows = []
        for budget in [None] + list(budgets):
            counter.n_examples = 0
            with counter.counting():
                t0 = time.perf_counter()
                attr, maps = sise.attribute(
                    x, target=y, perturbations_per_eval=128, max_maps_per_layer=budget, return_layer_maps=True
                )
                dt = time.perf_counter() - t0
            passes = (counter.n_examples - n) / n
            rows.append((f"SISE budget={budget}", attr, passes, dt))
            if budget is None:
                rows += [(f"  SISE block map {name}", v, 0, 0.0) for name, v in maps.items()]
                # fusion ablation from the same block maps (fusion runs after scoring)
                blocks = [v[:, 0] for v in maps.values()]
                rows += [(f"  SISE fusion={f}", fuse_layer_maps(blocks, f), 0, 0.0) for f in FUSIONS]
        for name in sise._auto[tuple(x.shape[-2:])]:
            gc = LayerGradCam(model, dict(model.named_modules())[name]).attribute(x, target=y, relu_attributions=True)
            rows.append((f"LayerGradCam({name})", LayerAttribution.interpolate(gc, x.shape[-2:], "bilinear"), 0, 0.0))
        counter.close()
        print(f"{arch} clean: accuracy on these {n} images {acc:.2f}, layers {sise._auto}")
        for name, attr, passes, dt in rows:
            ebpg = energy_pointing_game(attr, data.object_masks).mean()
            box = energy_pointing_game(attr, data.boxes).mean()
            print(f"  {name:36s} EBPG(mask) {ebpg:.3f}  EBPG(box) {box:.3f}  passes/img {passes:6.1f}  {dt:6.1f}s")
    print(f"object area share {data.object_masks.float().mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=None, help="max_maps_per_layer for SISE")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; best time kept")
    parser.add_argument("--quality", action="store_true", help="budget trade-off on the reference models")
    parser.add_argument("--n", type=int, default=16, help="images for --quality")
    opts = parser.parse_args()
    if opts.quality:
        quality(opts.n, budgets=(0.5, 0.3, 8, 4))
        return
    device = torch.device(opts.device)
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval().to(device)
    x = torch.rand(1, 3, opts.size, opts.size, device=device)
    target = 0
    budget = None if opts.budget is None else (int(opts.budget) if opts.budget >= 1 else opts.budget)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)

    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    sise = SISE(net)
    counter = EvaluationCounter(net)
    # warm-up (allocator, layer choice) on a budget of one map per layer
    sise.attribute(x, target=target, perturbations_per_eval=opts.batch, max_maps_per_layer=1)
    # Time spent inside the model's forward calls during the SISE call itself:
    # a load-independent view of the overhead on a shared machine.
    calls: list = []
    def started(module, args):
        sync(device)
        calls.append(time.perf_counter())

    def ended(module, args, output):
        sync(device)
        calls.append(time.perf_counter() - calls.pop())

    net.register_forward_pre_hook(started)
    net.register_forward_hook(ended)
    # the machine is shared: interleave the three measurements, keep each one's best
    t_sise = t_forward = t_scorecam = math.inf
    in_call = math.inf
    for rep in range(opts.repeats):
        counter.n_examples = 0
        calls.clear()
        with counter.counting(), peak_memory(device) as mem:
            t0 = time.perf_counter()
            sise.attribute(x, target=target, perturbations_per_eval=opts.batch, max_maps_per_layer=budget)
            sync(device)
            wall = time.perf_counter() - t0
            t_sise = min(t_sise, wall)
            in_call = min(in_call, wall / sum(calls[1:]))  # calls[0]: the gradient pass forward
        passes = counter.n_examples - 1  # minus the gradient pass
        if rep == 0:
            peak = mem
            full, rest = divmod(passes, opts.batch)
            batches = [torch.rand(opts.batch, 3, opts.size, opts.size, device=device)] * full
            if rest:
                batches.append(torch.rand(rest, 3, opts.size, opts.size, device=device))
        t_forward = min(t_forward, forward_time(net, batches, device, repeats=1) * passes)
        with ScoreCAM(model=net, target_layers=[net.layer4]) as cam:
            cam.batch_size = opts.batch
            t0 = time.perf_counter()
            cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
            sync(device)
            t_scorecam = min(t_scorecam, time.perf_counter() - t0)
    counter.close()

    print(f"device={device} size={opts.size} batch={opts.batch} repeats={opts.repeats} layers={sise._auto}")
    print(f"SISE masked passes: {passes}, budget={budget}")
    print(f"SISE wall {t_sise:.2f}s; passes x forward {t_forward:.2f}s; ratio {t_sise / t_forward:.3f}")
    print(f"SISE wall / time inside its own masked forward calls (same call): {in_call:.3f}")
    print(f"ScoreCAM(layer4, 512 passes) wall {t_scorecam:.2f}s; SISE/ScoreCAM {t_sise / t_scorecam:.3f}")
    print(f"SISE peak extra memory {peak.peak_mb:.0f} MB ({peak.how})")


if __name__ == "__main__":
    main()
