"""Peak memory of ClassWiseSynthesis, each stage in a process of its own.

The resident set of one long process says little about a stage (the
allocator keeps and reuses what earlier stages freed), so every stage runs
in a fresh process and reports that process's peak resident set
(``ru_maxrss``). Stages, cumulative, for each architecture (the zoo's clean
model and its trajectory of K checkpoints):

- ``setup``: imports, the model, its trajectory and the real data;
- ``real side``: + the real targets along the trajectory (one streaming
  pass per checkpoint);
- ``gradient n``: + gradient matching of ``n`` images per class;
- ``trajectory n``: + trajectory matching of ``n`` images per class
  (``student_steps`` unrolled student steps on the whole set).

What a stage adds is its peak minus the previous stage's. Writes
``benchmarks/results/classwise_memory.{md,json}``. Run::

    python -m benchmarks.classwise_memory
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Dict, List

STAGES = ("setup", "real side", "gradient", "trajectory")


def stage(arch: str, name: str, n: int, args) -> None:
    """Run one stage in this process and print its peak resident set (MB)."""
    import torch

    
    from benchmarks import classwise_common as common

    torch.set_num_threads(1)
    _, model, trajectory, data = common.clean_reference(arch, args.n_data, args.seed)
    if name != "setup":
        from captum_global.attr import ClassWiseSynthesis

        targets = ClassWiseSynthesis(model).real_class_gradients(data, checkpoints=trajectory, batch_size=250)
        if name in ("gradient", "trajectory"):
            per_mode = dict(student_steps=args.student_steps) if name == "trajectory" else {}
            common.synthesise(model, targets, None, n, name, args.iterations, args.seed, augment=False, **per_mode)
    print(json.dumps(dict(peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--n-data", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--student-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stage", nargs=3, default=None, help=argparse.SUPPRESS)  # arch name n: one child
    parser.add_argument("--out", default="classwise_memory")
    args = parser.parse_args(argv)
    if args.stage:
        arch, name, n = args.stage
        return stage(arch, name, int(n), args)
    from benchmarks import classwise_common as common

    start = time.perf_counter()
    rows: List[Dict] = []
    for arch in args.archs:
        plan = [("setup", 0), ("real side", 0)] + [(m, n) for n in args.ipc for m in ("gradient", "trajectory")]
        row: Dict = dict(arch=arch)
        for name, n in plan:
            child = [sys.executable, "-m", "benchmarks.classwise_memory", "--n-data", str(args.n_data),
                     "--iterations", str(args.iterations), "--student-steps", str(args.student_steps),
                     "--seed", str(args.seed), "--stage", arch, name, str(n)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row[name if not n else f"{name} {n}"] = round(json.loads(out)["peak_mb"], 1)
            print(arch, name, n, row, flush=True)
        rows.append(row)
    keys = ["setup", "real side"] + [f"{m} {n}" for n in args.ipc for m in ("gradient", "trajectory")]
    lines = [f"Peak resident set (MB) of a fresh process that runs the stages up to the column's "
             f"({args.n_data} real images of 64 x 64 px, {args.iterations} iterations, trajectory matching with "
             f"{args.student_steps} student steps); in brackets what the stage adds to the real side's peak.", "",
             "| arch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r['setup']:.0f}", f"{r['real side']:.0f} (+{r['real side'] - r['setup']:.0f} over setup)"]
        cells += [f"{r[k]:.0f} ({r[k] - r['real side']:+.0f})" for k in keys[2:]]
        lines.append(f"| {r['arch']} | " + " | ".join(cells) + " |")
    args_out = {k: v for k, v in vars(args).items() if k != "stage"}
    command = common.command_line("classwise_memory", argparse.Namespace(**args_out))
    common.write(args.out, "Class-wise synthesis: peak memory", command, time.perf_counter() - start, lines,
                 dict(args=args_out, rows=rows))


if __name__ == "__main__":
    main()
