"""The ``captum-global`` parser and entry point (private; public through :mod:`captum_global.cli`)."""
import argparse
import re
import sys
from typing import List, Optional

from captum_global.cli import _demo, _explain, _layers, _scan
from captum_global.cli._args import UsageError, cli_message

_COMMANDS = {"demo": _demo, "scan": _scan, "layers": _layers, "explain": _explain}
_DESCRIPTION = ("Global and multi-layer visual explanations for Captum: run the demo, scan a model for a "
                "backdoor, list the layers SISE reads, explain a dataset.")
_NUMBER = r"((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf|infinity|nan)"
_NEGATIVE_NUMBERS = re.compile(rf"^-{_NUMBER}(,\s*-?{_NUMBER})*$", re.IGNORECASE)
_EPILOG = ("Exit status: 0 done, 1 the run failed (the model returned NaN or infinity), 2 a usage error "
           "(the message says which argument), 130 interrupted.")


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-global`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="captum-global", description=_DESCRIPTION, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,scan,layers,explain}")
    for name, module in _COMMANDS.items():
        command = module.add_parser(sub)
        command.set_defaults(command_parser_name=name)
        # argparse reads '-1,1' (a negative first value of a list: --value-range -1,1, --mean -0.5,0,0.5)
        # as an unknown option; no option of ours looks like a number, so such words are values
        command._negative_number_matcher = _NEGATIVE_NUMBERS
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``captum-global`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    User mistakes, found by argparse or later (a file that does not fit, a
    folder that exists, a value the library refuses), end with the usage
    message and the error on stderr and ``SystemExit(2)``, never a traceback;
    a library error names the option the user typed (:func:`cli_message`).
    Ctrl-C, also while the parser loads or checks arguments, returns 130.
    """
    from captum_global.errors import InvalidArgumentError, NonFiniteOutputError

    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        try:
            return _COMMANDS[command].run(args)
        except (UsageError, InvalidArgumentError) as error:
            _subparser(parser, command).error(cli_message(str(error), command, args))
        except NonFiniteOutputError as error:
            print(f"captum-global {command}: error: {error}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        hint = "; run the same command again to resume" if command == "explain" else ""
        print(f"captum-global{' ' + command if command else ''}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0
