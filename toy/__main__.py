"""Command-line entry point of the toy experiments: ``python -m toy <command> [options]``.

Each command is one module with ``add_arguments(parser)`` and ``run(args) -> exit code``, registered in
``COMMANDS``. ``demo`` is what ``make demo`` runs.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NamedTuple

from tvm_theory.cli import DefaultsHelpFormatter

from . import compare, theorem_check, verify


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "theorem-check": Command("the paper's explicit W2 bound vs. the 1-D Gaussian counterexample (docs/THEORY.md §4)",
                             theorem_check.add_arguments, theorem_check.run),
    "verify": Command("train TVM on a test bed and check the W2 bounds against the true W2 during training",
                      verify.add_arguments, verify.run),
    "compare": Command("TVM against MeanFlow and flow matching on the 2-D test beds: W2, RMSE to ψ, wall time",
                       compare.add_arguments, compare.run),
    "demo": Command("`make demo`: TVM on the 8-mode ring, every W2 bound vs. the true W2 during training",
                    verify.add_demo_arguments, verify.run_demo),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, formatter_class=DefaultsHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, argparse's exit code
        print(f"python -m toy {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
