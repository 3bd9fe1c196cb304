"""Cost of ClassWiseSynthesis: wall time as a ratio to one pass over the real data, and peak memory.

For each architecture (the zoo's clean model and its trajectory of K
checkpoints), all measured in the same process, one after the other:

- the unit: one pass over the real data at one checkpoint (what the real
  side costs per checkpoint: a forward and a backward per class of every
  batch, ``real_class_gradients`` with one checkpoint);
- the real side along the trajectory (K checkpoints, plus the BatchNorm
  statistics of the initialisation), per checkpoint;
- one iteration of gradient matching, per class and per checkpoint, and one
  iteration of trajectory matching (``student_steps`` unrolled steps on the
  whole set), at 1 and 10 images per class;
- the peak resident memory above the start of each phase (sampled RSS).

Ratios are reported because absolute times on a shared machine are noisy.
Writes ``benchmarks/results/classwise_cost.{md,json}``. Run::

    python -m benchmarks.classwise_cost
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from captum_global.attr import ClassWiseSynthesis

from benchmarks import classwise_common as common
from benchmarks.measure import peak_memory


def timed(fn):
    with peak_memory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, memory.peak_mb


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--student-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="classwise_cost")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows: List[Dict] = []
    for arch in args.archs:
        _, model, trajectory, data = common.clean_reference(arch, args.n_data, args.seed)
        method = ClassWiseSynthesis(model)
        method.real_class_gradients(data, checkpoints=[trajectory[-1]], batch_size=250)  # warm-up
        _, unit, unit_mb = timed(lambda: method.real_class_gradients(data, checkpoints=[trajectory[-1]], batch_size=250))
        targets, real_s, real_mb = timed(lambda: method.real_class_gradients(data, checkpoints=trajectory,
                                                                             batch_size=250, real_examples=1))
        K, C = len(trajectory), len(targets.classes)
        row = dict(arch=arch, checkpoints=K, classes=C, n_data=args.n_data, pass_seconds=round(unit, 2),
                   pass_peak_mb=round(unit_mb, 1), real_side_per_checkpoint=real_s / K / unit,
                   real_side_peak_mb=round(real_mb, 1))
        for n in args.ipc:
            _, g_s, g_mb = timed(lambda: common.synthesise(model, targets, None, n, "gradient", args.iterations,
                                                           args.seed, augment=False))
            _, t_s, t_mb = timed(lambda: common.synthesise(model, targets, None, n, "trajectory", args.iterations,
                                                           args.seed, augment=False,
                                                           student_steps=args.student_steps))
            # Both include the final distances of the result at every checkpoint (2 x C x K single
            # backward passes of n images); they are small next to the iterations.
            row[f"gradient_ipc{n}_per_class_checkpoint_iteration"] = g_s / (args.iterations * C * K) / unit
            row[f"gradient_ipc{n}_peak_mb"] = round(g_mb, 1)
            row[f"trajectory_ipc{n}_per_iteration"] = t_s / args.iterations / unit
            row[f"trajectory_ipc{n}_peak_mb"] = round(t_mb, 1)
        rows.append(row)
        print(row, flush=True)
    lines = ["Times are ratios to one pass over the real data at one checkpoint (the unit, seconds in the "
             f"first column; {args.n_data} images of 64 x 64 px); memory is the sampled peak of the resident "
             f"set above the start of each phase. {args.iterations} iterations timed per setting; trajectory "
             f"matching with {args.student_steps} student steps on the whole set.", "",
             "| arch | K | unit (s) | real side per checkpoint | gradient, per class, checkpoint and iteration: "
             "n=" + " / n=".join(map(str, args.ipc)) + " | trajectory, per iteration: n=" + " / n=".join(map(str, args.ipc))
             + " | peak MB: real side; gradient; trajectory (largest n) |",
             "|---|---|---|---|---|---|---|"]
    big = max(args.ipc)
    for r in rows:
        g = " / ".join(f"{r[f'gradient_ipc{n}_per_class_checkpoint_iteration']:.3f}" for n in args.ipc)
        t = " / ".join(f"{r[f'trajectory_ipc{n}_per_iteration']:.3f}" for n in args.ipc)
        lines.append(f"| {r['arch']} | {r['checkpoints']} | {r['pass_seconds']:.1f} | {r['real_side_per_checkpoint']:.2f} | "
                     f"{g} | {t} | {r['real_side_peak_mb']:.0f}; {r[f'gradient_ipc{big}_peak_mb']:.0f}; "
                     f"{r[f'trajectory_ipc{big}_peak_mb']:.0f} |")
    seconds = time.perf_counter() - start
    common.write(args.out, "Class-wise synthesis: cost", common.command_line("classwise_cost", args), seconds,
                 lines, dict(args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
