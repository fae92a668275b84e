"""``conpool`` on the command line (``python -m conpool``).

One subcommand so far: ``conpool stress`` (see :mod:`conpool.stress.cli`).
"""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = """\
usage: conpool [-h] [--version] {stress} ...

commands:
  stress     load the pool against servers it starts itself (or --target) and
             write an HTML report; `conpool stress --help` for its options
"""


def main(argv: list[str] | None = None) -> int:
    """Run the ``conpool`` command; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "stress":
        from .stress.cli import main as stress_main

        return stress_main(args[1:], prog="conpool stress")
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(_USAGE)
        return 0
    if args and args[0] == "--version":
        from . import __version__

        sys.stdout.write(f"conpool {__version__}\n")
        return 0
    sys.stderr.write(_USAGE)
    if args:
        sys.stderr.write(f"conpool: error: unknown command {args[0]!r} (choose from: stress)\n")
    else:
        sys.stderr.write("conpool: error: a command is required\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
