"""The `cnnlab` command line: one module per sub-command in this package.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it; ``main`` discovers the modules, so a new command is a new file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from cnnlab.errors import CnnlabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="The CIFAR-10 CNN lab as software. Each command has its own --help.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for PyTorch (default: $CNNLAB_THREADS, else the cores this process may use)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cnnlab.device import configure_threads

    try:
        configure_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except (CnnlabError, ValueError, FileNotFoundError) as error:
        # Errors cnnlab raises carry the problem and the fix in their message; a traceback adds nothing.
        print(f"cnnlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
