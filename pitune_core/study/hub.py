"""A synthetic adapter hub: thousands of tasks made from the study's real Fisher embeddings.

Nobody has 10,000 trained experts on this backbone, but the hub-scale parts of pitune (top-k
neighbours, the task graph, the dashboard) need to be measured at that size on data that looks
like the real thing. :func:`synth_fisher` makes each synthetic task from one or two *real* Fisher
vectors of the shipped study: a geometric mix ``(1 - alpha) log e_p + alpha log e_q`` of a parent
``p`` and a second task ``q``, plus per-element log-normal noise and a random log-scale per
parameter group (which the Fisher measure ignores, so it tests that). Everything is seeded: the
same ``(n, seed)`` gives the same hub on any machine; rows are generated in fixed blocks with
their own seeds, so memory stays at the output's size.

:func:`write_hub_study` writes a study directory the dashboard opens (``pitune hub synth``):
``tasks.json`` (modality of the parent, a description saying how the task was made),
``experts/summary.csv`` and one ``experts/lora/<task>/pitune_expert.json`` marker per task (no
weights: a synthetic task has no expert, and the marker says so), ``predict/lora/fisher/``
with ``neighbors.csv`` (exact top-k of every task, found with
:func:`pitune_core.predict.neighbors.top_k_neighbours`), ``similarity.csv`` (the full exact
matrix, only up to ``dense_max`` tasks: 10,000 tasks would be 2 GB of CSV), ``layout.csv``
(UMAP of the kNN graph) and a ``manifest.json`` with the sha256 of every file, so
``pitune verify DIR --no-load`` passes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from pitune_core.paths import REPO_ROOT
from pitune_core.predict.neighbors import top_k_neighbours, write_neighbors_csv
from pitune_core.spec.vocab import EXPERT_META_FILE, NEIGHBORS_FILE  # noqa: F401  (NEIGHBORS_FILE re-exported)
from pitune_core.common import sha256_file
from pitune_core.predict.embedding_file import read
from pitune_core.predict.layout import write_layout_csv
from pitune_core.predict.neighbors import Neighbours, _rank_of_names, _select
from pitune_core.predict.similarity import fisher_similarity, write_similarity_csv

__all__ = ["HubConfig", "load_real_fisher", "synth_fisher", "write_hub_study", "NEIGHBORS_FILE"]

#: the real LoRA Fisher embeddings the hub is made from
REAL_FISHER = REPO_ROOT / "precomputed" / "predict" / "lora" / "fisher" / "embeddings.safetensors"
REAL_TASKS = REPO_ROOT / "precomputed" / "tasks.json"
#: at most this many tasks in a hub (10x the issue's 10,000; memory grows as n x 295 kB)
MAX_TASKS = 100_000
_BLOCK = 256


@dataclass
class HubConfig:
    """How a synthetic hub is made (written into its manifest)."""

    n: int = 1000
    seed: int = 0
    #: std of the per-element log-normal noise; for scale, log(Fisher_N / Fisher_2N) of the real
    #: tasks has a per-group std of 0.45 (median), i.e. ~0.37 of estimation noise per estimate
    noise: float = 0.5
    mix: float = 0.5         #: alpha ~ U(0, mix) weight of the second task in the geometric mix
    group_scale: float = 1.0 #: std of the random log-scale of each (task, group)
    k: int = 10              #: neighbours stored per task
    dense_max: int = 2000    #: write the full similarity.csv up to this many tasks


def load_real_fisher(path: str | os.PathLike = REAL_FISHER) -> tuple[list[str], np.ndarray, list[int]]:
    """``(names, E (m, d) float32, group sizes)`` of a pitune embeddings file (safetensors, no pickle)."""
    names, E, groups, _ = read(path, dtype=np.float32)
    sizes = [int(s) for _, s in groups]
    if E.ndim != 2 or sum(sizes) != E.shape[1] or not np.isfinite(E).all() or (E < 0).any():
        raise ValueError(f"{path}: expected finite, non-negative Fisher vectors whose groups add up to d")
    return names, E, sizes


def _plan(m: int, cfg: HubConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 0])
    parent = rng.integers(m, size=cfg.n)
    other = rng.integers(m, size=cfg.n)
    alpha = rng.uniform(0.0, cfg.mix, size=cfg.n)
    parent[:min(m, cfg.n)] = np.arange(min(m, cfg.n))  # the first m tasks are the real ones ...
    alpha[:min(m, cfg.n)] = 0.0                          # ... unmixed and (below) unperturbed
    return parent, other, alpha


def synth_fisher(real: np.ndarray, group_sizes: list[int], cfg: HubConfig,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """``(E (n, d) float32, plan)``: the hub's Fisher vectors and how each row was made.

    Rows ``0..m-1`` are the ``m`` real vectors themselves; every other row ``i`` is
    ``exp((1 - a_i) log e_p + a_i log e_q + noise * N(0, 1) + s_ig)`` with ``p`` its parent, ``q`` a
    second real task, ``a_i ~ U(0, mix)``, and ``s_ig ~ N(0, group_scale)`` one log-scale per group.
    ``out`` may be a preallocated (e.g. memory-mapped) float32 array of shape (n, d).
    """
    if not 1 <= cfg.n <= MAX_TASKS:
        raise ValueError(f"n must be between 1 and {MAX_TASKS}, got {cfg.n}")
    for name in ("noise", "mix", "group_scale"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    m, d = real.shape
    tiny = np.float32(np.finfo(np.float32).tiny)
    L = np.log(np.maximum(real.astype(np.float32), tiny))
    parent, other, alpha = _plan(m, cfg)
    sizes = np.asarray(group_sizes)
    E = np.empty((cfg.n, d), dtype=np.float32) if out is None else out
    if E.shape != (cfg.n, d):
        raise ValueError(f"out has shape {E.shape}, expected {(cfg.n, d)}")
    for b, i0 in enumerate(range(0, cfg.n, _BLOCK)):
        i1 = min(cfg.n, i0 + _BLOCK)
        rng = np.random.default_rng([cfg.seed, 1, b])
        a = alpha[i0:i1, None].astype(np.float32)
        blk = (1 - a) * L[parent[i0:i1]] + a * L[other[i0:i1]]
        blk += np.float32(cfg.noise) * rng.standard_normal((i1 - i0, d), dtype=np.float32)
        blk += np.repeat(rng.normal(0.0, cfg.group_scale, size=(i1 - i0, len(sizes))).astype(np.float32),
                         sizes, axis=1)
        real_rows = np.arange(i0, i1) < m
        blk[real_rows] = L[np.arange(i0, i1)[real_rows]]
        np.exp(blk, out=blk)
        E[i0:i1] = blk
    return E, {"parent": parent, "other": other, "alpha": alpha}


def synth_names(real_names: list[str], plan: dict) -> list[str]:
    m = len(real_names)
    out = []
    for i, (p, q, a) in enumerate(zip(plan["parent"], plan["other"], plan["alpha"])):
        out.append(real_names[p] if i < m else f"hub{i:05d}_{real_names[p]}")
    return out


# --------------------------------------------------------------------------------------------
# files


def _sha256(p: Path) -> str:
    return sha256_file(p)


def write_hub_study(out: str | os.PathLike, cfg: HubConfig, real: str | os.PathLike = REAL_FISHER,
                    tasks_json: str | os.PathLike = REAL_TASKS, say: Callable[[str], None] = print,
                    method: str = "auto") -> dict:
    """Generate a hub of ``cfg.n`` tasks and write it as a study directory at ``out`` (which must
    not exist or be empty); returns its manifest. See the module docstring for the files."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory; choose a new --out")
    if not 2 <= cfg.n <= MAX_TASKS:
        raise ValueError(f"n must be between 2 and {MAX_TASKS}, got {cfg.n}")
    if not 1 <= cfg.k < cfg.n:
        raise ValueError(f"k must be between 1 and n - 1 = {cfg.n - 1}, got {cfg.k}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    real_names, R, sizes = load_real_fisher(real)
    meta = {x["name"]: x for x in json.loads(Path(tasks_json).read_text(encoding="utf-8"))}
    say(f"generating {cfg.n} Fisher vectors (d = {R.shape[1]}, {len(sizes)} groups) from {len(real_names)} real tasks")
    E, plan = synth_fisher(R, sizes, cfg)
    names = synth_names(real_names, plan)
    seconds["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    S = None
    if cfg.n <= cfg.dense_max:
        # small enough for the full exact matrix: write it, and take the top-k from it (exact)
        say(f"full {cfg.n} x {cfg.n} exact similarity matrix")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        S = fisher_similarity({str(g): E[:, bounds[g]:bounds[g + 1]] for g in range(len(sizes))}, device="cpu")
        seconds["similarity"] = time.perf_counter() - t
        M = S.copy()
        np.fill_diagonal(M, -np.inf)
        cand = np.argsort(-M, axis=1, kind="stable")[:, :min(cfg.n - 1, cfg.k + 32)]
        idx, val = _select(cand, np.take_along_axis(M, cand, axis=1), cfg.k, _rank_of_names(names))
        nb = Neighbours(names, idx, val, "exact", {"seconds": {"exact": seconds["similarity"]}})
    else:
        say(f"top-{cfg.k} neighbours of every task ({method})")
        nb = top_k_neighbours(E, names, k=cfg.k, group_sizes=sizes, method=method, seed=cfg.seed)
        seconds["neighbours"] = time.perf_counter() - t
    del E

    t = time.perf_counter()
    say("2-D layout (UMAP of the kNN graph)")
    coords, note = _knn_layout(nb.index, nb.similarity, cfg.seed)
    seconds["layout"] = time.perf_counter() - t

    out.mkdir(parents=True, exist_ok=True)
    pred = out / "predict" / "lora" / "fisher"
    pred.mkdir(parents=True)
    write_neighbors_csv(pred / NEIGHBORS_FILE, names, nb.index, nb.similarity)
    if S is not None:
        write_similarity_csv(pred / "similarity.csv", names, S)
    write_layout_csv(pred / "layout.csv", names, coords)
    (pred / "layout_note.txt").write_text(note + "\n", encoding="utf-8")
    tasks = []
    for i, name in enumerate(names):
        p, q, a = real_names[plan["parent"][i]], real_names[plan["other"][i]], float(plan["alpha"][i])
        base = meta.get(p, {})
        desc = (f"real task {p}" if i < len(real_names) else
                f"synthetic: Fisher of {p} mixed with {q} (alpha {a:.2f}), noise {cfg.noise}")
        tasks.append({"name": name, "modality": base.get("modality"), "num_classes": base.get("num_classes"),
                      "metric": base.get("metric", "accuracy"), "source": "synthetic hub" if i >= len(real_names)
                      else base.get("source", ""), "description": desc, "num_train": base.get("num_train"),
                      "parent": p, "mixed_with": q if i >= len(real_names) else None, "alpha": a})
    (out / "tasks.json").write_text(json.dumps(tasks, indent=0), encoding="utf-8")
    exp = out / "experts"
    (exp / "lora").mkdir(parents=True)
    with open(exp / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "method", "expert", "zero_shot", "majority", "metric"])
        for x in tasks:
            w.writerow([x["name"], "lora", "", "", "", x["metric"]])
    for x in tasks:
        d = exp / "lora" / x["name"]
        d.mkdir()
        (d / EXPERT_META_FILE).write_text(json.dumps(
            {"task": x["name"], "method": "lora", "synthetic": True,
             "note": "a synthetic hub task: it has a Fisher embedding but no trained expert"}), encoding="utf-8")
    files = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"format": "pitune-study/1", "kind": "synthetic-hub",
                "command": f"pitune hub synth --n {cfg.n} --seed {cfg.seed} --out {out}",
                "hub": {**asdict(cfg), "method": nb.method, "neighbours_info": _plain(nb.info),
                        "source": str(Path(real).resolve().relative_to(REPO_ROOT)
                                      if Path(real).resolve().is_relative_to(REPO_ROOT) else real)},
                "seeds": {"study": cfg.seed}, "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "stage_seconds": seconds, "hardware": {"cpu": platform.processor() or platform.machine(),
                                                       "cpu_count": os.cpu_count()},
                "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    return manifest


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _knn_layout(index: np.ndarray, sim: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates from the kNN table: UMAP on the precomputed neighbour graph (distance
    1 - similarity) for n >= 16, spectral otherwise; deterministic for ``seed``."""
    import warnings

    n, k = index.shape
    if n < 16:
        import networkx as nx

        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_weighted_edges_from((i, int(j), float(s)) for i in range(n) for j, s in zip(index[i], sim[i]))
        pos = nx.spring_layout(G, seed=seed)
        return np.array([pos[i] for i in range(n)]), "force-directed layout of the kNN graph"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numba
        import umap

        threads = numba.get_num_threads()
        try:
            # the kNN table includes each point itself first, as UMAP expects
            idx = np.concatenate([np.arange(n)[:, None], index], axis=1)
            dist = np.concatenate([np.zeros((n, 1)), np.clip(1.0 - sim, 0.0, None)], axis=1).astype(np.float32)
            model = umap.UMAP(n_components=2, n_neighbors=k + 1, metric="precomputed", random_state=seed,
                              precomputed_knn=(idx, dist, None), n_jobs=1, init="spectral")
            # UMAP wants a data matrix even with a precomputed kNN; a sparse one of the right shape
            # is enough (only the graph is used)
            from scipy.sparse import csr_matrix

            rows = np.repeat(np.arange(n), k)
            X = csr_matrix((np.clip(1.0 - sim, 1e-6, None).ravel(), (rows, index.ravel())), shape=(n, n))
            X = X.maximum(X.T).tocsr()  # UMAP checks that a precomputed distance matrix is symmetric
            coords = model.fit_transform(X)
        finally:
            numba.set_num_threads(threads)
    return np.asarray(coords, dtype=np.float64), f"UMAP of the top-{k} Fisher neighbour graph (seed={seed})"
