"""Command line: ``captum-global`` (or ``python -m captum_global``).

Subcommands:
    demo        explain the embedded reference world (and real photos) and
                write galleries and a metrics table
    scan        look for a backdoor in a reference model or your own model
                (TorchScript, or a state dict with its architecture)
    layers      print the layers SISE would read for a torchvision or
                reference architecture
    explain     explain every image of a folder with any attribution and
                write the maps to shard files (resumable, torchrun-ready)

Exit status: 0 done, 1 the run failed (the model returned NaN or
infinity), 2 a usage error (argparse's usage message and the error on
stderr, never a traceback), 130 interrupted.
"""
from captum_global.cli._main import build_parser, main

__all__ = ["main", "build_parser"]
