"""``--workers N|auto``: run a shardable command (``transfer-study``, ``study run``) in N processes.

Why: on CPU the study's jobs are small matrix products (a 6-layer MiniLM on batches of 16 short
inputs, or on a handful of visual tokens). A second *thread* speeds such a job up less than a second
*process*, with one thread, adds by running a second job beside it, and a single-thread worker never
waits on OpenMP. On the project's 2-core machine, two single-thread workers do 1.0-1.3x the work of one
two-thread process running the same code when idle OpenMP threads spin (``OMP_WAIT_POLICY=ACTIVE``), and
1.25-2.0x when they sleep (``PASSIVE``, which the project's benches and CI set).
``python bench/bench_throughput.py`` measures the layouts side by side, in one run: the code before
issue 15 and today's code, each in one process and in these workers. So on a machine with C cores a study runs fastest as C single-thread workers, each taking
every C-th job of the plan (the ``PITUNE_SHARD=i/C`` sharding the logs were already built for).
``auto`` does that on CPU. It stays at 1 on CUDA, where one process owns the device, and when
``PITUNE_SHARD`` is already set (the user shards by hand). It also stops where memory would run out
(:data:`WORKER_MEMORY` per worker).

Each worker is ``python -m pitune_core`` with the same arguments and ``--workers 1``. Its output comes
back line by line, prefixed ``[worker i/N]``. Its progress bars are redrawn at most every
:data:`BAR_SECONDS`, except that the study's bars, which name each finished job, print one line per job. When every worker is done, the command goes on in this process, unsharded: it
resumes (every job is already in the log), records the stage as finished and writes the results,
exactly as a one-process run would. If a worker fails, the others finish first (their jobs stay
logged). Then the command stops with one line naming the worker and its last words, and a rerun
resumes.

``pitune transfer-matrix --executor local|ray`` fans out another way: one run-registry record per pair, the
path the dashboard's launches use. These two commands keep their plan logs and shard whole stages instead,
so each worker loads the backbone and the study once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pitune_core.runs.jobs import thread_env

#: the environment variable that gives ``--workers`` its default (``auto`` when unset)
ENV = "PITUNE_WORKERS"
#: peak resident memory budgeted per worker: the backbone, one expert, one task's data and the
#: activations of one batch (``bench/bench_throughput.py`` prints the measured peak: 0.8-1.2 GiB)
WORKER_MEMORY = 2 * 1024 ** 3
#: a worker's progress bar is redrawn at most this often (seconds), so N bars stay readable as lines
BAR_SECONDS = 30


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def auto_workers(cores: int | None = None, available_memory: int | None = None, cuda: bool | None = None) -> int:
    """The ``auto`` layout: one single-thread worker per usable core on CPU, as many as memory
    holds at :data:`WORKER_MEMORY` each; 1 on CUDA or when ``PITUNE_SHARD`` is set."""
    from pitune_core.study.transfer import shard_from_env  # lazy: loads torch

    if shard_from_env() is not None:
        return 1
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return 1
    if available_memory is None:
        import psutil

        available_memory = psutil.virtual_memory().available
    cores = usable_cores() if cores is None else cores
    return max(1, min(cores, available_memory // WORKER_MEMORY))


def resolve(value: str | int | None) -> int:
    """``--workers`` (or ``$PITUNE_WORKERS``, else ``auto``) as a number >= 1; a one-line
    ``ValueError`` for anything else, or for N > 1 while ``PITUNE_SHARD`` is set (also checked here:
    a malformed ``PITUNE_SHARD`` is refused before any work starts)."""
    from pitune_core.study.transfer import SHARD_ENV, shard_from_env  # lazy: loads torch

    shard = shard_from_env()
    value = os.environ.get(ENV, "auto") if value is None else value
    if str(value).strip().lower() == "auto":
        return auto_workers()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers {value!r}: expected a whole number >= 1 or 'auto'") from None
    if n < 1:
        raise ValueError(f"--workers {n}: expected a whole number >= 1 or 'auto'")
    if n > 1 and shard is not None:
        raise ValueError(f"--workers {n} with {SHARD_ENV}={os.environ[SHARD_ENV]} set: shard by hand or "
                         "with --workers, not both")
    return n


def threads_per_worker(n: int, cores: int | None = None) -> int:
    """Torch threads for each of ``n`` workers: the usable cores shared out, at least one."""
    return max(1, (usable_cores() if cores is None else cores) // n)


def worker_env(i: int, n: int, base: dict | None = None) -> dict:
    """The environment of worker ``i`` of ``n``: its shard, its threads (every variable the run
    registry's workers cap too, :func:`pitune_core.runs.jobs.thread_env`), slow progress bars."""
    from pitune_core.study.transfer import SHARD_ENV  # lazy: loads torch

    return {**(os.environ if base is None else base), SHARD_ENV: f"{i}/{n}", **thread_env(threads_per_worker(n)),
            "TQDM_MININTERVAL": str(BAR_SECONDS), ENV: "1"}


def with_option(argv: list[str], name: str, value: str | None) -> list[str]:
    """``argv`` with every ``name X`` / ``name=X`` removed, then ``name value`` appended
    (``value=None``: only removed)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out + ([name, value] if value is not None else [])


def _relay(stream, prefix: str, last: list[str]) -> None:
    """Copy a worker's output to our stderr, a prefixed line per line or progress-bar redraw."""
    buf = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                last[0] = line
                print(f"{prefix}{line}", file=sys.stderr, flush=True)
    if buf.strip():
        last[0] = buf.decode("utf-8", "replace").rstrip()
        print(f"{prefix}{last[0]}", file=sys.stderr, flush=True)


def run_sharded(argv: list[str], n: int, what: str = "") -> None:
    """Run ``pitune <argv> --workers 1`` as ``n`` worker processes (``PITUNE_SHARD=i/n``, the
    cores shared out as torch threads), relay their output, wait for all of them.

    Raises ``RuntimeError`` (one line) naming the first worker that failed, after all have ended;
    on Ctrl-C, stops them all (their finished jobs stay in the logs) and re-raises.
    """
    threads = threads_per_worker(n)
    child_argv = [sys.executable, "-m", "pitune_core", *with_option(argv, "--workers", "1")]
    print(f"{what or argv[0]}: {n} workers x {threads} thread{'s' if threads > 1 else ''} "
          f"(--workers; PITUNE_SHARD=i/{n})", file=sys.stderr, flush=True)
    procs, relays, lasts = [], [], []
    try:
        for i in range(n):
            p = subprocess.Popen(child_argv, env=worker_env(i, n), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            last = [""]
            t = threading.Thread(target=_relay, args=(p.stdout, f"[worker {i + 1}/{n}] ", last), daemon=True)
            t.start()
            procs.append(p)
            relays.append(t)
            lasts.append(last)
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for t in relays:
            t.join(timeout=5)
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        i, c = bad[0]
        raise RuntimeError(f"worker {i + 1}/{n} of `pitune {' '.join(argv)}` failed (exit {c}): "
                           f"{lasts[i][0] or 'no output'}"
                           + (f"; {len(bad) - 1} more failed" if len(bad) > 1 else "")
                           + "; finished jobs are logged, rerun to resume")
