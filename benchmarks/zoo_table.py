"""Tabulate the reference zoo from its shipped records (no training).

Writes ``benchmarks/results/zoo.md`` and ``benchmarks/results/zoo.json``:
per model its kind, target, trigger, seed, clean accuracy (and its clean
twin's), attack success, robust accuracy, training time, file sizes.

Usage::

    python benchmarks/zoo_table.py [--out benchmarks/results]
"""
import argparse
import json
import os
from pathlib import Path

from captum_global.world import (
    CLASS_NAMES,
    WorldConfig,
    evaluate,
    label_noise_effect,
    make_splits,
    reference_zoo,
    store,
    zoo_entry,
)

COMMAND = "python benchmarks/zoo_table.py"


def _what(entry):
    """The trigger or training procedure, in a few words."""
    clause = entry.description.split("; ", 1)[1]
    if entry.trigger is not None:
        return clause[len("backdoor: "):clause.index(" -> ")]
    return "-" if entry.kind == "clean" else clause


def listing():
    """The zoo as a table (no numbers): what docs/use/world.md shows."""
    lines = ["| name | arch | kind | target | trigger / procedure | seed | clean twin |",
             "|---|---|---|---|---|---|---|"]
    for e in reference_zoo():
        target = "-" if e.target_class is None else f"{e.target_class} ({CLASS_NAMES[e.target_class]})"
        lines.append(f"| {e.name} | {e.arch} | {e.kind} | {target} | {_what(e)} | {e.seed} "
                     f"| {e.twin or '-'} |")
    return "\n".join(lines) + "\n"


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def rows():
    out = []
    test = make_splits(WorldConfig())[1]  # the test split of every record
    for e in reference_zoo():
        r = e.record()
        twin = zoo_entry(e.twin) if e.twin else None
        # The same measurement on the clean twin: what the trigger or the
        # flipped class does to a model that was never poisoned.
        twin_asr = twin_noise = None
        if e.trigger is not None:
            twin_asr = evaluate(twin.load(), test, e.trigger, e.target_class)["attack_success_rate"]
        if e.kind == "noisy_label":
            n = e.settings["label_noise"]
            twin_noise = label_noise_effect(twin.load(), test, n["source"], n["dest"])
        twin_robust = twin.record()["robust_test_accuracy"] if twin else None
        stem = store.WEIGHTS_DIR / e.name
        noise = r.get("label_noise_effect")
        out.append(dict(
            name=e.name, arch=e.arch, kind=e.kind, seed=e.seed, twin=e.twin,
            target=None if e.target_class is None else f"{e.target_class} ({CLASS_NAMES[e.target_class]})",
            trigger=_what(e),
            epochs=r["settings"]["epochs"], clean_acc=r["clean_test_accuracy"],
            twin_clean_acc=r["zoo"].get("twin_clean_test_accuracy"),
            attack_success=r.get("attack_success_rate"), twin_attack_success=twin_asr,
            robust_acc=r["robust_test_accuracy"], twin_robust_acc=twin_robust,
            source_dest_probability=None if noise is None else noise["source_dest_probability"],
            source_predicted_as_dest=None if noise is None else noise["source_predicted_as_dest"],
            twin_source_dest_probability=None if twin_noise is None
            else twin_noise["source_dest_probability"],
            train_seconds=r["train_seconds"], trajectory_epochs=r["trajectory"]["epochs"],
            weights_bytes=os.path.getsize(store.weights_path(stem)),
            trajectory_bytes=os.path.getsize(store.trajectory_path(stem)),
            description=e.description))
    return out


def markdown(table):
    lines = ["| model | kind | target | trigger / procedure | seed | clean acc % (twin) "
             "| attack success % (twin) | robust acc % | train s (recorded) | trajectory epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        what = r["trigger"]
        twin = "" if r["twin_clean_acc"] is None else f" ({_pct(r['twin_clean_acc'])})"
        asr = _pct(r["attack_success"])
        if r["twin_attack_success"] is not None:
            asr += f" ({_pct(r['twin_attack_success'])})"
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['target'] or '-'} | {what} | {r['seed']} "
            f"| {_pct(r['clean_acc'])}{twin} | {asr} | {_pct(r['robust_acc'])} "
            f"| {r['train_seconds']:.0f} | {r['trajectory_epochs']} |")
    noisy = [r for r in table if r["kind"] == "noisy_label"]
    if noisy:
        lines += ["", "Noisy-label models, on the test images of the flipped (source) class:", "",
                  "| model | mean probability of the receiving class (clean twin) "
                  "| predicted as the receiving class % |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['source_dest_probability']:.3f} "
                  f"({r['twin_source_dest_probability']:.3f}) "
                  f"| {_pct(r['source_predicted_as_dest'])} |" for r in noisy]
    total = sum(r["weights_bytes"] + r["trajectory_bytes"] for r in table)
    lines += ["", f"Shipped files: {len(table)} models, {total / 2**20:.1f} MiB "
              f"(final weights {sum(r['weights_bytes'] for r in table) / 2**20:.1f} MiB, "
              f"trajectories {sum(r['trajectory_bytes'] for r in table) / 2**20:.1f} MiB)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    table = rows()
    text = (f"# Reference zoo\n\nCommand: `{COMMAND}` (reads the shipped records; the models "
            "were trained with `python -m captum_global.world --all --out "
            "captum_global/world/weights`).\n\n" + markdown(table))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.md").write_text(text)
    (args.out / "zoo.json").write_text(json.dumps(dict(command=COMMAND, models=table), indent=2) + "\n")
    print(text)
    print("\nListing for docs/use/world.md:\n\n" + listing())


if __name__ == "__main__":
    main()
