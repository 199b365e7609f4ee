"""Put a user task on a study's task graph, without recomputing (or touching) the study.

Why this path: a new target has no expert in the study, and everything known about it must come
from its own data. So the task gets exactly the treatment a few-shot π-Tuning run gives its target
(:func:`pitune_core.tune.baselines.target_side`): its own small expert trained on its (few-shot)
training examples only, with the share of the run's step budget a run spends on it, then the
diagonal Fisher of that expert on the same examples. Its similarity to every expert of the study is
π-Tuning's Fisher similarity between that new row and the study's stored rows of
``predict/METHOD/fisher/embeddings.safetensors`` (the study's own matrix is read, never recomputed
or rewritten), and its top-k sources follow from that row, so a run with the same shots and seed
picks the same sources.

Its map position is *transformed into the existing layout*, not recomputed: the weighted mean of
the positions of its nearest tasks (distance ``1 - similarity``), with UMAP's fuzzy membership
weights (``smooth_knn_dist``), which is how umap-learn's ``transform`` initialises a new point;
the study's layout stays exactly as shipped.

When the study's default ranking is a predictor graph (:mod:`pitune_core.study.predictor_graphs`,
chosen by its ground truth), the task is placed there too: that predictor's row computed from the
same examples, as percentiles over the graph's tasks, so the dashboard's first page shows it.

Everything is written beside the study, in the user task store
(``TASK/placed/<study id>/<method>-<embedding>/``: ``placement.json``, ``embedding.safetensors``,
``expert/``; a predictor graph's folder holds its ``placement.json`` only), atomically;
``precomputed/`` is never written, so ``pitune verify`` still passes. The readers of those records
(:mod:`pitune_core.study.read.placed`, no torch) merge placed tasks into what the dashboard, ``top-k``
and ``transfer`` see.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from pitune_core.data.user_tasks import find_user_task
from pitune_core.common import clean_stale_tmp, replace_dir, tmp_prefix
from pitune_core.paths import StudyPaths, cache_dir
from pitune_core.spec.configs import PlaceConfig  # noqa: F401  (re-exported: the placement's settings)
from pitune_core.spec.vocab import EXPERT_TYPES, PREDICTOR_PREFIX
from pitune_core.study.read.placed import EMBEDDING_FILE, PLACEABLE, PLACEMENT_FILE, PLACEMENT_FORMAT, placement_dir, study_id
from pitune_core.data.tasks import TaskDataError
from pitune_core.predict.layout import read_layout_csv
from pitune_core.predict.quality import predictor_of
from pitune_core.predict.similarity import read_similarity_csv
from pitune_core.study.read.reader import Study
from pitune_core.study.verify import require_verified

LAYOUT_NEIGHBOURS = 15  # the study's UMAP n_neighbors (predict/*/layout_note.txt)


class PlacementError(ValueError):
    """A task that cannot be placed on this study (the message says why and what to do)."""


# ----------------------------------------------------------------------------- maths (numpy only)

def membership_weights(dist: np.ndarray, n_neighbors: int = LAYOUT_NEIGHBOURS, iters: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's fuzzy membership of a new point to its nearest neighbours: ``(indices, weights)``.

    As umap-learn's ``smooth_knn_dist`` (local connectivity 1): ``rho`` is the nearest distance and
    ``sigma`` is found by bisection so that the memberships of the other neighbours sum to
    ``log2(k)``; a neighbour at distance d has weight ``exp(-max(d - rho, 0) / sigma)``.
    """
    dist = np.asarray(dist, dtype=np.float64)
    k = max(1, min(int(n_neighbors), dist.shape[0]))
    idx = np.argsort(dist, kind="stable")[:k]
    d = dist[idx]
    rho = d[0]
    target = math.log2(k) if k > 1 else 1.0
    lo, hi, sigma = 0.0, np.inf, 1.0
    for _ in range(iters):
        psum = float(np.sum(np.exp(-np.maximum(d[1:] - rho, 0.0) / sigma)))
        if abs(psum - target) < 1e-5:
            break
        if psum > target:
            hi = sigma
            sigma = (lo + hi) / 2
        else:
            lo = sigma
            sigma = sigma * 2 if hi == np.inf else (lo + hi) / 2
    sigma = max(sigma, 1e-3 * float(np.mean(d)) if np.mean(d) > 0 else 1e-12)
    return idx, np.exp(-np.maximum(d - rho, 0.0) / sigma)


def transform_position(similarities: np.ndarray, coords: np.ndarray,
                       n_neighbors: int = LAYOUT_NEIGHBOURS) -> tuple[np.ndarray, list[int], list[float]]:
    """A new task's map position in an existing layout: the membership-weighted mean of its
    nearest tasks' positions (umap-learn's ``transform`` initialisation). Returns ``(xy, neighbour
    rows, weights)``."""
    sims = np.asarray(similarities, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (sims.shape[0], 2):
        raise PlacementError(f"layout has {coords.shape[0]} points but there are {sims.shape[0]} similarities")
    idx, w = membership_weights(np.clip(1.0 - sims, 0.0, None), n_neighbors)
    xy = (w[:, None] * coords[idx]).sum(0) / w.sum()
    return xy, idx.tolist(), w.tolist()


# ----------------------------------------------------------------------------- placing (torch)

def _study_embeddings(study: Path, method: str, embedding: str):
    from pitune_core.predict.embeddings import load_embeddings  # lazy: loads torch

    sp = StudyPaths(study)
    f = sp.embedding_dir(method, embedding) / "embeddings.safetensors"
    if not f.is_file():
        raise PlacementError(f"study {study} has no {method} {embedding} embeddings ({f} is missing); "
                             f"choose another expert type or rebuild the study")
    emb = load_embeddings(f)
    names, _ = read_similarity_csv(sp.similarity_csv(method, embedding))
    if list(names) != list(emb.names):
        raise PlacementError(f"{f} and its similarity.csv list different tasks; the study is inconsistent "
                             f"(run `pitune verify {study}`)")
    return emb


def check_place(task: str, study: str | os.PathLike, cfg: PlaceConfig):
    """Cheap checks before anything trains: ``(spec, data, embeddings)``; raises a clear error."""
    if cfg.embedding not in PLACEABLE:
        raise PlacementError(f"a task is placed by its {', '.join(PLACEABLE)} embedding, not {cfg.embedding!r}")
    if cfg.method not in EXPERT_TYPES:
        raise PlacementError(f"unknown expert type {cfg.method!r}; choose {', '.join(EXPERT_TYPES)}")
    spec = find_user_task(task)
    if spec is None:
        raise PlacementError(f"no user task named {task!r}; add it with `pitune task add {task} ...` "
                             f"(built-in tasks are on the graph already)")
    study = Path(study).expanduser().resolve()
    if not study.is_dir():
        raise PlacementError(f"study {study} does not exist")

    require_verified(study, "task place")  # as `pitune transfer` does: the manifest first, bounded
    emb = _study_embeddings(study, cfg.method, cfg.embedding)
    if cfg.k < 1 or cfg.k > len(emb.names):
        raise PlacementError(f"k={cfg.k} is out of range: the study has {len(emb.names)} {cfg.method} experts")
    data = spec.load()
    if cfg.shots is not None:
        try:
            data.few_shot(int(cfg.shots), seed=cfg.seed)
        except TaskDataError as e:
            raise PlacementError(str(e)) from None
    return spec, data, emb


def place_task(task: str, study: str | os.PathLike, cfg: PlaceConfig | None = None,
               on_progress: Callable[[dict], None] | None = None, backbone=None) -> dict:
    """Embed the task from its own (few-shot) data exactly as a few-shot π-Tuning run does
    (:func:`pitune_core.tune.baselines.target_side`: own expert on the shots, its Fisher on the
    shots, Fisher similarity to every source embedding of the study), place it on the map, write
    everything beside the study and return the placement record."""
    import dataclasses

    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.experts import evaluate, load_expert  # lazy: loads torch
    from pitune_core.model.metrics import majority_baseline  # lazy: loads sklearn
    from pitune_core.predict.embeddings import TaskEmbeddings, save_embeddings  # lazy: loads torch
    from pitune_core.study.sources import load_sources  # lazy: loads torch
    from pitune_core.tune.baselines import (DATA_STAGE, Recipe, budget_for, fisher_on, rank_by_embedding, run_data,  # lazy: loads torch
                                            split_budget, target_side)

    cfg = cfg or PlaceConfig()
    t0 = time.time()
    say = on_progress or (lambda p: None)
    say({"stage": "check"})
    spec, data, emb = check_place(task, study, cfg)  # loads the task's data
    study = Path(study).expanduser().resolve()
    sp = StudyPaths(study)
    say({"stage": "load backbone"})
    bb = backbone or UnifiedBackbone.load(sp.backbone)
    if emb.meta.get("backbone_id") and emb.meta["backbone_id"] != bb.backbone_id:
        raise PlacementError(f"the study's embeddings were made on backbone {emb.meta['backbone_id']}, but the "
                             f"loaded one is {bb.backbone_id}; use the study's backbone/")
    recipe = Recipe() if cfg.n_samples is None else Recipe(fisher_max=int(cfg.n_samples))
    src = dataclasses.replace(load_sources(study, cfg.method, cfg.embedding), embeddings=emb)
    say({"stage": DATA_STAGE})
    _, tensors, train_t = run_data(task, bb, cfg.shots, cfg.seed)
    own_steps, _ = split_budget(budget_for(cfg.shots, cfg.seed).steps_for(len(train_t)), recipe)  # as a run's
    if cfg.max_steps is not None:
        own_steps = max(1, min(own_steps, int(cfg.max_steps)))

    final = placement_dir(task, study, cfg.method, cfg.embedding)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(final.parent)  # what a killed placement left behind
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(final.name), dir=final.parent))
    try:
        t1 = time.time()
        side = target_side(task, src, bb, cfg.method, cfg.shots, cfg.seed, own_steps, tmp, recipe, on_step=say)
        t2 = time.time()
        if side.selection != "shots":
            raise PlacementError("the study has no source embeddings to compare the task with")
        say({"stage": "evaluate"})
        model, _ = load_expert(side.own_dir, bb, trainable=True)
        test_metrics = evaluate(bb, model, tensors["test"], spec)
        zero_shot = evaluate(bb, None, tensors["test"], spec)  # the bare backbone, as the study's summary has it
        majority = majority_baseline(data.train.labels, tensors["test"].labels.numpy(), spec.num_classes)
        row = fisher_on(model, bb, spec, train_t, recipe.fisher_max, cfg.seed)  # what the ranking used
        sims_of = dict(rank_by_embedding(task, row, src, include_gated=True))  # beside every task; sources: side.ranking
        names = [n for n in emb.names if n in sims_of]
        sims_a = np.array([sims_of[n] for n in names])
        top = [[n, s] for n, s in side.ranking[:cfg.k]]
        say({"stage": "layout"})
        position, neighbours, note = _layout_position(sp.embedding_dir(cfg.method, cfg.embedding), names, sims_a)
        also, also_failed = [], {}
        for graph in _predictor_graphs(study, cfg):  # the graphs the dashboard opens on, drawn with the task too
            say({"stage": f"rank by {graph}"})
            try:
                drawn = {**src.expert_dirs, **{n: sp.expert(cfg.method, n) for n in src.gated}}  # every study task
                also.append(_place_on_predictor(task, study, graph, cfg, bb, drawn, side.own_dir, tmp / graph, say,
                                                frozenset(src.gated)))
            except (PlacementError, ValueError, RuntimeError) as e:  # the Fisher placement stands; say why not
                also_failed[graph] = " ".join(str(e).split())[:300]
                shutil.rmtree(tmp / graph, ignore_errors=True)
                shutil.rmtree(placement_dir(task, study, cfg.method, graph), ignore_errors=True)  # no stale one
        shutil.move(side.own_dir, tmp / "expert")
        save_embeddings(tmp / EMBEDDING_FILE, TaskEmbeddings([task], {g: row[g][None, :] for g in emb.groups},
                                                             {"kind": "fisher", "method": cfg.method,
                                                              "backbone_id": bb.backbone_id,
                                                              "n_samples": recipe.fisher_max, "seed": cfg.seed,
                                                              "shots": cfg.shots, "examples": len(train_t)}))
        record = {"format": PLACEMENT_FORMAT, "task": task, "modality": spec.modality, "study": str(study),
                  "study_id": study_id(study), "method": cfg.method, "embedding": cfg.embedding,
                  "config": asdict(cfg), "examples_used": int(len(train_t)),
                  "fisher_samples": min(recipe.fisher_max, len(train_t)),
                  "selection": "the task's own expert and Fisher on its (few-shot) training data "
                               "(tune.baselines.target_side, as a few-shot π-Tuning run ranks its sources)",
                  "similarities": dict(zip(names, sims_a.tolist())), "top_k": top, "position": position,
                  "neighbours": neighbours, "layout": note,
                  "also_placed_on": {r["embedding"]: [[n, x] for n, x in r["top_k"]] for r in also},
                  "not_placed_on": also_failed,
                  "expert": {"test": test_metrics, "steps": side.own_steps, "zero_shot": zero_shot,
                             "majority": majority, "metric": spec.metric},
                  "num_train": len(data.train), "num_test": len(data.test),
                  "max_shots": int(np.bincount(data.train.labels, minlength=spec.num_classes).min()),
                  "timings_s": {"embed": round(t2 - t1, 1), "total": round(time.time() - t0, 1)},
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / PLACEMENT_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        for extra in tmp.iterdir():  # only the record, the embedding and the expert are kept
            if extra.name not in (PLACEMENT_FILE, EMBEDDING_FILE, "expert", *(r["embedding"] for r in also)):
                shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink()
        for r in also:  # written before the Fisher record, which is what marks the task placed
            replace_dir(tmp / r["embedding"], placement_dir(task, study, cfg.method, r["embedding"]))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say({"stage": "done"})
    return record


def _layout_position(embedding_dir: Path, names: list[str], sims: np.ndarray) -> tuple[list | None, list, str]:
    """``(position, neighbours, note)`` of a new task in the layout of ``embedding_dir`` (its
    ``layout.csv``), from its similarities ``sims`` to ``names``: :func:`transform_position` over the
    tasks the layout draws; no position when the study has no layout there."""
    lay = embedding_dir / "layout.csv"
    if not lay.is_file():
        return None, [], "the study has no layout for this embedding"
    lnames, coords = read_layout_csv(lay)
    pos_of = {n: i for i, n in enumerate(lnames)}
    keep = [j for j, n in enumerate(names) if n in pos_of]
    xy, nb, w = transform_position(np.asarray(sims)[keep], coords[[pos_of[names[j]] for j in keep]])
    return ([float(xy[0]), float(xy[1])], [[names[keep[i]], round(float(wi), 6)] for i, wi in zip(nb, w)],
            f"transformed into the existing layout (not recomputed): membership-weighted mean of the "
            f"positions of its {len(nb)} nearest tasks (umap-learn's transform initialisation)")


def _predictor_graphs(study: Path, cfg: PlaceConfig) -> list[str]:
    """The predictor graphs a placed task is also drawn on: the study's default ranking (the
    predictor the ground truth found best at few shots, when the study draws it as a graph), so the
    page the dashboard opens on shows the task. Others are not computed (each costs its own rows);
    the Graph tab says which graphs show a placed task."""
    try:
        emb, _ = Study(study).default_embedding(cfg.method)
    except (OSError, ValueError):
        return []
    return [emb] if emb.startswith(PREDICTOR_PREFIX) and StudyPaths(study).similarity_csv(cfg.method, emb).is_file() else []


def _place_on_predictor(task: str, study: Path, graph: str, cfg: PlaceConfig, bb, expert_dirs: dict,
                        own_dir: Path, out: Path, say: Callable[[dict], None] | None = None,
                        gated: frozenset = frozenset()) -> dict:
    """A placement record on a predictor graph (:mod:`pitune_core.study.predictor_graphs`): the
    predictor's row for the task computed from the same examples the Fisher placement used (its own
    expert stands in for a full-data one), as percentiles over the graph's tasks (1 = ranked first).
    The study's graph is symmetrised over both directions; a user task is no one's source, so its
    entries are its own direction only. Its map position is transformed as for Fisher."""
    from pitune_core.predict.predictors import available_examples, predict_row, study_context  # lazy: loads torch
    from pitune_core.study.predictor_graphs import percentiles  # lazy: loads torch

    sp = StudyPaths(study)
    names, _ = read_similarity_csv(sp.similarity_csv(cfg.method, graph))
    experts = {n: Path(d) for n, d in sorted(expert_dirs.items()) if n in names}
    missing = sorted(set(names) - set(experts))
    if missing:
        raise PlacementError(f"{graph} draws {', '.join(missing[:3])} but the study has no {cfg.method} expert for it")
    experts[task] = Path(own_dir)  # the task's own expert, trained on the examples below
    ctx = study_context(study, bb, experts, cfg.method, cache_dir=cache_dir() / "predictors", on_progress=say)
    row = predict_row(predictor_of(graph), available_examples(task, bb, cfg.shots, cfg.seed), ctx)
    pct = dict(zip(ctx.sources_for(task), percentiles(row).tolist()))
    sims = {n: pct[n] for n in names}
    position, neighbours, note = _layout_position(sp.embedding_dir(cfg.method, graph), list(names),
                                                  np.array([sims[n] for n in names]))
    ranked = sorted(((n, v) for n, v in sims.items() if n not in gated), key=lambda x: (-x[1], x[0]))  # sources
    rec = {"format": PLACEMENT_FORMAT, "task": task, "study": str(study), "study_id": study_id(study),
           "method": cfg.method, "embedding": graph, "config": asdict(cfg),
           "selection": f"predictor {predictor_of(graph)} on the task's (few-shot) training data, as percentiles "
                        f"over the graph's tasks; the task's own direction only (no task ranks it as a source)",
           "similarities": sims, "top_k": [[n, s] for n, s in ranked[:cfg.k]], "position": position,
           "neighbours": neighbours, "layout": note,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    (out / PLACEMENT_FILE).write_text(json.dumps(rec, indent=1), encoding="utf-8")
    return rec
