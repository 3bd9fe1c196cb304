"""``captum-global demo``: the embedded default job (private)."""
import argparse
from pathlib import Path

from captum_global.cli._args import int_in, name_list, output_folder, prepare_output


def _demo_files():
    """Glob patterns of exactly the files ``run_demo`` writes (``--force`` removes these, no other PNG)."""
    from captum_global.lineup import LINEUP

    parts = sorted({f"{spec.parts_file or 'parts_' + spec.name}_*.png" for spec in LINEUP
                    if spec.build_with_parts is not None})
    return ("gallery_*.png", "backdoor_*.png", "classwise_*.png", *parts, "metrics.json", "metrics.md")


def add_parser(sub) -> argparse.ArgumentParser:
    from captum_global.lineup import LINEUP
    from captum_global.world import ARCHS, CLASS_NAMES

    demo = sub.add_parser(
        "demo", help="explain the embedded default and write pictures and a metrics table",
        description="Explain test images of the reference world with every method of the line-up (and real "
                    "photos with EfficientNet-Lite0 if the 'real' extra is installed); write gallery PNGs, "
                    "backdoor and class-wise figures, metrics.json and metrics.md.")
    demo.add_argument("--out", type=output_folder, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--archs", type=name_list(ARCHS), default=list(ARCHS),
                      help=f"reference architectures, comma separated (from {', '.join(ARCHS)}; default: all)")
    demo.add_argument("--images", type=int_in(1, len(CLASS_NAMES), "the demo shows one test image per class"),
                      default=4, help=f"test images per architecture, 1 to {len(CLASS_NAMES)} (default 4)")
    demo.add_argument("--methods", type=name_list([s.name for s in LINEUP]), default=[],
                      help="line-up methods, comma separated (default: all): "
                      + ", ".join(s.name for s in LINEUP).replace("%", "%%"))
    demo.add_argument("--no-photos", action="store_true", help="skip the real-photo part")
    demo.add_argument("--quick", action="store_true", help="fewer optimisation steps for the global methods")
    demo.add_argument("--force", action="store_true", help="overwrite the files of an existing --out folder")
    return demo


def run(args: argparse.Namespace) -> int:
    from captum_global.demo import run_demo

    prepare_output(args.out, args.force, _demo_files())
    run_demo(args.out, archs=args.archs, n_images=args.images, methods=args.methods,
             photos=not args.no_photos, quick=args.quick)
    return 0
