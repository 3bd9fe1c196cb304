"""``captum-global layers``: the layers SISE reads by default (private)."""
import argparse

from captum_global.cli._args import MAX_CHANNELS, MAX_SIDE, REFERENCE_ARCHS, UsageError, arch_name, int_in

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
    layers.add_argument("--channels", type=int_in(1, MAX_CHANNELS), default=3,
                        help="input channels of the model (default 3; 1 for a grey-scale model)")
    return layers


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_global.attr import select_sise_layers
    from captum_global.errors import InvalidArgumentError
    from captum_global.loading import build_architecture
    from captum_global.loading.tensors import _first_line

    model = build_architecture(REFERENCE_ARCHS.get(args.model, args.model), None).eval()
    try:
        names = select_sise_layers(model, torch.zeros(1, args.channels, args.size, args.size))
    except InvalidArgumentError:
        raise
    except Exception as error:  # the model cannot run on this input: too small, a fixed size, other channels
        raise UsageError(f"{args.model} does not run on a {args.channels}x{args.size}x{args.size} input "
                         f"({_first_line(error)}); try another --size or --channels") from None
    for name in names:
        print(name)
    return 0
