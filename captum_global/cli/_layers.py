"""``captum-global layers``: the layers SISE reads by default (private)."""
import argparse

from captum_global.cli._args import MAX_SIDE, REFERENCE_ARCHS, UsageError, arch_name, int_in

MIN_SIDE = 8


def add_parser(sub) -> argparse.ArgumentParser:
    layers = sub.add_parser("layers", help="print the layers SISE reads by default",
                            description="Trace a model once and print one layer per convolutional block.")
    layers.add_argument("model", type=arch_name,
                        help="'vgg' or 'resnet' (reference nets) or a torchvision classifier such as resnet18 "
                             "(random weights; nothing is downloaded), or package.module:callable")
    layers.add_argument("--size", type=int_in(MIN_SIDE, MAX_SIDE, "larger traces only cost memory: the layer "
                                                                   "choice does not depend on the size"),
                        default=64, help=f"input side in pixels for the trace ({MIN_SIDE} to {MAX_SIDE}, default 64)")
    return layers


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_global.attr import select_sise_layers
    from captum_global.loading import build_architecture

    model = build_architecture(REFERENCE_ARCHS.get(args.model, args.model), None).eval()
    try:
        names = select_sise_layers(model, torch.zeros(1, 3, args.size, args.size))
    except RuntimeError as error:  # the model cannot run on so small an input
        raise UsageError(f"{args.model} does not run on a {args.size}x{args.size} input ({error}); "
                         "try a larger --size") from None
    for name in names:
        print(name)
    return 0
