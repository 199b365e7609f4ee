"""``runs`` command line: list, show, cancel, logs, resume, submit, scheduler, recover.

Wire into a main CLI with :func:`add_runs_commands` (it sets ``args.func`` /
``args.runs_handler`` to :func:`handle`), or run on its own::

    python -m pitune_core.cli.runs [--db DB] list --status running
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sqlite3
import sys
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from pitune_core.runs.registry import (
    STATUSES,
    RegistryUnavailableError,
    RunNotFoundError,
    RunRecord,
    RunRegistry,
    default_db_path,
    is_valid_run_id,
)
from pitune_core.spec.vocab import CANCELLED, RUNNING, SUCCEEDED
from pitune_core.common import read_regular, stdout_closed
from pitune_core.runs.executor import serve, wait

__all__ = ["add_runs_commands", "configure_parser", "handle", "main"]

_DB_HELP = "run registry database (default: $PITUNE_RUNS_DB or ./runs/registry.sqlite)"


def add_runs_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add ``runs`` (with its sub-commands) to an argparse sub-parsers object."""
    parser = subparsers.add_parser("runs", help="inspect and control durable runs", description=__doc__.splitlines()[0])
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--db", default=None, help=_DB_HELP)
    # --db is also accepted after the sub-command (``runs list --db X``)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=_DB_HELP)
    sub = parser.add_subparsers(dest="runs_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", parents=[common], help="list runs (newest first)")
    p.add_argument("--status", action="append", choices=STATUSES, help="only this status (repeatable)")
    p.add_argument("--kind", action="append", help="only this kind (repeatable)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("show", parents=[common], help="show one run")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    p.add_argument("run_id")

    p = sub.add_parser("logs", parents=[common], help="print a run's log")
    p.add_argument("run_id")
    p.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines")

    p = sub.add_parser("resume", parents=[common], help="queue an interrupted or failed run again")
    p.add_argument("run_id")
    p.add_argument("--no-scheduler", action="store_true", help="do not start a background scheduler")

    p = sub.add_parser("submit", parents=[common], help="queue a run of a registered job kind",
                       description="Queue a run of a registered job kind (transfer, train-expert, transfer-pair); "
                                   "its config is checked before it is queued.")
    p.add_argument("kind")
    p.add_argument("--config", default="{}", help="JSON object, or @path/to/config.json")
    p.add_argument("--name", default=None)
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--no-scheduler", action="store_true", help="do not start a background scheduler")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")

    p = sub.add_parser("scheduler", parents=[common], help="run the local scheduler in the foreground")
    p.add_argument("--max-parallel", type=int, default=None, help="concurrent workers (default: half the CPUs)")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after this many idle seconds (default: never)")
    p.add_argument("--jobs-module", action="append", default=[], metavar="MODULE",
                   help="also run the kinds this trusted module registers when imported (repeatable; "
                        "pitune_core.jobs is always included)")

    sub.add_parser("recover", parents=[common], help="mark running runs whose worker died as interrupted")

    parser.set_defaults(func=handle, runs_handler=handle)
    return parser


# ------------------------------------------------------------------ output


def _clean(text: Any, width: int | None = None) -> str:
    """Display-safe text: user-supplied names may hold control/escape characters."""
    s = "".join(ch if ch.isprintable() else "?" for ch in str(text if text is not None else ""))
    if width is not None and len(s) > width:
        s = s[: max(0, width - 1)] + "…"
    return s


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _progress_text(p: dict) -> str:
    if not p:
        return ""
    parts = [str(p.get("stage") or "")]
    if p.get("step") is not None:
        parts.append(f"{p['step']}/{p['total']}" if p.get("total") is not None else str(p["step"]))
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss={p['loss']:.4g}")
    return " ".join(x for x in parts if x)


def _print_table(records: list[RunRecord], out: Any) -> None:
    header = ("ID", "STATUS", "KIND", "PROGRESS", "CREATED", "NAME")
    rows = [
        (r.id, r.status + ("*" if r.cancel_requested and r.status == RUNNING else ""), _clean(r.kind, 16),
         _clean(_progress_text(r.progress), 28), _ts(r.created_at), _clean(r.name or "", 40))
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def _show(r: RunRecord, out: Any) -> None:
    fields = [
        ("id", r.id), ("name", _clean(r.name or "")), ("kind", r.kind), ("status", r.status),
        ("executor", r.executor), ("attempt", r.attempt), ("created", _ts(r.created_at)),
        ("started", _ts(r.started_at)), ("finished", _ts(r.finished_at)),
        ("duration", f"{r.duration:.2f}s" if r.duration is not None else "-"),
        ("worker", f"pid {r.worker_pid} on {r.worker_host}" if r.worker_pid else "-"),
        ("cancel requested", "yes" if r.cancel_requested else "no"), ("run dir", str(r.run_dir)),
        ("log", str(r.log_path)), ("progress", _progress_text(r.progress) or "-"),
    ]
    for key, value in fields:
        print(f"{key + ':':18}{value}", file=out)
    print(f"{'config:':18}{json.dumps(r.config, sort_keys=True)}", file=out)
    if r.resources:
        print(f"{'resources:':18}{json.dumps(r.resources, sort_keys=True)}", file=out)
    if r.metrics is not None:
        print(f"{'metrics:':18}{json.dumps(r.metrics, sort_keys=True)}", file=out)
    if r.error:
        print(f"{'error:':18}{_clean(r.error)}", file=out)


def _tail(path: Path, n: int | None) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return list(deque(fh, maxlen=n)) if n is not None else fh.readlines()


def _load_config(text: str) -> dict:
    where = "--config"
    if text.startswith("@"):
        where = text[1:]

        try:
            text = read_regular(where, 1 << 20).decode("utf-8")  # a regular file of at most 1 MB: no FIFO
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"cannot read the config file {where}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, e.g. '{{\"target\": \"rt_polarity\"}}'")
    return value


# ---------------------------------------------------------------- dispatch


def handle(args: argparse.Namespace, *, out: Any = None, err: Any = None) -> int:
    """Execute a parsed ``runs`` command; returns the process exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    db = Path(getattr(args, "db", None) or default_db_path())
    cmd = args.runs_command
    run_id = getattr(args, "run_id", None)
    if run_id is not None and not is_valid_run_id(run_id):
        print(f"error: invalid run id {_clean(run_id, 80)!r} (expected e.g. 20261126-161500-3f9a1c)", file=err)
        return 2
    if cmd in ("list", "show", "cancel", "logs", "resume", "recover") and not db.exists():
        if cmd == "list":
            print("[]" if args.json else f"no run registry at {db}", file=out)
            return 0
        print(f"error: no run registry at {db}", file=err)
        return 1
    try:
        try:
            registry = RunRegistry(db)
        except RegistryUnavailableError:
            if cmd not in ("list", "show", "logs"):
                raise
            registry = RunRegistry(db, read_only=True)  # read-only media: reading needs no write
        if cmd in ("list", "show") and not registry.read_only:
            registry.recover_interrupted()  # a SIGKILLed worker's run is interrupted, not "running" forever
        if cmd == "list":
            records = registry.list_runs(status=args.status, kind=args.kind, limit=args.limit or None)
            if args.json:
                json.dump([r.to_dict() for r in records], out, indent=2)
                print(file=out)
            else:
                _print_table(records, out)
            return 0
        if cmd == "show":
            rec = registry.get(run_id)
            if args.json:
                json.dump(rec.to_dict(), out, indent=2)
                print(file=out)
            else:
                _show(rec, out)
            return 0
        if cmd == "cancel":
            rec = registry.request_cancel(run_id)
            if rec.status == CANCELLED:
                print(f"{run_id}: cancelled", file=out)
            elif rec.status == RUNNING:
                print(f"{run_id}: cancel requested (the run stops at its next check)", file=out)
            else:
                print(f"{run_id}: already {rec.status}; nothing to cancel", file=out)
            return 0
        if cmd == "logs":
            rec = registry.get(run_id)
            if not rec.log_path.exists():
                print(f"error: no log file at {rec.log_path}", file=err)
                return 1
            out.write("".join(_tail(rec.log_path, args.tail)))
            return 0
        if cmd == "resume":
            rec = registry.resume(run_id)
            print(f"{run_id}: queued again (executor: {rec.executor})", file=out)
            if rec.executor == "local" and not args.no_scheduler:
                _ensure_scheduler(db, out)
            elif rec.executor == "ray":
                print("  launch it from a Ray driver: RayExecutor(registry).launch_pending()", file=out)
            return 0
        if cmd == "submit":
            resources = {k: v for k, v in (("num_cpus", args.num_cpus), ("num_gpus", args.num_gpus)) if v is not None}
            new_id = registry.submit(args.kind, _load_config(args.config), args.name, resources, priority=args.priority)
            print(new_id, file=out)
            if not args.no_scheduler:
                _ensure_scheduler(db, err)
            if args.wait:
                rec = wait(registry, [new_id])[new_id]
                print(f"{new_id}: {rec.status}" + (f" ({_clean(rec.error)})" if rec.error else ""), file=err)
                return 0 if rec.status == SUCCEEDED else 1
            return 0
        if cmd == "scheduler":
            return serve(db, args.max_parallel, idle_timeout=args.idle_timeout, job_modules=args.jobs_module)
        if cmd == "recover":
            recovered = registry.recover_interrupted()
            for rec in recovered:
                print(f"{rec.id}: interrupted ({_clean(rec.error)})", file=out)
            print(f"{len(recovered)} run(s) marked interrupted", file=out)
            return 0
    except BrokenPipeError:  # `pitune runs list | head`: the caller (cli.main or main below) stops quietly
        raise
    except RunNotFoundError as exc:
        print(f"error: {exc}", file=err)
        return 1
    except ValueError as exc:
        print(f"error: {_clean(exc)}", file=err)
        return 1
    except (RegistryUnavailableError, RuntimeError, OSError, sqlite3.Error, ImportError) as exc:
        # read-only file system, permissions, full disk, a damaged database: one line, no traceback
        what = str(exc) if isinstance(exc, RegistryUnavailableError) else f"{type(exc).__name__}: {exc}"
        print(f"error: {_clean(what)}", file=err)
        return 2
    print(f"error: unknown runs command {cmd!r}", file=err)
    return 2


def _ensure_scheduler(db: Path, out: Any) -> None:
    from pitune_core.runs.executor import ensure_scheduler  # lazy: `pitune --help` does not load it

    pid = ensure_scheduler(db)
    if pid:
        print(f"started background scheduler (pid {pid})", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitune_core.cli.runs", description=__doc__.splitlines()[0])
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return handle(args)
    except BrokenPipeError:
        return stdout_closed()


if __name__ == "__main__":
    sys.exit(main())


def register(sub, add) -> None:
    """Hook for the main ``pitune`` CLI (see :func:`pitune_core.cli.main.build_parser`)."""
    parser = add_runs_commands(sub)
    parser.set_defaults(func=handle)
