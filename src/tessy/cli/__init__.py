"""The ``tessy`` command line. Thin: parse, build a config, call one library function.

Each command group lives in its own module (``run``: synth and demo; ``tools``: config, render,
models, report, export, bench; ``predictor``: the predictor pipeline) and registers its
subcommands here; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.text import Text

from ..errors import TessyError
from ..version import __version__
from . import predictor, run, tools, verify
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HelpFormatter,
    console,
    setup_logging,
    verbose_parent,
)

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tessy",
        description="Synthesise SFT data for a reasoning student model with a teacher (TESSY).",
        formatter_class=HelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"tessy {__version__}")
    top.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    common = {"formatter_class": HelpFormatter, "parents": [verbose_parent()]}
    run.register(sub, **common)
    tools.register(sub, **common)
    predictor.register(sub, **common)
    verify.register(sub, **common)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return EXIT_USAGE
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TessyError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return EXIT_ERROR
    except OSError as exc:  # a disk, a folder or a permission: the environment, said in one line
        where = f" ({exc.filename})" if exc.filename else ""
        console.print(Text.assemble(("error: ", "bold red"), f"{exc.strerror or exc}{where}"))
        return EXIT_ERROR
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished samples are saved; run the same command again to resume")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
