"""Train reference zoo models and write their files (CPU, one thread, sequential).

Usage::

    python -m captum_global.world --all --out captum_global/world/weights
    python -m captum_global.world --names vgg_sig_s2 resnet_clean_s1 --out /tmp/zoo

The command restarts itself with the pinned CPU kernels
(:data:`~captum_global.world.training.PINNED_KERNELS`) when they are not in
effect. Models whose files in ``--out`` already hold their current settings
are skipped unless ``--force``; without ``--force`` a model whose weights
are already there is only rewritten if the new run reproduced them bit for
bit. File format: :mod:`captum_global.world.store`.
"""
import argparse
import json
import time
from pathlib import Path
from typing import List, Optional

from captum_global.world.store import (
    WEIGHTS_DIR,
    json_path,
    train_entry,
    train_in_subprocess,
    valid_stem,
)
from captum_global.world.training import cpu_kernels
from captum_global.world.zoo import reference_zoo


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m captum_global.world",
                                 description="Train reference zoo models and write their files.")
    ap.add_argument("--all", action="store_true", help="every zoo model")
    ap.add_argument("--names", nargs="*", default=[], help="zoo names to train")
    ap.add_argument("--out", type=Path, required=True, help="folder for the files")
    ap.add_argument("--force", action="store_true", help="retrain models already in --out")
    args = ap.parse_args(argv)
    zoo = {e.name: e for e in reference_zoo()}
    unknown = sorted(set(args.names) - set(zoo))
    if unknown:
        ap.error(f"unknown names {unknown}; known: {sorted(zoo)}")
    if cpu_kernels() != "avx2-pinned":
        # The kernels are chosen when the libraries load: start again with them pinned.
        train_in_subprocess(list(zoo) if args.all else args.names, args.out, args.force)
        return
    # Clean models first, so the others can quote their twin's accuracy.
    chosen = sorted((e for e in zoo.values() if args.all or e.name in args.names),
                    key=lambda e: e.kind != "clean")
    records = {}
    for name, entry in zoo.items():
        for stem in (args.out / name, WEIGHTS_DIR / name):
            if valid_stem(stem, entry.settings_hash, trajectory=False):
                records[name] = json.loads(json_path(stem).read_text())
                break
    for entry in chosen:
        if valid_stem(args.out / entry.name, entry.settings_hash, True) and not args.force:
            print(f"{entry.name}: up to date in {args.out}, skipped", flush=True)
            continue
        start = time.perf_counter()
        rec = records[entry.name] = train_entry(entry, args.out, records, args.force)
        print(f"{entry.name}: clean acc {rec['clean_test_accuracy']:.4f}, "
              f"attack success {rec.get('attack_success_rate')}, "
              f"robust acc {rec['robust_test_accuracy']:.3f}, "
              f"label noise {rec.get('label_noise_effect')}, train {rec['train_seconds']} s, "
              f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
