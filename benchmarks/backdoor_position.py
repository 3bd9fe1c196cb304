"""The scan's position check over seeds: plain mask l1 against l1 x position specificity.

For every zoo model and seed, one ``scan_for_backdoor(..., position_check=True)``
on the 100 clean images of ``benchmarks/backdoor_scan.py``. The check does
not change the search, so the plain rule's decision comes from the same
run's ``mask_l1`` (the scan's own rule: low-side MAD index of the log
norms, scale floored at ``noise_floor``, threshold 2). Reported per seed:
detections per trigger kind, clean and other non-backdoored models with a
flag, non-target flags, the target as top anomaly, and whether the
target's stamp is the most position-specific class.

    python -m benchmarks.backdoor_position --seeds 0 1

Writes ``benchmarks/results/backdoor_position.{md,json}`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from captum_global.backdoor import scan_for_backdoor
from captum_global.backdoor.scan import DEFAULTS
from captum_global.metrics import mad_anomaly_index
from captum_global.world import make_dataset, reference_zoo, zoo_entry

RESULTS = Path(__file__).resolve().parent / "results"
CLEAN_SEED = 20_261_125     # the clean set of benchmarks/backdoor_scan.py
KINDS = ("patch", "blended", "sig", "filter")


def low_side_log_index(norms: torch.Tensor) -> torch.Tensor:
    """The scan's decision rule on ``norms`` (all classes testable with clean inputs)."""
    logs = norms.double().log()
    scores = mad_anomaly_index(logs, min_scale=DEFAULTS["noise_floor"]).float()
    return torch.where(logs < logs.quantile(0.5), scores, torch.zeros_like(scores))


def summarise(rows, rule: str, threshold: float = 2.0) -> dict:
    out = {f"detected {k}": [0, 0] for k in KINDS}
    out.update({"clean models flagged": [0, 0], "other non-backdoored flagged": [0, 0],
                "non-target flags": 0, "target is top anomaly": [0, 0], "target most position-specific": [0, 0]})
    for r in rows:
        index = torch.tensor(r["index"][rule])
        flagged = [i for i, v in enumerate(index.tolist()) if v > threshold]
        t = r["target"]
        if t is None:
            key = "clean models flagged" if r["kind"] == "clean" else "other non-backdoored flagged"
            out[key][0] += bool(flagged)
            out[key][1] += 1
            continue
        out[f"detected {r['kind']}"][0] += t in flagged
        out[f"detected {r['kind']}"][1] += 1
        out["non-target flags"] += len([c for c in flagged if c != t])
        out["target is top anomaly"][0] += int(index.argmax()) == t and float(index.max()) > 0
        out["target is top anomaly"][1] += 1
        spec = r["position_specificity"]
        out["target most position-specific"][0] += min(range(len(spec)), key=spec.__getitem__) == t
        out["target most position-specific"][1] += 1
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: every zoo model)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", default=str(RESULTS / "backdoor_position"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else [e.name for e in reference_zoo()]
    clean = make_dataset(100, seed=CLEAN_SEED).images
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for name in names:
            entry = zoo_entry(name)
            scan = scan_for_backdoor(entry.load(), clean[:1], clean_inputs=clean, seed=seed, position_check=True)
            s = scan.statistics
            rows.append(dict(model=name, kind=entry.kind, target=entry.target_class, seed=seed,
                             mask_l1=s["mask_l1"].tolist(), position_specificity=s["position_specificity"].tolist(),
                             index={"plain": low_side_log_index(s["mask_l1"]).tolist(),
                                    "position": scan.anomaly_index.tolist()}))
            print(name, seed, [round(v, 2) for v in rows[-1]["position_specificity"]], scan.flagged, flush=True)
    command = "python -m benchmarks.backdoor_position " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {seed: {rule: summarise([r for r in rows if r["seed"] == seed], rule) for rule in ("plain", "position")}
               for seed in args.seeds}
    lines = ["# The scan's position check over seeds", "",
             f"Command: `{command}`; torch {torch.__version__}, one thread; 100 clean images (reference-world "
             f"split seed {CLEAN_SEED}); {time.perf_counter() - start:.0f} s.", "",
             "Plain: the scan's rule on the mask l1; position: on mask l1 x position specificity (the "
             "`position_check=True` decision). Same scans, so the same stamps.", "",
             "| | " + " | ".join(f"seed {s}: plain | seed {s}: position" for s in args.seeds) + " |",
             "|---|" + "---|---|" * len(args.seeds)]
    for key in summary[args.seeds[0]]["plain"]:
        cells = []
        for s in args.seeds:
            for rule in ("plain", "position"):
                v = summary[s][rule][key]
                cells.append(f"{v[0]}/{v[1]}" if isinstance(v, list) else str(v))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Per model: target's position specificity (lowest of the classes?), target's index plain -> position.",
              "", "| model | seed | specificity per class | target index: plain -> position |", "|---|---|---|---|"]
    for r in rows:
        t = r["target"]
        idx = "-" if t is None else f"{r['index']['plain'][t]:.2f} -> {r['index']['position'][t]:.2f}"
        lines.append(f"| {r['model']} | {r['seed']} | {', '.join(f'{v:.2f}' for v in r['position_specificity'])} | {idx} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(command=command, summary=summary, rows=rows), indent=1))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
