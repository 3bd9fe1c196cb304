"""Why does SISE trail Grad-CAM(layer3) on the ResNet? Per-block numbers.

Run: ``python -m benchmarks.sise_layer_study [--models vgg,resnet] [--n 16]``

On the benchmark's images (``benchmarks.workloads``, shapes test split,
true class) it prints, per reference model, EBPG against the object mask of:

- Captum ``LayerGradCam`` on every SISE layer (ReLU, bilinear upsampling);
- each block's SISE map ``V`` (``return_layer_maps=True``), with the share
  of the image its Otsu gate keeps open and the share of the object inside
  that gate (the gate of block ``l`` multiplies everything fused so far);
- the fusion rules from the same block maps (``otsu``, ``soft-otsu``,
  ``mean``, ``none``) and Otsu fusion of block prefixes (without the last
  block(s));
- SISE re-run with ``score="softmax"`` and with ``mu`` in -inf, 0, 0.5;
- for the variants and Grad-CAM on each block, also bbox accuracy, Average
  Drop % and insertion / deletion AUC (16 steps, as the benchmark run);
- a diagnostic outside SISE (not a method): per block, the spread of the
  mask weights ``w = logit / area`` (std / mean) and EBPG of the block map
  rebuilt with centred weights ``relu(sum (w - mean w) m)``; if the centred
  map localises much better, the shared part of the weights (the plain
  average of the kept activation maps) is what blurs ``V``.

Nothing here changes a default: it only measures them.
"""
import argparse
import time

import torch
from captum.attr import LayerAttribution, LayerGradCam

from benchmarks.measure import EvaluationCounter
from benchmarks.workloads import load_workload
from captum_global._maps import minmax_normalise, resize_maps
from captum_global.attr import SISE
from captum_global.attr._fusion import FUSIONS, fuse_layer_maps, hard_gate
from captum_global.metrics import bbox_accuracy, deletion_auc, drop_and_increase, energy_pointing_game, insertion_auc


def _ebpg(attr, masks) -> float:
    return energy_pointing_game(attr, masks).mean().item()


def study(name: str, n: int, batch: int) -> None:
    work = load_workload(name, n)
    model, x, y, masks = work.model, work.images, work.targets, work.masks
    sise = SISE(model)
    counter = EvaluationCounter(model)
    print(f"\n## {name}: {len(x)} images, object share {masks.float().mean():.3f}")

    def run(**kw):
        counter.n_examples = 0
        with counter.counting():
            t0 = time.perf_counter()
            out = sise.attribute(x, target=y, perturbations_per_eval=batch, return_layer_maps=True, **kw)
            dt = time.perf_counter() - t0
        return out, (counter.n_examples - len(x)) / len(x), dt

    (attr, maps), passes, dt = run()
    layers = list(maps)
    shapes = {}
    hooks = [dict(model.named_modules())[l].register_forward_hook(
        lambda m, i, o, l=l: shapes.__setitem__(l, tuple(o.shape[1:]))) for l in layers]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    print(f"SISE default (mu=0, logit, otsu): EBPG {_ebpg(attr, masks):.3f}, {passes:.1f} passes/img, {dt:.1f} s")
    print("| block | activation [C, h, w] | Grad-CAM EBPG | SISE V EBPG | gate open share | object share in gate |")
    print("| --- | --- | --- | --- | --- | --- |")
    obj = masks.float()
    for layer in layers:
        gc = LayerGradCam(model, dict(model.named_modules())[layer]).attribute(x, target=y, relu_attributions=True)
        gc = LayerAttribution.interpolate(gc, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        v = maps[layer][:, 0]
        gate = hard_gate(v)
        recall = ((gate * obj).sum((1, 2)) / obj.sum((1, 2))).mean().item()
        print(f"| {layer} | {list(shapes[layer])} | {_ebpg(gc, masks):.3f} | {_ebpg(v, masks):.3f} | "
              f"{gate.mean().item():.3f} | {recall:.3f} |")
    blocks = [maps[l][:, 0] for l in layers]
    print("fusion from the same block maps: " + ", ".join(
        f"{f} {_ebpg(fuse_layer_maps(blocks, f), masks):.3f}" for f in FUSIONS))
    print("otsu fusion of the first k blocks: " + ", ".join(
        f"k={k} {_ebpg(fuse_layer_maps(blocks[:k], 'otsu'), masks):.3f}" for k in range(1, len(blocks) + 1)))
    variants = {"SISE default": attr[:, :1],
                "SISE fusion=soft-otsu": fuse_layer_maps(blocks, "soft-otsu").unsqueeze(1)}
    for kw in ({"score": "softmax"}, {"mu": float("-inf")}, {"mu": 0.5}, {"score": "softmax", "fusion": "soft-otsu"}):
        (a, m), p, dt = run(**kw)
        per = ", ".join(f"{l} {_ebpg(v, masks):.3f}" for l, v in m.items())
        print(f"SISE {kw}: EBPG {_ebpg(a, masks):.3f}, {p:.1f} passes/img, {dt:.1f} s; block V: {per}")
        variants[f"SISE {kw}"] = a[:, :1]
    counter.close()
    for layer in layers:
        gc = LayerGradCam(model, dict(model.named_modules())[layer]).attribute(x, target=y, relu_attributions=True)
        variants[f"Grad-CAM {layer}"] = LayerAttribution.interpolate(gc, tuple(x.shape[-2:]), "bilinear").detach()
    print("| map | EBPG | bbox | Drop % | ins AUC | del AUC |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, a in variants.items():
        drop, _ = drop_and_increase(model, x, a, y, batch_size=64)
        ins = insertion_auc(model, x, a, y, n_steps=16, batch_size=64).mean().item()
        dele = deletion_auc(model, x, a, y, n_steps=16, batch_size=64).mean().item()
        print(f"| {label} | {_ebpg(a, masks):.3f} | {bbox_accuracy(a, masks).mean().item():.3f} | "
              f"{drop.mean().item():.1f} | {ins:.3f} | {dele:.3f} |")
    print("| block | kept maps / img | weight std / mean | V rebuilt EBPG | V centred EBPG |")
    print("| --- | --- | --- | --- | --- |")
    for layer in layers:
        print("| " + " | ".join(_centred(model, dict(model.named_modules())[layer], x, y, masks, layer)) + " |")


@torch.no_grad()
def _centred(model, module, x, y, masks, layer):
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        alpha = torch.autograd.grad(out.gather(1, y.view(-1, 1)).sum(), store["a"])[0].sum((2, 3))
    handle.remove()
    act = store["a"].detach()
    kept, spread, full, centred = [], [], [], []
    for i in range(len(x)):
        flat = act[i].flatten(1)
        alive = flat.amax(1) > flat.amin(1)  # as SISE: constant maps are no masks
        ch = ((alpha[i] > 0) & alive).nonzero().view(-1)
        if len(ch) == 0:  # SISE's fallback: the live map with the largest alpha
            ch = alpha[i].masked_fill(~alive, -float("inf")).argmax().view(1)
        m = minmax_normalise(resize_maps(act[i, ch].unsqueeze(1), tuple(x.shape[-2:])))
        w = torch.cat([model(x[i:i + 1] * m[j:j + 64]).gather(1, y[i].expand(len(m[j:j + 64])).view(-1, 1))
                       for j in range(0, len(m), 64)]).view(-1) / m.sum((1, 2, 3)).clamp(min=1e-12)
        kept.append(len(ch))
        spread.append((w.std() / w.mean().abs()).item() if len(w) > 1 else 0.0)
        full.append((w.view(-1, 1, 1) * m[:, 0]).sum(0))
        centred.append(((w - w.mean()).view(-1, 1, 1) * m[:, 0]).sum(0).clamp(min=0))
    full, centred = torch.stack(full), torch.stack(centred)
    return (layer, f"{sum(kept) / len(kept):.1f}", f"{sum(spread) / len(spread):.2f}",
            f"{_ebpg(full, masks):.3f}", f"{_ebpg(centred, masks):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="SISE perturbations_per_eval")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for name in opts.models.split(","):
        study(name, opts.n, opts.batch)


if __name__ == "__main__":
    main()
