"""Small helpers every layer shares: file hashing, progress bars, and the parsers of CLI values.

Each is the single owner of its rule: the shots parser is used by the CLI, the study reader, the
dashboard and the run configs alike, so ``"full"``, ``16`` and ``"abc"`` mean (or fail) the same
everywhere. No torch here.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

#: the expert types pitune trains (peft methods); order = display order
EXPERT_TYPES = ("lora", "prompt", "ia3")
EXPERT_TYPE_LABELS = {"lora": "LoRA", "prompt": "prompt tuning", "ia3": "IA³"}
MODALITIES = ("language", "vision", "vision-language")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def quiet() -> bool:
    """``PITUNE_QUIET=1`` silences every progress bar."""
    return os.environ.get("PITUNE_QUIET") == "1"


def progress(iterable: Iterable | None = None, **kw: Any):
    """The one progress bar: tqdm on stderr, silenced by ``PITUNE_QUIET=1``."""
    from tqdm.auto import tqdm

    kw.setdefault("disable", quiet())
    return tqdm(iterable, **kw)


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


def check_expert_type(name: str) -> str:
    if name not in EXPERT_TYPES:
        raise ValueError(f"unknown expert type {name!r}; choose one of {', '.join(EXPERT_TYPES)}")
    return name
