"""SISE's cost against its peers, as multiples of one forward pass, on the same images.

Run: ``python -m benchmarks.sise_speed --models vgg,resnet,photos --n 4 --repeats 3 --out benchmarks/results``

Per model and method, on the same ``--n`` images of the benchmark workload
(``benchmarks.workloads``: the reference nets at 64 px, EfficientNet-Lite0 at
224 px on the real-photo set):

- masked (perturbed) passes per image: examples through the model during the
  call, minus the method's own plain passes (SISE and Grad-CAM: one gradient
  pass; Score-CAM and Occlusion: one plain pass);
- wall time per image, and as a multiple of one no-grad forward pass per
  image (measured in the same rounds, over ``--forward-passes`` copies of the
  images in batches of ``--batch``, so that it lasts about as long as a
  method and sees the same load);
- for SISE, its overhead: wall time over the time spent inside its masked
  forward calls (target <= 1.10), and the same after its set-up (layer
  choice and the gradient pass): the cost of grouping, upsampling masks and
  fusion.

Methods: ``SISE`` (the default), ``SISE (paper settings)`` (every kept mask
scored, hard Otsu fusion, logit scores: the settings before adaptive
selection), Score-CAM (``pytorch_grad_cam``, same layer as Grad-CAM), RISE
(``captum_global.attr.RISE``, ``--rise-masks``), Captum Occlusion (the line-up's
window) and Grad-CAM. The machine is shared: the methods are interleaved over
``--repeats`` rounds and each keeps its fastest round, the forward pass too.
"""
import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks.measure import EvaluationCounter, forward_time
from benchmarks.methods import LayerInfo, get_factory, pick_cam_layer
from benchmarks.workloads import load_workload
from captum_global.lineup import build_lineup

__all__ = ["measure_costs", "main"]

METHODS = ("SISE", "SISE (paper settings)", "scorecam", "rise", "occlusion", "gradcam")
_PLAIN_PASSES = {"SISE": 1, "SISE (paper settings)": 1, "gradcam": 1, "scorecam": 1, "occlusion": 1}


class _ForwardClock:
    """Start times and durations of the model's forward calls while ``active``.

    SISE's masked passes are the no-grad calls after its one gradient pass
    (the call made with autograd on); what comes before them (layer choice,
    gradient pass) is its set-up.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: List[List[float]] = []  # [start, seconds, grad enabled]
        self.active = False
        self._handles = [model.register_forward_pre_hook(self._start), model.register_forward_hook(self._stop)]

    def _start(self, module, args) -> None:
        if self.active:
            self.calls.append([time.perf_counter(), -1.0, float(torch.is_grad_enabled())])

    def _stop(self, module, args, output) -> None:
        if self.active and self.calls and self.calls[-1][1] < 0:
            self.calls[-1][1] = time.perf_counter() - self.calls[-1][0]

    def masked(self) -> List[List[float]]:
        last_grad = max(i for i, c in enumerate(self.calls) if c[2])
        return self.calls[last_grad + 1:]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _explainers(work, rise_masks: int, batch: int) -> Dict[str, object]:
    lineup = build_lineup(work.model, work.images[:1], ["SISE", "SISE (paper settings)"])
    name, layer = pick_cam_layer(work.model, work.images[:1])
    info = LayerInfo(name, layer, tuple(work.images.shape[-2:]), batch, {"rise_masks": rise_masks},
                     example=work.images[:1])
    out = dict(lineup)
    for method in ("scorecam", "rise", "occlusion", "gradcam"):
        out[method] = get_factory(method)(work.model, info)
    return out


def measure_costs(model_name: str, n: int, repeats: int, rise_masks: int, batch: int,
                  forward_passes: int = 128) -> List[Dict[str, object]]:
    """Rows ``{model, method, passes_per_image, seconds_per_image, time_vs_forward, ...}``.

    The forward pass is timed over ``forward_passes`` copies of the images in
    batches of ``batch``: as long as a method's own passes, so that on a
    shared machine both see the same contention.
    """
    work = load_workload(model_name, n)
    x, y = work.images[:n], work.targets[:n]
    copies = x.repeat((forward_passes + len(x) - 1) // len(x), 1, 1, 1)[:forward_passes]
    forward_batches = list(copies.split(batch))
    explain = _explainers(work, rise_masks, batch)
    counter, clock = EvaluationCounter(work.model), _ForwardClock(work.model)
    best = {m: math.inf for m in METHODS}
    passes, overhead, bookkeeping = {}, math.inf, math.inf
    fwd = math.inf
    try:
        for _ in range(repeats):
            fwd = min(fwd, forward_time(work.model, forward_batches, torch.device("cpu"), repeats=1))
            for method in METHODS:
                counter.n_examples = 0
                clock.calls.clear()
                with counter.counting():
                    clock.active = method.startswith("SISE")
                    t0 = time.perf_counter()
                    explain[method](x, y)
                    wall = time.perf_counter() - t0
                    clock.active = False
                best[method] = min(best[method], wall / len(x))
                passes[method] = counter.n_examples / len(x) - _PLAIN_PASSES.get(method, 0)
                if method == "SISE":
                    masked = clock.masked()
                    inside = sum(c[1] for c in masked)
                    overhead = min(overhead, wall / inside)
                    bookkeeping = min(bookkeeping, (t0 + wall - masked[0][0]) / inside)
    finally:
        counter.close()
        clock.close()
    rows = []
    for method in METHODS:
        row = {"model": model_name, "method": method, "passes_per_image": passes[method],
               "seconds_per_image": best[method], "time_vs_forward": best[method] / fwd,
               "forward_seconds_per_image": fwd, "n_images": len(x)}
        if method == "SISE":
            row["wall_over_masked_passes"] = overhead
            row["after_setup_over_masked_passes"] = bookkeeping
        rows.append(row)
    return rows


def _markdown(result: Dict[str, object]) -> str:
    lines = ["# SISE cost against its peers", "", f"Command: `{result['command']}`", "",
             f"Torch {result['torch']}, {result['threads']} thread(s), CPU. Each method keeps its fastest of "
             f"{result['repeats']} interleaved rounds; the forward pass too.", "",
             "| model | method | masked passes / image | seconds / image | x forward pass | vs paper-settings passes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == model]
        paper = next(r for r in rows if r["method"] == "SISE (paper settings)")["passes_per_image"]
        for r in rows:
            lines.append(f"| {model} | {r['method']} | {r['passes_per_image']:.1f} | {r['seconds_per_image']:.3f} | "
                         f"{r['time_vs_forward']:.1f} | {r['passes_per_image'] / paper:.0%} |")
    sise = [r for r in result["rows"] if "wall_over_masked_passes" in r]
    lines += ["", "SISE overhead, as a multiple of the time inside its masked forward calls: wall time "
              + ", ".join(f"{r['model']} {r['wall_over_masked_passes']:.3f}" for r in sise)
              + "; wall time after its set-up (layer choice and gradient pass) "
              + ", ".join(f"{r['model']} {r['after_setup_over_masked_passes']:.3f}" for r in sise) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sise_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet,photos")
    parser.add_argument("--n", type=int, default=4, help="images per model (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="Score-CAM / RISE masked inputs per call")
    parser.add_argument("--forward-passes", type=int, default=128, help="images in the forward-pass timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for sise_cost.md/.json (default: print only)")
    parser.add_argument("--name", default="sise_cost")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    command = "python -m benchmarks.sise_speed " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    rows = []
    for model in opts.models.split(","):
        rows += measure_costs(model, opts.n, opts.repeats, opts.rise_masks, opts.batch, opts.forward_passes)
    result = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "repeats": opts.repeats, "rows": rows}
    text = _markdown(result)
    print(text)
    if opts.out:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        Path(opts.out, f"{opts.name}.json").write_text(json.dumps(result, indent=2))
        Path(opts.out, f"{opts.name}.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
