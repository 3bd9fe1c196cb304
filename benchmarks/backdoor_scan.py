"""Backdoor scans side by side: the input-agnostic scan against Neural Cleanse, on the reference zoo.

For every model of the zoo (clean ones, backdoored ones of every trigger
kind, and the other non-backdoored ones), both scans run in the same
process on the same clean inputs (a defender's small clean set: images of
the reference world from a split no model was trained on), with their
default settings and no knowledge of the trigger. Per scan it records the
flagged classes, the top anomaly, the per-class statistics, the
localisation of the suspected trigger on the planted one (local triggers),
model evaluations and wall time; then the summary: detection rate (target
flagged), correct-target rate (target is the top anomaly), false alarms
(any class flagged on a model without a backdoor; a non-target class
flagged on a backdoored one), localisation, and the wall-time ratio of the
input-agnostic scan to Neural Cleanse measured in the same run.

    python -m benchmarks.backdoor_scan                       # every shipped zoo model
    python -m benchmarks.backdoor_scan --models vgg_patch,vgg_clean
    python -m benchmarks.backdoor_scan --models a,b --out /tmp/part1    # parts run side by side ...
    python -m benchmarks.backdoor_scan --merge /tmp/part1.json,/tmp/part2.json   # ... then combined
    python -m benchmarks.backdoor_scan --nc-from benchmarks/results/backdoor_scan.json  # reuse stored NC results

Writes benchmarks/results/backdoor_scan.{md,json} (``--out`` to change),
rewriting them after every model so a long run can be followed.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.backdoor.scan import DEFAULTS as SCAN_DEFAULTS
from captum_global.metrics import mad_anomaly_index
from captum_global.world import make_dataset, reference_zoo

RESULTS = Path(__file__).parent / "results"
CLEAN_SEED = 20_261_125     # a split of the reference world no zoo model was trained on
LOCAL_KINDS = ("patch", "blended")


def run_model(entry, clean: torch.Tensor, seed: int, scan_options: Dict, nc_options: Dict,
              nc_row: Dict = None) -> Dict:
    model = entry.load()
    local = entry.trigger is not None and entry.kind in LOCAL_KINDS
    region = entry.trigger.mask(*clean.shape[-2:]) if local else None
    row = {"name": entry.name, "arch": entry.arch, "kind": entry.kind, "target": entry.target_class,
           "trigger": entry.trigger.describe() if entry.trigger is not None else None}
    runs = (("neural_cleanse", lambda: neural_cleanse(model, clean, trigger_mask=region, seed=seed, **nc_options)),
            ("ours", lambda: scan_for_backdoor(model, clean[:1], clean_inputs=clean, trigger_mask=region,
                                               seed=seed, **scan_options)))
    if nc_row is not None:      # Neural Cleanse's stored result for this model (same images, seed, settings)
        row["neural_cleanse"] = nc_row
        runs = runs[1:]
    for label, run in runs:
        start = time.perf_counter()
        scan = run()
        result = scan.as_dict()
        result["wall_seconds"] = time.perf_counter() - start
        row[label] = result
    return row


def verdict(row: Dict, label: str) -> Dict:
    scan, target = row[label], row["target"]
    flagged = scan["flagged"]
    out = {"flagged": flagged, "suspect": scan["suspect"],
           "false_alarms": len([c for c in flagged if c != target])}
    if target is not None:
        k = scan["classes"].index(target)
        out.update(detected=target in flagged, correct=scan["suspect"] == target,
                   index=scan["anomaly_index"][k])
        if scan["localisation"]:
            out.update(energy=scan["localisation"]["energy_share"][k], iou=scan["localisation"]["iou"][k])
    return out


def summarise(rows: List[Dict]) -> Dict:
    out = {}
    for label in ("ours", "neural_cleanse"):
        v = [(r, verdict(r, label)) for r in rows]
        backdoored = [(r, x) for r, x in v if r["target"] is not None]
        clean = [(r, x) for r, x in v if r["kind"] == "clean"]
        other = [(r, x) for r, x in v if r["target"] is None and r["kind"] != "clean"]
        kinds = sorted({r["kind"] for r, _ in backdoored})
        local = [x for r, x in backdoored if "energy" in x]
        out[label] = {
            "detected": {k: [sum(x["detected"] for r, x in backdoored if r["kind"] == k),
                             sum(1 for r, _ in backdoored if r["kind"] == k)] for k in kinds},
            "correct_target": [sum(x["correct"] for _, x in backdoored), len(backdoored)],
            "false_alarm_clean_models": [sum(bool(x["flagged"]) for _, x in clean), len(clean)],
            "false_alarm_other_models": [sum(bool(x["flagged"]) for _, x in other), len(other)],
            "non_target_flags_backdoored": sum(x["false_alarms"] for _, x in backdoored),
            "target_energy_share_mean": sum(x["energy"] for x in local) / len(local) if local else None,
            "target_iou_mean": sum(x["iou"] for x in local) / len(local) if local else None,
            "seconds": sum(r[label]["wall_seconds"] for r in rows),
            "evaluations": sum(r[label]["num_evaluations"] for r in rows),
        }
    # Both scans' norms judged by other decision rules: how much the flags owe to the rule (5 classes only)
    out["decision_rules"] = {rule: {label: _judge(rows, label, rule) for label in ("ours", "neural_cleanse")}
                             for rule in RULES}
    nc = out["neural_cleanse"]
    out["time_ratio"] = out["ours"]["seconds"] / nc["seconds"] if nc["seconds"] else None
    out["evaluation_ratio"] = out["ours"]["evaluations"] / nc["evaluations"] if nc["evaluations"] else None
    return out


RULES = {
    "MAD of the norms (Neural Cleanse's rule)": dict(log=False, leave_one_out=False, floor=0.0),
    "MAD of the log norms, scale floor (our scan's rule)": dict(log=True, leave_one_out=False, floor=None),
    "leave-one-out MAD of the log norms, scale floor": dict(log=True, leave_one_out=True, floor=None),
}


def _judge(rows: List[Dict], label: str, rule: str) -> Dict:
    """Flags from the stored per-class norms under ``rule`` (low side, threshold 2)."""
    settings = RULES[rule]
    floor = SCAN_DEFAULTS["noise_floor"] if settings["floor"] is None else settings["floor"]
    detected, total, clean_flags, clean_total, other_flags = 0, 0, 0, 0, 0
    for r in rows:
        norms = torch.tensor(r[label]["statistics"]["mask_l1"]).double()
        values = norms.log() if settings["log"] else norms
        index = mad_anomaly_index(values, leave_one_out=settings["leave_one_out"], min_scale=floor)
        low = values < values.quantile(0.5)
        flagged = [c for c, i, l in zip(r[label]["classes"], index.tolist(), low.tolist()) if l and i > 2.0]
        if r["target"] is not None:
            total += 1
            detected += r["target"] in flagged
            other_flags += len([c for c in flagged if c != r["target"]])
        elif r["kind"] == "clean":
            clean_total += 1
            clean_flags += bool(flagged)
    return {"detected": [detected, total], "false_alarm_clean_models": [clean_flags, clean_total],
            "non_target_flags_backdoored": other_flags}


def markdown(rows: List[Dict], summary: Dict, command: str, clean_size: int) -> str:
    lines = ["# Backdoor scans on the reference zoo: input-agnostic scan vs Neural Cleanse", "",
             f"Command: `{command}`; torch {torch.__version__}, one thread; {clean_size} clean images "
             f"(reference-world split seed {CLEAN_SEED}) for both scans; default settings of both; seed 0.", ""]
    if "--nc-from" in command:
        lines += ["Neural Cleanse's rows are reused from an earlier run (`--nc-from`): its wall times come from "
                  "that run, so the wall-time ratios compare different runs; the ratio of model evaluations "
                  "does not depend on the run.", ""]
    if summary:
        lines += ["| | input-agnostic scan | Neural Cleanse |", "| --- | --- | --- |"]
        ours, nc = summary["ours"], summary["neural_cleanse"]
        for kind in ours["detected"]:
            lines.append(f"| detected: {kind} | {ours['detected'][kind][0]}/{ours['detected'][kind][1]} "
                         f"| {nc['detected'][kind][0]}/{nc['detected'][kind][1]} |")
        lines += [
            f"| correct target (top anomaly) | {ours['correct_target'][0]}/{ours['correct_target'][1]} "
            f"| {nc['correct_target'][0]}/{nc['correct_target'][1]} |",
            f"| false alarms: clean models with a flag | {ours['false_alarm_clean_models'][0]}/"
            f"{ours['false_alarm_clean_models'][1]} | {nc['false_alarm_clean_models'][0]}/"
            f"{nc['false_alarm_clean_models'][1]} |",
            f"| false alarms: other non-backdoored models with a flag | {ours['false_alarm_other_models'][0]}/"
            f"{ours['false_alarm_other_models'][1]} | {nc['false_alarm_other_models'][0]}/"
            f"{nc['false_alarm_other_models'][1]} |",
            f"| non-target classes flagged on backdoored models | {ours['non_target_flags_backdoored']} "
            f"| {nc['non_target_flags_backdoored']} |",
            f"| target's trigger: energy share on the planted region (local triggers, mean) "
            f"| {_fmt(ours['target_energy_share_mean'])} | {_fmt(nc['target_energy_share_mean'])} |",
            f"| target's trigger: IoU with the planted region (mean) | {_fmt(ours['target_iou_mean'])} "
            f"| {_fmt(nc['target_iou_mean'])} |",
            f"| model evaluations (all models) | {ours['evaluations']} | {nc['evaluations']} |",
            f"| wall time, all models | {ours['seconds']:.0f} s ({summary['time_ratio']:.2f} x NC) "
            f"| {nc['seconds']:.0f} s |", ""]
        lines += ["The same per-class norms judged by other rules (low side, threshold 2; "
                  f"scale floor {SCAN_DEFAULTS['noise_floor']} in log units): backdoors detected, clean models "
                  "with a flag, non-target flags on backdoored models:", "",
                  "| rule | input-agnostic scan | Neural Cleanse |", "| --- | --- | --- |"]
        for rule, judged in summary["decision_rules"].items():
            lines.append(f"| {rule} | " + " | ".join(
                f"{j['detected'][0]}/{j['detected'][1]}, {j['false_alarm_clean_models'][0]}/"
                f"{j['false_alarm_clean_models'][1]}, {j['non_target_flags_backdoored']}"
                for j in (judged["ours"], judged["neural_cleanse"])) + " |")
        lines.append("")
    lines += ["Per model (flagged classes; anomaly index of the target; suspect = top anomaly):", "",
              "| model | kind | target | ours: flagged | ours: index | ours: suspect | ours: energy / IoU "
              "| NC: flagged | NC: index | NC: suspect | NC: energy / IoU | time ours / NC |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["name"], r["kind"], "-" if r["target"] is None else str(r["target"])]
        for label in ("ours", "neural_cleanse"):
            x = verdict(r, label)
            cells += [str(x["flagged"] or "none"), _fmt(x.get("index")), str(x["suspect"]),
                      f"{_fmt(x.get('energy'))} / {_fmt(x.get('iou'))}" if "energy" in x else "-"]
        cells.append(f"{r['ours']['wall_seconds'] / r['neural_cleanse']['wall_seconds']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per-class statistics (mask l1 in pixels) and anomaly indices: `backdoor_scan.json`."]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: every shipped model)")
    parser.add_argument("--clean-size", type=int, default=100, help="clean images given to both scans")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scan-options", default="{}", help="JSON options for scan_for_backdoor")
    parser.add_argument("--nc-options", default="{}", help="JSON options for neural_cleanse")
    parser.add_argument("--out", default=str(RESULTS / "backdoor_scan"), help="output path without suffix")
    parser.add_argument("--merge", default="",
                        help="comma-separated result JSONs of runs over parts of the zoo (same settings): "
                             "combine their rows into --out, in zoo order, without running anything")
    parser.add_argument("--nc-from", default="",
                        help="a result JSON of an earlier run (same clean images, seed and Neural Cleanse settings): "
                             "reuse its Neural Cleanse rows instead of running Neural Cleanse again (it is seeded "
                             "and deterministic on one thread); wall-time ratios then compare different runs")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of models already in the output JSON (same settings) and run the rest")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = {e.name: e for e in reference_zoo()}
    names = args.models.split(",") if args.models else [n for n, e in zoo.items() if e.shipped]
    unknown = [n for n in names if n not in zoo]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the zoo has {sorted(zoo)}")
    clean = make_dataset(args.clean_size, seed=CLEAN_SEED).images
    command = "python -m benchmarks.backdoor_scan " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.resume and out.with_suffix(".json").exists():
        done = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    stored_nc = {}
    if args.nc_from:
        stored_nc = {r["name"]: r["neural_cleanse"] for r in json.loads(Path(args.nc_from).read_text())["rows"]}
        missing = [n for n in names if n not in stored_nc]
        if missing:
            parser.error(f"--nc-from has no Neural Cleanse result for {missing}")
    rows = []
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        merged = {r["name"]: r for part in parts for r in part["rows"]}
        rows = [merged[n] for n in zoo if n in merged]
        command = "; ".join(part["command"] for part in parts) + "; " + command
        names = []
    for name in names:
        if name in done:
            rows.append(done[name])
            continue
        rows.append(run_model(zoo[name], clean, args.seed, json.loads(args.scan_options), json.loads(args.nc_options),
                              stored_nc.get(name)))
        r = rows[-1]
        print(f"{name}: ours {verdict(r, 'ours')} NC {verdict(r, 'neural_cleanse')} "
              f"({r['ours']['wall_seconds']:.0f} s vs {r['neural_cleanse']['wall_seconds']:.0f} s)", flush=True)
        _write(out, rows, command, args.clean_size)
    if args.merge:
        _write(out, rows, command, args.clean_size)
    print(out.with_suffix(".md").read_text())


def _write(out: Path, rows: List[Dict], command: str, clean_size: int) -> None:
    summary = summarise(rows)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "summary": summary, "rows": rows,
                                                    "torch": torch.__version__}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, summary, command.strip(), clean_size))


if __name__ == "__main__":
    main()
