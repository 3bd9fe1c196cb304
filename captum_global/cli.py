"""Command line: ``captum-global`` (or ``python -m captum_global``).

Subcommands:
    demo        explain the embedded reference world (and real photos) and
                write galleries and a metrics table
    scan        look for a backdoor in a reference model with input-agnostic
                saliency (per-class trigger energy and MAD anomaly index)
    layers      print the layers SISE would read for a torchvision or
                reference architecture
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-global", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="explain the embedded default and write pictures and a metrics table",
                          description="Explain test images of the reference world with every method of the "
                                      "line-up (and real photos with EfficientNet-Lite0 if the 'real' extra is "
                                      "installed); write gallery PNGs, backdoor and class-wise figures, "
                                      "metrics.json and metrics.md.")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--archs", type=_csv, default=["vgg", "resnet"], help="reference architectures, comma separated")
    demo.add_argument("--images", type=int, default=4, help="test images per architecture (default 4)")
    demo.add_argument("--methods", type=_csv, default=[], help="method names of the line-up (default: all)")
    demo.add_argument("--no-photos", action="store_true", help="skip the real-photo part")
    demo.add_argument("--quick", action="store_true", help="fewer optimisation steps for the global methods")

    scan = sub.add_parser("scan", help="scan a reference model for a backdoor trigger",
                          description="Input-agnostic class maps of a reference model, their share of energy in "
                                      "the planted trigger's region, and the MAD anomaly index over classes.")
    scan.add_argument("--arch", default="vgg", choices=["vgg", "resnet"])
    scan.add_argument("--variant", default="patch", choices=["clean", "patch", "blended"])
    scan.add_argument("--steps", type=int, default=150, help="optimisation steps per class map")
    scan.add_argument("--out", type=Path, default=Path("scan-out"), help="folder for the figure and JSON")

    layers = sub.add_parser("layers", help="print the layers SISE reads by default",
                            description="Trace a model once and print one layer per convolutional block.")
    layers.add_argument("model", help="'vgg' or 'resnet' (reference nets) or a torchvision name such as resnet18")
    layers.add_argument("--size", type=int, default=64, help="input side in pixels for the trace")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from captum_global.demo import run_demo

        run_demo(args.out, archs=args.archs, n_images=args.images, methods=args.methods,
                 photos=not args.no_photos, quick=args.quick)
    elif args.command == "scan":
        from captum_global.demo import backdoor_figure

        args.out.mkdir(parents=True, exist_ok=True)
        report = backdoor_figure(args.arch, args.variant, args.out, n_steps=args.steps)
        (args.out / "scan.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    elif args.command == "layers":
        import torch

        from captum_global.attr import select_sise_layers
        from captum_global.world import ARCHS, build_model, torchvision_model

        model = build_model(args.model) if args.model in ARCHS else torchvision_model(args.model)
        for name in select_sise_layers(model, torch.zeros(1, 3, args.size, args.size)):
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
