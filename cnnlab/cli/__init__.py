"""The `cnnlab` command line: one module per sub-command in this package.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it; ``main`` discovers the modules, so a new command is a new file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from cnnlab.core.errors import CnnlabError, user_os_error
from cnnlab.core.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="The CIFAR-10 CNN lab as software. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    from cnnlab.core.runtime import configure_threads

    try:
        configure_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except CnnlabError as error:
        # Errors cnnlab raises carry the problem and the fix in their message; a traceback adds nothing.
        return _fail(args.command, str(error))
    except OSError as error:
        # A full disk, a read-only folder, a file where a folder should be: the user's to fix, so one line.
        # Any other OSError (and every ValueError that is not a CnnlabError) is a bug: it keeps its traceback.
        message = user_os_error(error)
        if message is None:
            raise
        return _fail(args.command, message)


def _fail(command: str, message: str) -> int:
    print(f"cnnlab {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
