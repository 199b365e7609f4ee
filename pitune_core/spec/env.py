"""The environment variables pitune reads, each with its one parser (nothing else reads them raw).

Plain Python: no torch, no numpy, nothing else of the project.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: ``1`` silences every progress bar and the chatter of downloads
QUIET_ENV = "PITUNE_QUIET"
#: a BERT-like encoder's folder (``save_pretrained``) to use as the trunk instead of the shipped MiniLM
TRUNK_PATH_ENV = "PITUNE_TRUNK_PATH"
#: ``i/n``: this process takes every n-th job of a stage, starting at i
SHARD_ENV = "PITUNE_SHARD"
#: the torch threads of a pitune process (``--workers`` sets it per worker)
NUM_THREADS_ENV = "PITUNE_NUM_THREADS"


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def quiet(environ: Mapping[str, str] | None = None) -> bool:
    """``PITUNE_QUIET=1`` silences every progress bar."""
    return _env(environ).get(QUIET_ENV) == "1"


def trunk_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``$PITUNE_TRUNK_PATH``, or None when unset or empty (the shipped trunk)."""
    return _env(environ).get(TRUNK_PATH_ENV) or None


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``PITUNE_SHARD=i/n``: this process takes every n-th job starting at i, so several processes
    can share one long stage (the stage is only recorded as finished by an unsharded run)."""
    v = _env(environ).get(SHARD_ENV)
    if not v or not v.strip():
        return None
    parts = v.strip().split("/")
    if len(parts) != 2 or not all(x.strip().isdigit() for x in parts) or not 0 <= int(parts[0]) < int(parts[1]):
        raise ValueError(f"{SHARD_ENV}={v!r}: expected i/n, whole numbers with 0 <= i < n (e.g. 0/2)")
    return int(parts[0]), int(parts[1])


def shard_label(environ: Mapping[str, str] | None = None) -> str | None:
    """The shard as ``i/n`` (for messages), None when unsharded."""
    shard = shard_from_env(environ)
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def num_threads_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """``$PITUNE_NUM_THREADS`` as a thread count, ``None`` when unset or empty; anything but a whole
    number >= 1 is refused with one line (ValueError)."""
    raw = str(_env(environ).get(NUM_THREADS_ENV) or "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{NUM_THREADS_ENV} must be a whole number >= 1 (threads per process), not {raw!r}")
    return n
