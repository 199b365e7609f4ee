"""The task-embedding file (``pitune-embeddings/1``): one reader and one writer for its format.

Why a module of its own: the file is read by the torch side (``embeddings.load_embeddings``, the
protocol's source rankings) and by torch-free code (the synthetic hub generator), and both used to
parse it by hand. It is a safetensors file (never a pickle): one float32 vector per task, named by
the task, with metadata ``names`` (row order), ``groups`` (``[[parameter group, size], ...]`` in
vector order), ``meta`` (how it was made) and ``format``. Writes are atomic
(:func:`pitune_core.common.write_atomic`), so concurrent shards never see a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pitune_core.common import write_atomic

FORMAT = "pitune-embeddings/1"


class EmbeddingFileError(ValueError):
    """An embeddings file that cannot be read (the message names the file and why)."""


def write(path: str | os.PathLike, names: list[str], flat: np.ndarray, groups: list[tuple[str, int]],
          meta: dict | None = None) -> Path:
    """Write ``flat`` (n_tasks, d), row i the vector of ``names[i]``, split into ``groups`` in order."""
    from safetensors.numpy import save

    flat = np.asarray(flat)
    if flat.ndim != 2 or flat.shape[0] != len(names) or sum(int(s) for _, s in groups) != flat.shape[1]:
        raise EmbeddingFileError(f"{path}: {flat.shape} vectors do not match {len(names)} names and groups adding "
                                 f"up to {sum(int(s) for _, s in groups)}")
    if len(set(names)) != len(names):
        raise EmbeddingFileError(f"{path}: duplicate task names")
    tensors = {n: np.ascontiguousarray(flat[i], dtype=np.float32) for i, n in enumerate(names)}
    metadata = {"format": FORMAT, "groups": json.dumps([[g, int(s)] for g, s in groups]),
                "names": json.dumps(list(names)), "meta": json.dumps(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, save(tensors, metadata=metadata))


def read(path: str | os.PathLike, dtype=np.float64) -> tuple[list[str], np.ndarray, list[tuple[str, int]], dict]:
    """``(names, flat (n_tasks, d) of dtype, groups [(group, size), ...], meta)``; one
    :class:`EmbeddingFileError` for anything unreadable or inconsistent."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            md = f.metadata() or {}
            names = json.loads(md["names"])
            groups = [(str(g), int(s)) for g, s in json.loads(md["groups"])]
            meta = json.loads(md.get("meta", "{}"))
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
                raise ValueError("'names' is not a non-empty list of task names")
            flat = np.stack([f.get_tensor(n) for n in names]).astype(dtype)
    except Exception as e:  # noqa: BLE001 - one clear message for any unreadable file
        raise EmbeddingFileError(f"{path} is not a readable pitune embeddings file ({type(e).__name__}: {e})") from None
    if flat.ndim != 2 or sum(s for _, s in groups) != flat.shape[1]:
        raise EmbeddingFileError(f"{path}: group sizes do not add up to the stored vectors")
    if not isinstance(meta, dict):
        raise EmbeddingFileError(f"{path}: 'meta' is not an object")
    return names, flat, groups, meta
