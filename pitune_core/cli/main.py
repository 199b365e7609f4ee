"""The ``pitune`` command line (also ``python -m pitune_core``).

Each sub-command is a thin shell over a library verb; errors the user can fix are printed as one
clear line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from pitune_core import __version__
from pitune_core.cli import dashboard, foundation, predict, runs, study, transfer

#: every command group, in ``pitune --help`` order; each module owns its commands' arguments
REGISTRARS = (foundation.register, predict.register, transfer.register, study.register, study.register_report,
              runs.register, dashboard.register)

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pitune", description="π-Tuning: predict which experts transfer, "
                                "interpolate them, tune on the target.")
    p.add_argument("--version", action="version", version=f"pitune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_, backbone=False):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        if backbone:
            sp.add_argument("--projector", help="projector artifact directory (default: the shipped precomputed/backbone)")
            sp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        return sp

    for register in REGISTRARS:
        register(sub, add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pitune: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("PITUNE_DEBUG"):
            raise
        print(f"pitune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
