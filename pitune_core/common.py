"""Small helpers every layer shares: file hashing, atomic writes, bounded reads, progress bars.

The vocabulary (expert types, modalities), the parsers of CLI values (shots, sources, task names) and
the environment variables' parsers are owned by :mod:`pitune_core.spec` and re-exported here for the
modules that import them from ``common``. No torch here.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

# the vocabulary and the parsers are owned by the spec; re-exported here for their many importers
from pitune_core.spec.env import NUM_THREADS_ENV, num_threads_from_env, quiet  # noqa: F401
from pitune_core.spec.parse import (TASK_NAME_PATTERN, as_arg_type, check_expert_type, check_task_name,  # noqa: F401
                                    parse_int_list, parse_shots, parse_shots_list, parse_sources, shots_arg)
from pitune_core.spec.vocab import EXPERT_TYPE_LABELS, EXPERT_TYPES, MODALITIES  # noqa: F401

#: the image projector's name inside the trunk (a submodule, so an expert's peft adapter may adapt it:
#: ``pitune_projector.fc1.lora_A.weight``); its two linear layers as peft target modules
PROJECTOR_MODULE = "pitune_projector"
PROJECTOR_LAYERS = (f"{PROJECTOR_MODULE}.fc1", f"{PROJECTOR_MODULE}.fc2")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a finished temporary folder into place, replacing an older one: a reader sees the old
    folder or the new one, never half of each."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


#: how long a temporary folder without a writer's pid may sit before the next run removes it
STALE_TMP_S = 24 * 3600


def tmp_prefix(name: str) -> str:
    """The prefix of a temporary folder this process writes beside ``name`` (``tempfile.mkdtemp(prefix=)``):
    it carries the pid, so that :func:`clean_stale_tmp` knows when its writer is gone."""
    return f".{name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders and files in ``folder`` that a killed run left behind: hidden
    ``.NAME.tmp-PID-…`` / ``.NAME.removed-PID`` / ``.NAME.old-PID`` entries whose process is gone (or,
    without a pid, older than :data:`STALE_TMP_S`). Called at the start of the next run that writes there."""
    import re
    import shutil
    import time

    folder, removed = Path(folder), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = re.fullmatch(r"\..+?\.(tmp|removed|old)-(.+)", p.name)
        if not m:
            continue
        kind, tail = m.groups()
        pid = re.match(r"([0-9]+)-", tail) if kind == "tmp" else re.fullmatch(r"([0-9]+)", tail)
        try:
            if pid is not None:
                if _pid_alive(int(pid.group(1))):
                    continue
            elif time.time() - p.lstat().st_mtime < STALE_TMP_S:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            continue
    return removed


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a file so that readers see the old content or the new, never a torn one, even when
    several processes (``PITUNE_SHARD`` shards) write the same file at once: each writer has its
    own temporary name (pid and thread), then ``os.replace``."""
    import threading

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class NotRegularFileError(ValueError):
    """A path that should be a plain file is a FIFO, device, socket, folder or (when refused) a link,
    or is over its size limit (the message is one line naming it)."""


def _kind_of(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: str | os.PathLike, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of a *regular* file of at most ``max_bytes``, read with bounded time and memory.

    The one rule for every file pitune reads from a user or a study: it is opened without blocking
    (a FIFO never hangs the open), the opened descriptor must be a regular file (no FIFO, device,
    socket or folder: ``/dev/zero`` behind a symlink is refused too), its size is checked before
    reading, and at most ``max_bytes + 1`` bytes are read (a file that grows while read is refused).
    ``follow_symlinks=False`` refuses a symbolic link itself. Raises :class:`NotRegularFileError`
    (or ``OSError`` when it cannot be opened).
    """
    import stat

    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    if not follow_symlinks and path.is_symlink():
        raise NotRegularFileError(f"{path} is a symbolic link (refused)")
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{path} is {_kind_of(st.st_mode)}, not a regular file (refused)")
        if st.st_size > max_bytes:
            raise NotRegularFileError(f"{path} is {st.st_size / 2**20:.1f} MB, over the "
                                      f"{max_bytes / 2**20:.0f} MB limit for this file")
        chunks, left = [], max_bytes + 1
        while left > 0 and (block := os.read(fd, min(1 << 20, left))):
            chunks.append(block)
            left -= len(block)
        if left <= 0:
            raise NotRegularFileError(f"{path} grew past the {max_bytes / 2**20:.0f} MB limit while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of ``path`` (following links) if it is a regular file, else :class:`NotRegularFileError`;
    never opens it (for listings that read the file later with :func:`read_regular`)."""
    import stat

    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{path} is {_kind_of(st.st_mode)}, not a regular file (refused)")
    return st


def os_error_of(exc: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """The ``OSError`` a library's own exception wraps, or None: safetensors raises ``SafetensorError('Error
    while serializing: I/O error: No space left on device (os error 28)')`` for a full disk, which must
    reach the user as the full-disk message (what, where, what to do), not as an unexpected error."""
    import re

    if isinstance(exc, OSError):
        return exc
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if not m:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code), *([str(path)] if path is not None else []))


#: control characters (C0, DEL, C1): a terminal obeys them (ESC [2J clears the screen, ESC ] 8 makes
#: a link), so no string from a user or a study is printed with them
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(value: str) -> bool:
    return bool(_CONTROL.search(value))


def printable(value: Any) -> str:
    """``value`` as one printable line: whitespace runs (newlines, tabs) become one space and every
    other control character is dropped. Everything pitune prints from a user or a study goes through it."""
    return _CONTROL.sub("", " ".join(str(value).split()))


#: the exit status of a command whose reader went away (``pitune ... | head``): 128 + SIGPIPE
BROKEN_PIPE_EXIT = 141


def stdout_closed() -> int:
    """After a ``BrokenPipeError`` on stdout (``| head`` read what it wanted): point stdout at
    /dev/null so that nothing more is written or reported (not even at exit), and return
    :data:`BROKEN_PIPE_EXIT`. Nothing is printed: the reader chose to stop."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return BROKEN_PIPE_EXIT


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of an append-only JSONL log; a line cut by a crash is skipped (its job is redone)."""
    import json

    records = []
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def progress(iterable: Iterable | None = None, **kw: Any):
    """The one progress bar: tqdm on stderr, silenced by ``PITUNE_QUIET=1``."""
    from tqdm.auto import tqdm

    kw.setdefault("disable", quiet())
    return tqdm(iterable, **kw)


class StageBars:
    """Progress of a job that goes through named stages (``on_step({"stage", "step", "total", "loss"})``,
    the callback every trainer and job here takes): one bar per stage, each with that stage's own
    counts, so a bar never sits at another stage's step and its rate and ETA are the stage's own. A
    stage that reports no counts shows its elapsed time; a new stage closes the previous bar. The
    stage ``"train"`` is shown as ``train_label``."""

    def __init__(self, desc: str, train_label: str = "tune", file: Any = None):
        self.desc, self.train_label, self.file = desc, train_label, file
        self.bar = None
        self.stage: str | None = None
        self.stages: list[str] = []  # in the order they came, for the caller (and tests)

    def __call__(self, p: dict) -> None:
        stage = p.get("stage")
        if not stage:
            return
        total = p.get("total") if isinstance(p.get("total"), int) and p["total"] > 0 else None
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.stages.append(stage)
            name = self.train_label if stage == "train" else stage
            self.bar = progress(desc=f"{self.desc}: {name}", total=total, unit="step" if total else "it",
                                file=self.file, leave=True,
                                bar_format=None if total else "{desc} [{elapsed}]")
        elif total is not None and self.bar.total != total:
            self.bar.total = total
        step = p.get("step")
        if isinstance(step, int) and step > self.bar.n:
            self.bar.update(step - self.bar.n)
        if isinstance(p.get("loss"), (int, float)):
            self.bar.set_postfix(loss=f"{p['loss']:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- names from outside

PLAN_NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"


def check_plan_name(name: Any) -> str:
    """``name`` if it is a valid plan name (it becomes a folder of the study), else a ``ValueError``."""
    import re

    if not isinstance(name, str) or not re.fullmatch(PLAN_NAME_PATTERN, name) or ".." in name:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")
        raise ValueError(f"plan name {shown} is not valid: use 1-64 lower-case letters, digits, '_', '-' and '.', "
                         f"starting with a letter or digit")
    return name


# ----------------------------------------------------------------------------- the expert library's gate

#: an expert is offered as a source only if its own validation score beats max(zero-shot, majority)
#: on that split by this much (a fraction: 0.05 = 5 points); issue 27
ADMISSION_MARGIN = 0.05


def admission(meta: dict, margin: float = ADMISSION_MARGIN) -> tuple[bool, str]:
    """Whether an expert (its ``pitune_expert.json``) is offered as a source, and why in one line.

    The expert must beat the better of the backbone's zero-shot score and the majority class on its own
    validation split, in its task's headline metric, by ``margin``: an expert that learned nothing is no
    source (it would otherwise become a hub of the task graph while transferring nothing). Experts
    written before validation baselines were recorded are judged on their test-split baselines, and
    the reason says so. Pure: reads only the dict.
    """
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    metric = meta.get("headline_metric", "accuracy") if isinstance(meta, dict) else "accuracy"

    def get(split: str) -> float | None:
        v = (metrics or {}).get(split)
        v = v.get(metric) if isinstance(v, dict) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    val = get("val")
    if val is None:
        return False, "its metadata records no validation score, so it cannot be checked"
    zs, maj, where = get("zero_shot_val"), get("majority_val"), "val"
    if zs is None or maj is None:
        zs, maj, where = get("zero_shot_test"), get("majority_test"), "test (the expert predates val baselines)"
    if zs is None or maj is None:
        return False, "its metadata records no zero-shot or majority baseline, so it cannot be checked"
    bar = max(zs, maj) + margin
    detail = (f"{metric} on val {100 * val:.1f} vs max(zero-shot {100 * zs:.1f}, majority {100 * maj:.1f}) "
              f"+ {100 * margin:.0f} = {100 * bar:.1f} (baselines from {where})")
    if val >= bar:
        return True, f"admitted: {detail}"
    return False, f"not offered as a source: it did not learn its task ({detail})"
