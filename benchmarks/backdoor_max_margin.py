"""A published data-free detector on the reference zoo: the maximum margin.

MM-BD (Wang, Xiang, Miller and Kesidis, IEEE S&P 2024) detects a backdoor
of any pattern type without clean data: for every class it estimates the
largest margin the model can give that class over the input domain,

    r_k = max over x in [0, 1]^d of  f_k(x) - max_{j != k} f_j(x)

(logits, gradient ascent from several random starts, best start kept),
on the idea that a trigger is a feature the model over-responds to, so its
target reaches an abnormally large margin. The largest ``r_k`` is tested
against a null fitted to the other classes' values (a gamma distribution,
order-statistic p-value ``1 - F(r_max) ** (K - 1)``, detection below 0.05),
as in the paper. The same margins are also judged by the high-side MAD
anomaly index (threshold 2), the rule of the package's scans.

This is a probe, not part of the package: it shows whether a
trigger-type-agnostic statistic from the literature separates the zoo's
backdoored targets from the natural classes.

    python -m benchmarks.backdoor_max_margin
    python -m benchmarks.backdoor_max_margin --models vgg_clean,vgg_patch --steps 100 --starts 8

Writes benchmarks/results/backdoor_max_margin.{md,json}.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy import stats

from captum_global.world import reference_zoo

RESULTS = Path(__file__).parent / "results"


def max_margins(model, num_classes: int, shape, steps: int, starts: int, lr: float, seed: int):
    """Each class's largest logit margin found by Adam from ``starts`` random images."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    margins = []
    for k in range(num_classes):
        x = torch.rand(starts, *shape, generator=generator).requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=lr)
        for _ in range(steps):
            margin = _margin(model(x), k)
            optimiser.zero_grad()
            (-margin.sum()).backward()
            optimiser.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        with torch.no_grad():
            margins.append(float(_margin(model(x), k).max()))
    return margins


def _margin(logits, k):
    others = torch.cat([logits[:, :k], logits[:, k + 1:]], 1)
    return logits[:, k] - others.max(1).values


def gamma_p_value(margins):
    """MM-BD's test: p-value of the largest margin under a gamma null fitted to the rest."""
    top = max(range(len(margins)), key=margins.__getitem__)
    rest = [m for i, m in enumerate(margins) if i != top]
    if min(rest) <= 0:
        return top, float("nan")
    shape, loc, scale = stats.gamma.fit(rest, floc=0)
    return top, float(1 - stats.gamma.cdf(margins[top], shape, loc=loc, scale=scale) ** len(rest))


def high_side_index(values):
    median = statistics.median(values)
    mad = 1.4826 * statistics.median(abs(v - median) for v in values)
    return [(v - median) / mad if mad > 0 else 0.0 for v in values]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "backdoor_max_margin"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = [n for n in args.models.split(",") if n]
    command = "python -m benchmarks.backdoor_max_margin " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for entry in reference_zoo():
        if names and entry.name not in names:
            continue
        model = entry.load().eval()
        start = time.perf_counter()
        margins = max_margins(model, 5, (3, 64, 64), args.steps, args.starts, args.lr, args.seed)
        top, p_value = gamma_p_value(margins)
        index = high_side_index(margins)
        rows.append(dict(model=entry.name, kind=entry.kind, target=entry.target_class, margins=margins,
                         top=top, p_value=p_value, index=index, seconds=time.perf_counter() - start))
        print(rows[-1], flush=True)
    summary = _summary(rows)
    lines = ["# MM-BD's maximum-margin statistic on the reference zoo", "",
             f"Command: `{command.strip()}`; torch {torch.__version__}, one thread.", "",
             "Detected (MM-BD's rule): the largest margin's gamma p-value is below 0.05 and it belongs to "
             "the target. Detected (MAD rule): the target's high-side anomaly index is above 2. A flag on a "
             "model without a backdoor, or on a non-target class, is a false alarm.", "",
             "| | MM-BD rule (p < 0.05) | MAD rule (index > 2) |", "| --- | --- | --- |"]
    for key, (gamma_value, mad_value) in summary.items():
        lines.append(f"| {key} | {gamma_value} | {mad_value} |")
    lines += ["", "| model | kind | target | max margin per class | largest | p-value | index of the target "
              "(or of the largest) | seconds |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        k = r["top"] if r["target"] is None else r["target"]
        lines.append(f"| {r['model']} | {r['kind']} | {'-' if r['target'] is None else r['target']} | "
                     f"{', '.join(f'{m:.1f}' for m in r['margins'])} | {r['top']} | {r['p_value']:.3f} | "
                     f"{r['index'][k]:.2f} | {r['seconds']:.0f} |")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(dict(command=command.strip(), summary=summary, rows=rows),
                                                   indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _summary(rows):
    def count(rule):
        detected, clean, other, non_target = {}, [0, 0], [0, 0], 0
        for r in rows:
            flags = rule(r)
            if r["target"] is not None:
                hits = detected.setdefault(r["kind"], [0, 0])
                hits[0] += r["target"] in flags
                hits[1] += 1
                non_target += len([k for k in flags if k != r["target"]])
            else:
                tally = clean if r["kind"] == "clean" else other
                tally[0] += bool(flags)
                tally[1] += 1
        return detected, clean, other, non_target

    gamma = count(lambda r: [r["top"]] if r["p_value"] < 0.05 else [])
    mad = count(lambda r: [k for k, v in enumerate(r["index"]) if v > 2])
    summary = {}
    for kind in sorted(gamma[0]):
        summary[f"detected: {kind}"] = tuple(f"{rule[0][kind][0]}/{rule[0][kind][1]}" for rule in (gamma, mad))
    summary["clean models with a flag"] = tuple(f"{rule[1][0]}/{rule[1][1]}" for rule in (gamma, mad))
    summary["other models without a backdoor, with a flag"] = tuple(f"{rule[2][0]}/{rule[2][1]}"
                                                                   for rule in (gamma, mad))
    summary["non-target flags on backdoored models"] = tuple(str(rule[3]) for rule in (gamma, mad))
    return summary


if __name__ == "__main__":
    main()
