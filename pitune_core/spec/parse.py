"""The parsers of values that come from outside (CLI flags, widgets, job configs, files): each rule
once, so ``"full"``, ``16`` and ``"abc"`` mean (or fail) the same everywhere, with one-line errors.

Plain Python: no torch, no numpy, nothing else of the project.
"""

from __future__ import annotations

import re
from typing import Any

from pitune_core.spec.vocab import EXPERT_TYPES

#: a task name: lower-case letters, digits and underscores, starting with a letter (it becomes a
#: directory name, a CSV cell and a dashboard label, so nothing else is allowed in)
TASK_NAME_PATTERN = r"[a-z][a-z0-9_]{0,63}"


def parse_shots(value: Any) -> int | None:
    """Examples per class: ``"full"`` / ``None`` / ``""`` -> None (all training data), else an int >= 1.

    Raises ``ValueError`` with a readable message (never the raw ``int()`` one).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "full", "none", "all")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"shots must be a whole number of examples per class or 'full', got {value!r}")
    try:
        shots = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"shots must be a whole number of examples per class or 'full', got {value!r}") from None
    if shots < 1:
        raise ValueError(f"shots must be at least 1 (or 'full'), got {value!r}")
    return shots


def parse_shots_list(text: str) -> list[int | None]:
    """``"4,16,full"`` -> ``[4, 16, None]``."""
    items = [s for s in (p.strip() for p in str(text).split(",")) if s]
    if not items:
        raise ValueError("give at least one shots value, e.g. 4,16,full")
    return [parse_shots(s) for s in items]


def parse_int_list(text: str, what: str = "seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` with a readable error for anything else."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"{what} must be comma-separated whole numbers, e.g. 0,1,2; got {part!r}") from None
    if not out:
        raise ValueError(f"give at least one of the {what}, e.g. 0,1,2")
    return out


def check_expert_type(name: Any) -> str:
    if name not in EXPERT_TYPES:
        raise ValueError(f"unknown expert type {name!r}; choose one of {', '.join(EXPERT_TYPES)}")
    return name


def check_task_name(name: Any, what: str = "task name") -> str:
    """``name`` if it is a valid task identifier, else a readable ``ValueError``.

    Every place a task name enters pitune (the CLI, ``tasks.json``, ``similarity.csv``, a run's
    config, a manifest) goes through this, so a name can never be a path (``../x``), markup
    (``<img>``) or a control character.
    """
    if not isinstance(name, str) or not re.fullmatch(TASK_NAME_PATTERN, name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")
        raise ValueError(f"{what} {shown} is not a task identifier: use 1-64 lower-case letters, digits and "
                         f"underscores, starting with a letter")
    return name


def parse_sources(value: Any, k: int | None = None) -> list[str] | None:
    """``"a,b,c"`` (or a list) -> ``["a", "b", "c"]``: task identifiers, no duplicates.

    ``None`` / ``""`` -> ``None`` (the sources are then the top-k predicted ones). With ``k``, the
    number of names must be ``k``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    names = [check_task_name(p, "source") for p in parts if p != ""]
    if not names:
        return None
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"source(s) named more than once: {', '.join(dup)}; name each source once")
    if k is not None and k != len(names):
        raise ValueError(f"--k {k} but {len(names)} sources were named; leave out --k or name exactly {k}")
    return names


def check_not_own_source(target: str, sources: Any, error: type[Exception] = ValueError) -> None:
    """A target is never one of its own sources (``error``: the exception class the caller raises)."""
    if sources and target in sources:
        raise error(f"the target {target!r} cannot be one of its own sources")


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    """A whole number (not a bool), at least ``minimum``, else one line."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def as_arg_type(parse, name: str):
    """An argparse ``type=`` from one of these parsers: its readable message, not "invalid value"."""
    import argparse

    def convert(value):
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


#: ``--shots`` for argparse: ``full`` or a whole number >= 1, with parse_shots's message
shots_arg = as_arg_type(parse_shots, "shots")
