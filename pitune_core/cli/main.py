"""The ``pitune`` command line (also ``python -m pitune_core``).

Each sub-command is a thin shell over a library verb; errors the user can fix are printed as one
clear line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from pitune_core import __version__
from pitune_core.cli import dashboard, foundation, groundtruth, hub, library, predict, protocol, runs, study, task, transfer
from pitune_core.common import os_error_of, printable, stdout_closed

#: every command group, in ``pitune --help`` order; each module owns its commands' arguments
REGISTRARS = (foundation.register, task.register, predict.register, transfer.register, study.register,
              study.register_report, protocol.register, groundtruth.register, runs.register, dashboard.register,
              hub.register, library.register)

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
    """Run one command; every error a user can meet is one line on stderr (exit 2), never a traceback.

    ``--debug`` (anywhere on the command line) or ``PITUNE_DEBUG=1`` re-raises instead, so the
    traceback shows.
    """
    import errno
    import json

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("PITUNE_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    args.argv = argv  # what ``--workers`` re-runs in each worker (pitune_core/cli/workers.py)

    def fail(msg: str, code: int = 2) -> int:
        print(f"pitune: error: {printable(msg)}", file=sys.stderr)  # one line, no terminal escapes
        return code

    try:
        try:
            return int(args.func(args) or 0)
        except Exception as e:  # a library's error that wraps an OSError (safetensors' full disk) is that OSError
            os_err = os_error_of(e)
            if os_err is None or os_err is e or debug:
                raise
            raise os_err from e
    except KeyboardInterrupt:
        print("pitune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pitune ... | head`: the reader stopped reading; no error to report
        if debug:
            raise

        return stdout_closed()
    except OSError as e:  # read-only, no space, missing, permission: what, where, what to do
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        if e.errno is None or not e.strerror:
            return fail(f"{e}")  # an OSError raised with a written message: it says it all
        todo = {errno.ENOSPC: "free some space there (or point PITUNE_CACHE / --out / --db at another disk) and "
                              "run the command again; nothing half-written was kept",
                errno.EDQUOT: "free some space there (or point PITUNE_CACHE / --out / --db elsewhere) and run again",
                errno.EROFS: "that file system is read-only: point PITUNE_CACHE / --out / --db / --study at a "
                             "writable location",
                errno.EACCES: "check its permissions, or point PITUNE_CACHE / --out / --db at a location you may "
                              "write",
                errno.EPERM: "check its permissions, or choose another location",
                errno.ENOENT: "check the path (see `pitune --help` for the defaults)",
                errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
                errno.EISDIR: "it is a folder where a file was expected: check the path"}
        hint = todo.get(e.errno, "check the path and try again")
        return fail(f"{e.strerror}{':' + where if where else ''}. {hint[0].upper()}{hint[1:]}.")
    except json.JSONDecodeError as e:  # a malformed JSON file that a reader did not name
        if debug:
            raise
        return fail(f"a JSON file is malformed ({e}); run with --debug to see which, then restore or rebuild it")
    except USER_ERRORS as e:
        if debug:
            raise
        return fail(str(e).strip())
    except Exception as e:  # an unexpected failure: still no traceback without --debug
        if debug:
            raise
        return fail(f"unexpected {type(e).__name__}: {e}. Rerun with --debug for the traceback and report it.", 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
