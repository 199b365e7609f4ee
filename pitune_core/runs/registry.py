"""Durable run registry backed by sqlite3 (standard library only).

One sqlite database holds every run (queued, running, finished); each run also
gets a directory ``<runs_root>/<run_id>/`` with ``config.json``, ``log.txt``
and, once finished, one outcome that agrees with the database: ``metrics.json``
(succeeded), ``error.txt`` + ``FAILED`` (failed), ``CANCELLED`` or
``INTERRUPTED`` (one line each).  A resumed run starts its new attempt in a
clean directory: everything the earlier attempt left besides ``config.json``
and ``log.txt`` is first moved into ``attempt-<n>/``.  Everything on disk is
JSON or plain text, never pickle.

A row stores a run's *kind*, never code to run: workers execute only kinds
registered in code (:mod:`.jobs`); the ``target`` column of old databases is
ignored.  A database that cannot be opened or written (read-only file system,
missing permissions, full disk) raises :class:`RegistryUnavailableError`, one
readable line.

Concurrency model
-----------------
Several processes use the same database at once (the dashboard, a scheduler,
workers, the CLI).  The database runs in WAL mode with a busy timeout; every
write is a short ``BEGIN IMMEDIATE`` transaction (the write lock is taken up
front, so a transaction never has to upgrade from reader to writer, which is
what makes sqlite return SQLITE_BUSY without waiting).  Connections are cached
per thread *and* per process (a connection is never used after ``fork``).

WAL needs shared memory between the processes that open the database, so all of
them must be on the same host.  For a database on a network file system (e.g. a
multi-node Ray cluster sharing an NFS directory) open the registry with
``journal_mode="delete"`` (or set ``PITUNE_RUNS_JOURNAL=delete``).

Run ids look like ``20261126-161500-3f9a1c`` (UTC time of submission plus 24
random bits).  They are URL- and path-safe; every public method validates an id
before it is used in a query or joined into a path.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from pitune_core.common import write_atomic
from pitune_core.paths import default_runs_db  # a base module: no ML, no I/O
from pitune_core.runs.jobs import validate_job_config  # light module: never imports torch
from pitune_core.spec.vocab import (CANCELLED, FAILED, FINAL_STATUSES, INTERRUPTED, QUEUED,  # noqa: F401
                                    RESUMABLE_STATUSES, RUN_STATUSES, RUNNING, SUCCEEDED, TERMINAL_STATUSES)

__all__ = [
    "RunRegistry",
    "RunRecord",
    "RunNotFoundError",
    "RegistryUnavailableError",
    "STATUSES",
    "TERMINAL_STATUSES",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "validate_run_id",
    "is_valid_run_id",
    "new_run_id",
    "default_db_path",
    "set_aside",
    "OUTCOME_MARKERS",
    "process_start_ticks",
    "pid_alive",
    "to_jsonable",
]

# the statuses (and which are terminal, final, resumable) are the spec's
STATUSES = RUN_STATUSES

RUN_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
#: one-line marker file per final status (besides metrics.json for succeeded)
OUTCOME_MARKERS = {FAILED: "FAILED", CANCELLED: "CANCELLED", INTERRUPTED: "INTERRUPTED"}
#: what a new attempt keeps in its run directory; the rest is moved into attempt-<n>/
_KEPT_ON_RESUME = ("config.json", "log.txt")
_ATTEMPT_DIR_RE = re.compile(r"^attempt-[0-9]+(\.[0-9]+)?$")
EXECUTORS = ("local", "ray")

HOSTNAME = socket.gethostname()


# --------------------------------------------------------------------------- ids


def new_run_id(now: float | None = None) -> str:
    ts = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.timezone.utc)
    return f"{ts:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def is_valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and RUN_ID_RE.fullmatch(run_id) is not None


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a well-formed run id, else raise ``ValueError``."""
    if not is_valid_run_id(run_id):
        shown = repr(run_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ValueError(
            f"invalid run id {shown}: expected the form YYYYMMDD-HHMMSS-xxxxxx "
            "(6 lowercase hex digits), e.g. 20261126-161500-3f9a1c"
        )
    return run_id  # type: ignore[return-value]


def default_db_path() -> Path:
    """``$PITUNE_RUNS_DB`` or ``./runs/registry.sqlite`` (owned by :func:`pitune_core.paths.default_runs_db`)."""
    return default_runs_db()


class RegistryUnavailableError(RuntimeError):
    """The registry database or a run directory cannot be opened or written (one readable line)."""


def _fs_problem(path: object) -> str | None:
    """Why ``path`` (or its nearest existing parent) cannot be written, if the file system says so."""
    p = Path(str(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        if os.statvfs(p).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):
        return None
    if not os.access(p, os.W_OK):
        return "no write permission"
    return None


def _unavailable(what: str, path: object, exc: BaseException) -> RegistryUnavailableError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    fs = _fs_problem(path)
    if fs and fs.lower() not in reason.lower():
        reason = f"{fs} ({reason})"
    return RegistryUnavailableError(
        f"cannot {what} {path}: {reason}. Point --db (or PITUNE_RUNS_DB) at a writable location"
    )


def _is_unavailable(exc: sqlite3.Error) -> bool:
    """sqlite errors that mean "cannot open/write here" (not a transient lock)."""
    msg = str(exc).lower()
    return not ("locked" in msg or "busy" in msg) and isinstance(exc, sqlite3.OperationalError)


def set_aside(run_dir: str | os.PathLike[str], label: str, keep: Iterable[str] = ()) -> Path | None:
    """Move everything in ``run_dir`` except ``keep`` and earlier ``attempt-*`` folders into
    ``run_dir/<label>/`` (``<label>.1``, ... if taken); returns that folder, or None if nothing moved.

    Renames within one directory: nothing is copied, nothing is lost. Used before a new attempt
    reuses a run directory, so that its outputs never sit beside those of an earlier attempt.
    """
    run_dir = Path(run_dir)
    kept = set(keep)
    try:
        entries = [p for p in run_dir.iterdir() if p.name not in kept and not _ATTEMPT_DIR_RE.fullmatch(p.name)]
    except FileNotFoundError:
        return None
    if not entries:
        return None
    dest = run_dir / label
    n = 0
    while dest.exists():
        n += 1
        dest = run_dir / f"{label}.{n}"
    dest.mkdir()
    for p in entries:
        os.replace(p, dest / p.name)
    return dest


# ------------------------------------------------------------------ processes


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to detect pid reuse."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """True if process ``pid`` exists (and, when known, started at ``start_ticks``)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if start_ticks is not None:
        now_ticks = process_start_ticks(pid)
        if now_ticks is not None and now_ticks != start_ticks:
            return False  # pid was reused by another process
    return True


# ----------------------------------------------------------------------- json


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and arrays, Paths, sets
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=_json_default, **kw)


def to_jsonable(obj: Any) -> Any:
    """Round-trip ``obj`` through JSON (converting numpy/torch scalars)."""
    return json.loads(_dumps(obj))


def _atomic_write(path: Path, text: str) -> None:
    write_atomic(path, text)


# ------------------------------------------------------------------- schema

#: Ordered migrations: (version, description, statements).  Never edit an
#: applied migration; append a new one.  Each is applied in one transaction.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "runs table",
        [
            """CREATE TABLE runs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                kind TEXT NOT NULL,
                name TEXT,
                config TEXT NOT NULL DEFAULT '{}',
                status TEXT NOT NULL,
                progress TEXT NOT NULL DEFAULT '{}',
                metrics TEXT,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                run_dir TEXT NOT NULL,
                log_path TEXT NOT NULL,
                error TEXT,
                worker_pid INTEGER,
                cancel_requested INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX runs_status ON runs(status, seq)",
        ],
    ),
    (
        2,
        "scheduling columns: priority, resources, executor, job target, attempt, worker identity",
        [
            "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN resources TEXT NOT NULL DEFAULT '{}'",
            "ALTER TABLE runs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local'",
            "ALTER TABLE runs ADD COLUMN target TEXT",
            "ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN worker_host TEXT",
            "ALTER TABLE runs ADD COLUMN worker_start_ticks INTEGER",
            "ALTER TABLE runs ADD COLUMN heartbeat_at REAL",
            "CREATE INDEX runs_claim ON runs(executor, status, priority DESC, seq)",
        ],
    ),
    (
        3,
        "scheduler heartbeat table",
        [
            """CREATE TABLE schedulers (
                name TEXT PRIMARY KEY,
                pid INTEGER,
                host TEXT,
                started_at REAL,
                heartbeat_at REAL,
                max_parallel INTEGER
            )""",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def apply_migrations(conn: sqlite3.Connection, upto: int | None = None) -> int:
    """Bring the schema of ``conn`` to ``upto`` (default: latest). Returns the version.

    ``conn`` must be in autocommit mode (``isolation_level=None``).  Safe when
    several processes open the same new database at once: the version is read
    and bumped inside one ``BEGIN IMMEDIATE`` transaction per migration.
    """
    target = SCHEMA_VERSION if upto is None else upto
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            pending = [m for m in MIGRATIONS if current < m[0] <= target]
            if not pending:
                conn.execute("COMMIT")
                if current > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"run registry schema version {current} is newer than this "
                        f"pitune understands ({SCHEMA_VERSION}); upgrade pitune"
                    )
                return current
            version, _desc, statements = pending[0]
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# ------------------------------------------------------------------- records


def _loads(text: str | None, default: Any) -> Any:
    if text is None or text == "":
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


@dataclass(frozen=True)
class RunRecord:
    id: str
    kind: str
    name: str | None
    status: str
    config: dict
    progress: dict
    metrics: dict | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    run_dir: Path
    log_path: Path
    error: str | None
    worker_pid: int | None
    cancel_requested: bool
    priority: int = 0
    resources: dict = field(default_factory=dict)
    executor: str = "local"
    attempt: int = 0
    worker_host: str | None = None
    worker_start_ticks: int | None = None
    heartbeat_at: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row, runs_root: Path | None = None) -> "RunRecord":
        """A record from a database row. With ``runs_root`` (as the registry always passes), the run
        directory and log are derived from the run id inside ``runs_root``; the paths stored in the
        row are never used, so a row from elsewhere cannot point a job, a log or a move elsewhere."""
        keys = row.keys()

        def get(name: str, default: Any = None) -> Any:
            return row[name] if name in keys else default

        if runs_root is None:
            run_dir, log_path = Path(row["run_dir"]), Path(row["log_path"])
        else:
            run_dir = runs_root / (row["id"] if is_valid_run_id(row["id"]) else ".invalid-run-id")
            log_path = run_dir / "log.txt"

        return cls(
            id=row["id"],
            kind=row["kind"],
            name=row["name"],
            status=row["status"],
            config=_loads(row["config"], {}),
            progress=_loads(row["progress"], {}),
            metrics=_loads(row["metrics"], None),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            run_dir=run_dir,
            log_path=log_path,
            error=row["error"],
            worker_pid=row["worker_pid"],
            cancel_requested=bool(row["cancel_requested"]),
            priority=get("priority", 0) or 0,
            resources=_loads(get("resources"), {}),
            executor=get("executor", "local") or "local",
            attempt=get("attempt", 0) or 0,
            worker_host=get("worker_host"),
            worker_start_ticks=get("worker_start_ticks"),
            heartbeat_at=get("heartbeat_at"),
        )

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["run_dir"] = str(self.run_dir)
        d["log_path"] = str(self.log_path)
        return d


class RunNotFoundError(KeyError):
    """No run with that id in the registry."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "run not found"


# Connections inherited through fork() must never be used or closed by the
# child; keep them referenced here so that garbage collection cannot close them.
_FORK_ORPHANS: list[sqlite3.Connection] = []


class RunRegistry:
    """The run registry. Cheap to construct; safe to share between threads."""

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        runs_root: str | os.PathLike[str] | None = None,
        *,
        journal_mode: str | None = None,
        busy_timeout: float = 30.0,
        read_only: bool = False,
    ) -> None:
        """``read_only=True`` opens an existing registry that nothing may write (read-only media, a
        copy from elsewhere): SQLite's immutable mode, no directory created, no migration; only the
        reading methods work."""
        self.read_only = bool(read_only)
        self.db_path = Path(db_path if db_path is not None else default_db_path()).expanduser().resolve()
        self.runs_root = (
            Path(runs_root).expanduser().resolve() if runs_root is not None else self.db_path.parent / "runs"
        )
        self.journal_mode = (journal_mode or os.environ.get("PITUNE_RUNS_JOURNAL") or "wal").lower()
        if self.journal_mode not in {"wal", "delete", "truncate", "persist"}:
            raise ValueError(f"unsupported journal_mode {self.journal_mode!r}")
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        try:
            if self.read_only:
                if not self.db_path.is_file():
                    raise FileNotFoundError(errno.ENOENT, "no run registry", str(self.db_path))
                row = self._conn().execute("SELECT MAX(version) FROM schema_version").fetchone()
                self.schema_version = int(row[0] or 0)
                if self.schema_version > SCHEMA_VERSION:
                    raise RuntimeError(f"run registry schema version {self.schema_version} is newer than this "
                                       f"pitune understands ({SCHEMA_VERSION}); upgrade pitune")
                return
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.runs_root.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
            self.schema_version = apply_migrations(conn)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            if isinstance(exc, sqlite3.Error) and not _is_unavailable(exc):
                raise
            raise _unavailable("open the run registry", self.db_path, exc) from exc

    def __repr__(self) -> str:
        return f"RunRegistry({str(self.db_path)!r})"

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            from urllib.parse import quote

            # read-only (sees a writer's changes); where even that needs a write (a WAL registry on
            # read-only media cannot create its -shm file), immutable: SQLite neither locks nor writes
            for mode in ("mode=ro", "mode=ro&immutable=1"):
                conn = sqlite3.connect(f"file:{quote(str(self.db_path))}?{mode}", uri=True,
                                       isolation_level=None, check_same_thread=False)
                try:
                    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                    break
                except sqlite3.Error:
                    conn.close()
                    if "immutable" in mode:
                        raise
            conn.row_factory = sqlite3.Row
            return conn
        conn = sqlite3.connect(
            str(self.db_path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        # WAL + NORMAL: durable across process crashes; a power loss may drop the
        # last transactions but never corrupts the database.
        conn.execute("PRAGMA synchronous=NORMAL" if self.journal_mode == "wal" else "PRAGMA synchronous=FULL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        pid = os.getpid()
        if conn is not None and local.pid != pid:
            _FORK_ORPHANS.append(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            local.conn, local.pid = conn, pid
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        if conn.in_transaction:  # left open by an asynchronous exception (signal handler)
            conn.execute("ROLLBACK")
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
                raise _unavailable("write to the run registry", self.db_path, exc) from exc
            raise

    def _record(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord.from_row(row, self.runs_root)

    def _row(self, conn: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r} in {self.db_path}")
        return row

    # ------------------------------------------------------------------ paths

    def run_dir_for(self, run_id: str) -> Path:
        return self.runs_root / validate_run_id(run_id)

    @staticmethod
    def append_log(log_path: str | os.PathLike[str], message: str) -> None:
        """Append a timestamped line to a run's log (O_APPEND, safe across processes)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if Path(log_path).parent.is_symlink():  # a run directory replaced by a link: never follow it
            return
        try:
            with open(log_path, "a", encoding="utf-8") as fh:
                for line in str(message).splitlines() or [""]:
                    fh.write(f"[{stamp}] {line}\n")
        except OSError:
            pass

    # ----------------------------------------------------------------- submit

    def submit(
        self,
        kind: str,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        resources: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        executor: str = "local",
    ) -> str:
        """Queue a run and create its directory; returns the new run id.

        ``kind`` must be registered in this process (:func:`pitune_core.runs.jobs.register_job`)
        and ``config`` must pass the kind's validator: a run that would be refused is never
        queued (``ValueError``, one line). Only the kind's name is stored with the run.
        """
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"a run's config must be a JSON object, not {type(config).__name__}")
        config = dict(config or {})
        validate_job_config(kind, config)
        resources = dict(resources or {})
        config_json = _dumps(config, sort_keys=True)
        resources_json = _dumps(resources, sort_keys=True)
        if name is not None:
            name = str(name)

        for _attempt in range(20):
            now = time.time()
            run_id = new_run_id(now)
            run_dir = self.run_dir_for(run_id)
            try:
                run_dir.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _unavailable("create the run directory", run_dir, exc) from exc
            log_path = run_dir / "log.txt"
            try:
                _atomic_write(run_dir / "config.json", _dumps(config, indent=2, sort_keys=True) + "\n")
                log_path.touch()
                with self._write() as conn:
                    conn.execute(
                        """INSERT INTO runs (id, kind, name, config, status, progress, created_at,
                               run_dir, log_path, priority, resources, executor)
                           VALUES (?, ?, ?, ?, 'queued', '{}', ?, ?, ?, ?, ?, ?)""",
                        (
                            run_id,
                            kind,
                            name,
                            config_json,
                            now,
                            str(run_dir),
                            str(log_path),
                            int(priority),
                            resources_json,
                            executor,
                        ),
                    )
            except sqlite3.IntegrityError:
                _rmtree_quiet(run_dir)
                continue
            except OSError as exc:
                _rmtree_quiet(run_dir)
                raise _unavailable("write the run directory", run_dir, exc) from exc
            except BaseException:
                _rmtree_quiet(run_dir)
                raise
            return run_id
        raise RuntimeError("could not allocate a unique run id")

    # ------------------------------------------------------------------ reads

    def get(self, run_id: str) -> RunRecord:
        validate_run_id(run_id)
        return self._record(self._row(self._conn(), run_id))

    def exists(self, run_id: str) -> bool:
        validate_run_id(run_id)
        return self._conn().execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def list_runs(
        self,
        status: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        limit: int | None = None,
        *,
        executor: str | None = None,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        """Runs, newest first by default, optionally filtered."""
        where, params = [], []  # type: ignore[var-annotated]
        for col, val in (("status", status), ("kind", kind)):
            if val is None:
                continue
            vals = [val] if isinstance(val, str) else list(val)
            if col == "status":
                bad = [v for v in vals if v not in STATUSES]
                if bad:
                    raise ValueError(f"unknown status {bad[0]!r}; expected one of {STATUSES}")
            where.append(f"{col} IN ({','.join('?' * len(vals))})")
            params.extend(vals)
        if executor is not None:
            where.append("executor = ?")
            params.append(executor)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq " + ("ASC" if oldest_first else "DESC")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params.extend([int(limit), int(offset)])
        return [self._record(r) for r in self._conn().execute(sql, params).fetchall()]

    list = list_runs  # the obvious name; ``list_runs`` avoids shadowing the builtin

    def get_many(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        ids = [validate_run_id(r) for r in run_ids]
        out: dict[str, RunRecord] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self._conn().execute(
                f"SELECT * FROM runs WHERE id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            out.update({r["id"]: self._record(r) for r in rows})
        return out

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        out = {s: 0 for s in STATUSES}
        out.update({r[0]: r[1] for r in rows})
        return out

    def count_active(self, executor: str | None = None) -> tuple[int, int]:
        """(queued, running) counts, optionally for one executor."""
        sql = "SELECT status, COUNT(*) FROM runs WHERE status IN ('queued','running')"
        params: list[Any] = []
        if executor is not None:
            sql += " AND executor = ?"
            params.append(executor)
        rows = dict(self._conn().execute(sql + " GROUP BY status", params).fetchall())
        return rows.get(QUEUED, 0), rows.get(RUNNING, 0)

    def is_cancel_requested(self, run_id: str) -> bool:
        validate_run_id(run_id)
        row = self._conn().execute("SELECT cancel_requested, status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return bool(row[0]) or row[1] == CANCELLED

    # ------------------------------------------------------------ transitions

    def _identity(self, pid: int | None) -> tuple[int, str, int | None]:
        pid = os.getpid() if pid is None else int(pid)
        return pid, HOSTNAME, process_start_ticks(pid)

    def claim_next(self, executor: str = "local", *, pid: int | None = None) -> RunRecord | None:
        """Atomically move the highest-priority, oldest queued run to ``running``.

        The claiming process (``pid``, default: this one) is recorded as the
        run's owner until the worker records itself with :meth:`mark_started`.
        """
        pid, host, ticks = self._identity(pid)
        with self._write() as conn:
            row = conn.execute(
                "SELECT id FROM runs WHERE status = 'queued' AND executor = ? ORDER BY priority DESC, seq ASC LIMIT 1",
                (executor,),
            ).fetchone()
            if row is None:
                return None
            return self._claim_locked(conn, row["id"], pid, host, ticks)

    def claim(self, run_id: str, *, pid: int | None = None) -> RunRecord | None:
        """Claim one specific queued run; ``None`` if it is not queued any more."""
        validate_run_id(run_id)
        pid, host, ticks = self._identity(pid)
        with self._write() as conn:
            status = self._row(conn, run_id)["status"]
            if status != QUEUED:
                return None
            return self._claim_locked(conn, run_id, pid, host, ticks)

    def _claim_locked(self, conn: sqlite3.Connection, run_id: str, pid: int, host: str, ticks: int | None) -> RunRecord:
        now = time.time()
        conn.execute(
            """UPDATE runs SET status = 'running', started_at = ?, finished_at = NULL, heartbeat_at = ?,
                   attempt = attempt + 1, worker_pid = ?, worker_host = ?, worker_start_ticks = ?
               WHERE id = ? AND status = 'queued'""",
            (now, now, pid, host, ticks, run_id),
        )
        return self._record(self._row(conn, run_id))

    def mark_started(self, run_id: str, *, pid: int | None = None) -> RunRecord | None:
        """Record the worker process executing a claimed run; ``None`` if not running."""
        validate_run_id(run_id)
        pid, host, ticks = self._identity(pid)
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                """UPDATE runs SET worker_pid = ?, worker_host = ?, worker_start_ticks = ?,
                       started_at = ?, heartbeat_at = ?
                   WHERE id = ? AND status = 'running'""",
                (pid, host, ticks, now, now, run_id),
            )
            if cur.rowcount == 0:
                self._row(conn, run_id)  # raises if missing
                return None
            return self._record(self._row(conn, run_id))

    def set_progress(self, run_id: str, progress: Mapping[str, Any] | None = None, **fields: Any) -> bool:
        """Replace the progress dict of a running run. False if it is not running."""
        validate_run_id(run_id)
        data = dict(progress or {})
        data.update(fields)
        now = time.time()
        data.setdefault("updated_at", now)
        text = _dumps(data)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET progress = ?, heartbeat_at = ? WHERE id = ? AND status = 'running'",
                (text, now, run_id),
            )
            return cur.rowcount > 0

    def heartbeat(self, run_id: str) -> bool:
        validate_run_id(run_id)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ? AND status = 'running'", (time.time(), run_id)
            )
            return cur.rowcount > 0

    def finish(
        self,
        run_id: str,
        status: str,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        *,
        details: str | None = None,
        only_if: Iterable[str] = (RUNNING,),
    ) -> bool:
        """Record the outcome of a run.

        ``status`` is succeeded, failed, cancelled or interrupted.  The update only
        happens while the run is in one of ``only_if`` (default: running), so a
        late or duplicate report never overwrites an outcome.  Returns whether the
        run was updated.  Writes the outcome files (:meth:`_write_outcome`):
        ``metrics.json`` (succeeded), ``error.txt`` + ``FAILED`` (failed;
        ``details`` -- e.g. a full traceback -- goes to ``error.txt``, ``error`` is
        the short text kept in the database), ``CANCELLED`` or ``INTERRUPTED``.
        """
        validate_run_id(run_id)
        if status not in (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED):
            raise ValueError(f"cannot finish a run with status {status!r}")
        only_if = tuple(only_if)
        metrics_json = _dumps(dict(metrics)) if metrics is not None else None
        now = time.time()
        with self._write() as conn:
            row = self._row(conn, run_id)
            if row["status"] not in only_if:
                return False
            # the files first, inside the write transaction: whoever reads the new status from the
            # database then finds the run directory already saying the same
            self._write_outcome(self._record(row), status, metrics=metrics, error=error, details=details)
            conn.execute(
                """UPDATE runs SET status = ?, finished_at = ?, metrics = COALESCE(?, metrics),
                       error = ?, heartbeat_at = ? WHERE id = ?""",
                (status, now, metrics_json, error, now, run_id),
            )
        return True

    def _write_outcome(
        self,
        record: RunRecord,
        status: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        details: str | None = None,
    ) -> None:
        """Make the run directory say what the database says: the file(s) of ``status``, and no
        marker of another outcome (a job may have written its own, e.g. ``INTERRUPTED`` on a cancel)."""
        run_dir, log_path = record.run_dir, record.log_path
        if run_dir.is_symlink() or not run_dir.is_dir():  # never follow a link out of runs_root
            self.append_log(log_path, f"[registry] not writing result files: {run_dir} is not a plain directory")
            return
        try:
            for st, marker in OUTCOME_MARKERS.items():
                if st != status:
                    try:
                        (run_dir / marker).unlink()
                    except FileNotFoundError:
                        pass
            if status == SUCCEEDED:
                _atomic_write(run_dir / "metrics.json", _dumps(dict(metrics or {}), indent=2, sort_keys=True) + "\n")
                return
            if status == FAILED:
                _atomic_write(run_dir / "error.txt", (details or error or "failed") + "\n")
            line = (str(error or status).strip().splitlines() or [status])[0][:500]
            _atomic_write(run_dir / OUTCOME_MARKERS[status], line + "\n")
        except OSError as exc:  # the database is the source of truth
            self.append_log(log_path, f"[registry] could not write result files: {exc}")

    def request_cancel(self, run_id: str) -> RunRecord:
        """Ask a run to stop.

        A queued (or interrupted) run is cancelled at once; a running one gets
        its ``cancel_requested`` flag set, which the job sees cooperatively (the
        executor also terminates a worker that ignores it after a grace period).
        Finished runs are left unchanged.  Returns the updated record.
        """
        validate_run_id(run_id)
        now = time.time()
        with self._write() as conn:
            status = self._row(conn, run_id)["status"]
            if status in (QUEUED, INTERRUPTED):
                conn.execute(
                    """UPDATE runs SET status = 'cancelled', cancel_requested = 1, finished_at = ?,
                           error = COALESCE(error, ?) WHERE id = ?""",
                    (now, f"cancelled while {status}", run_id),
                )
            elif status == RUNNING:
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            record = self._record(self._row(conn, run_id))
        if status in (QUEUED, INTERRUPTED):
            self._write_outcome(record, CANCELLED, error=record.error)
        if status in (QUEUED, INTERRUPTED, RUNNING):
            self.append_log(record.log_path, f"[registry] cancel requested (run was {status})")
        return record

    def recover_interrupted(self, *, stale_after: float | None = None, exclude: Iterable[str] = ()) -> list[RunRecord]:
        """Mark ``running`` runs whose worker is gone as ``interrupted``; return them.

        A run owned by a process on this host is orphaned when that pid is dead
        (or was reused, checked through the process start time).  Runs owned by
        other hosts can only be judged by their heartbeat: pass ``stale_after``
        (seconds) to also recover those whose last heartbeat is older than that.
        """
        excluded = set(exclude)
        now = time.time()
        conn = self._conn()
        rows = conn.execute(
            "SELECT id, worker_pid, worker_host, worker_start_ticks, heartbeat_at FROM runs WHERE status = 'running'"
        ).fetchall()
        victims: list[tuple[str, int | None, str]] = []
        for r in rows:
            if r["id"] in excluded:
                continue
            pid, host = r["worker_pid"], r["worker_host"]
            if host in (None, HOSTNAME):
                if not pid_alive(pid, r["worker_start_ticks"]):
                    victims.append((r["id"], pid, f"worker process {pid} on {HOSTNAME} is gone"))
            elif stale_after is not None and (r["heartbeat_at"] or 0) < now - stale_after:
                victims.append((r["id"], pid, f"no heartbeat from {host} (pid {pid}) for over {stale_after:.0f}s"))
        recovered: list[RunRecord] = []
        for run_id, pid, why in victims:
            with self._write() as conn:
                cur = conn.execute(
                    """UPDATE runs SET status = 'interrupted', finished_at = ?, error = ?
                       WHERE id = ? AND status = 'running' AND worker_pid IS ?""",
                    (now, f"interrupted: {why}", run_id, pid),
                )
                if cur.rowcount:
                    recovered.append(self._record(self._row(conn, run_id)))
        for rec in recovered:
            self._write_outcome(rec, INTERRUPTED, error=rec.error)
            self.append_log(rec.log_path, f"[registry] marked interrupted: {rec.error}")
        return recovered

    def resume(self, run_id: str) -> RunRecord:
        """Queue an interrupted or failed run again (same id, same directory).

        The earlier attempt's files (all but ``config.json`` and ``log.txt``) are first moved into
        ``attempt-<n>/``, so the new attempt never writes beside them.
        """
        validate_run_id(run_id)
        before = self._record(self._row(self._conn(), run_id))
        if before.status not in RESUMABLE_STATUSES:
            raise ValueError(
                f"run {run_id} is {before.status}; only {sorted(RESUMABLE_STATUSES)} runs can be resumed"
            )
        if before.run_dir.is_symlink() or not before.run_dir.is_dir():
            raise ValueError(f"run directory {before.run_dir} is not a plain directory; it cannot be resumed")
        # files first: if they cannot be moved, the run stays as it was (nothing half-done)
        try:
            moved = set_aside(before.run_dir, f"attempt-{before.attempt}", keep=_KEPT_ON_RESUME)
        except OSError as exc:
            raise _unavailable("move the earlier attempt's files aside in", before.run_dir, exc) from exc
        with self._write() as conn:
            row = self._row(conn, run_id)
            if row["status"] not in RESUMABLE_STATUSES:  # resumed or cancelled meanwhile
                raise ValueError(f"run {run_id} is {row['status']} now; it was not resumed")
            conn.execute(
                """UPDATE runs SET status = 'queued', cancel_requested = 0, error = NULL, metrics = NULL,
                       started_at = NULL, finished_at = NULL, worker_pid = NULL, worker_host = NULL,
                       worker_start_ticks = NULL, heartbeat_at = NULL WHERE id = ?""",
                (run_id,),
            )
            record = self._record(self._row(conn, run_id))
        note = f"; its files are in {moved.name}/" if moved else ""
        self.append_log(
            record.log_path,
            f"[registry] ---- resumed (was {row['status']}; attempt {record.attempt + 1} next{note}) ----",
        )
        return record

    # -------------------------------------------------------------- schedulers

    def record_scheduler(self, name: str, *, max_parallel: int | None = None, started: bool = False) -> None:
        now = time.time()
        with self._write() as conn:
            if started:
                conn.execute(
                    """INSERT OR REPLACE INTO schedulers (name, pid, host, started_at, heartbeat_at, max_parallel)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    (name, os.getpid(), HOSTNAME, now, now, max_parallel),
                )
            else:
                conn.execute(
                    "UPDATE schedulers SET heartbeat_at = ? WHERE name = ? AND pid = ?", (now, name, os.getpid())
                )

    def clear_scheduler(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM schedulers WHERE name = ? AND pid = ?", (name, os.getpid()))

    def scheduler_info(self, name: str = "local") -> dict | None:
        row = self._conn().execute("SELECT * FROM schedulers WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        info = dict(row)
        info["alive"] = info["host"] != HOSTNAME or pid_alive(info["pid"])
        return info

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]


def _rmtree_quiet(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
