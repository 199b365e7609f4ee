"""Writers of the study's derived files: expert summary, predict outputs, transfer outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pitune_core.study.read.results import write_matrix_csv
from pitune_core.study.read.tasks_file import task_modalities
from pitune_core.paths import EMBEDDINGS_FILE, GRAPH_FILE, LAYOUT_FILE, LAYOUT_NOTE_FILE, SIMILARITY_COSINE_FILE, SIMILARITY_FILE, StudyPaths
from pitune_core.study.plan import EMBEDDINGS
from pitune_core.spec.vocab import QUALITY_K
from pitune_core.common import admission
from pitune_core.predict.layout import layout_from_similarity, write_layout_csv
from pitune_core.predict.similarity import read_similarity_csv, similarity_matrix, top_k, write_similarity_csv


def expert_dir(root: Path, method: str, task: str) -> Path:
    return StudyPaths(root).expert(method, task)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_expert_summary(root: Path, methods: dict[str, list[str]]) -> None:
    from pitune_core.model.experts import read_expert_meta  # lazy: loads torch

    rows = []
    for m, ts in methods.items():
        for t in ts:
            meta = read_expert_meta(expert_dir(root, m, t))
            mt = meta["headline_metric"]
            rows.append({"task": t, "modality": meta["modality"], "method": m, "metric": mt,
                         "expert": round(meta["metrics"]["test"][mt], 4),
                         "zero_shot": round(meta["metrics"]["zero_shot_test"][mt], 4),
                         "majority": round(meta["metrics"]["majority_test"][mt], 4),
                         "expert_accuracy": round(meta["metrics"]["test"]["accuracy"], 4),
                         "num_train": meta["num_train"], "num_test": meta["num_test"], "steps": meta["steps"],
                         "train_time_s": meta["train_time_s"], "peak_memory_mb": meta["peak_memory_mb"],
                         "admitted": int(admission(meta)[0]), "gate": admission(meta)[1]})
    _write_csv(StudyPaths(root).expert_summary, rows)


def node_attrs(root: Path, method: str, names: list[str]) -> dict[str, dict]:
    """Graph node attributes of ``names``: modality, and the ``method`` expert's test score and
    zero-shot score from ``experts/summary.csv`` (None where the study has no such expert)."""
    summary = {}
    p = StudyPaths(root).expert_summary
    if p.exists():
        with open(p) as f:
            summary = {r["task"]: r for r in csv.DictReader(f) if r["method"] == method}
    modality = task_modalities(StudyPaths(root).tasks_json, names)
    return {n: {"modality": modality[n],
                "accuracy": float(summary[n]["expert"]) if n in summary else None,
                "zero_shot": float(summary[n]["zero_shot"]) if n in summary else None} for n in names}


def write_graph_files(d: Path, names: list[str], S: np.ndarray, attrs: dict[str, dict], note: str = "") -> None:
    """The files the dashboard draws one prediction from: ``similarity.csv`` (symmetric),
    ``graph.json`` (k=3 nearest neighbours, Louvain communities), ``layout.csv`` and its note."""
    from pitune_core.predict.graph import annotate_communities, build_graph, detect_communities, write_graph_json  # lazy: loads networkx

    d.mkdir(parents=True, exist_ok=True)
    write_similarity_csv(d / SIMILARITY_FILE, names, S)
    G = build_graph(names, S, attrs, mode="knn", k=min(3, len(names) - 1))
    annotate_communities(G, detect_communities(G, method="louvain", seed=0))
    write_graph_json(d / GRAPH_FILE, G)
    coords, how = layout_from_similarity(S, seed=0)
    write_layout_csv(d / LAYOUT_FILE, names, coords)
    (d / LAYOUT_NOTE_FILE).write_text((f"{note} " if note else "") + how + "\n")


def _predict_outputs(root: Path, method: str, kind: str) -> None:
    from pitune_core.predict.embeddings import load_embeddings  # lazy: loads torch

    d = StudyPaths(root).embedding_dir(method, kind)
    emb = load_embeddings(d / EMBEDDINGS_FILE)
    sim_kind = "fisher" if kind.startswith("fisher") else "cosine"
    S = similarity_matrix(emb.groups, emb.names, kind=sim_kind)
    if kind == "fisher":  # plain cosine alongside the paper's measure is only interesting for Fisher
        write_similarity_csv(d / SIMILARITY_COSINE_FILE, emb.names, similarity_matrix(emb.groups, emb.names, kind="cosine"))
    write_graph_files(d, emb.names, S, node_attrs(root, method, emb.names))


def fisher_stability(method_dir: Path, k: int = QUALITY_K) -> dict:
    """Overlap of each task's top-k Fisher neighbours computed with N and with 2N samples."""
    n1, S1 = read_similarity_csv(method_dir / "fisher" / SIMILARITY_FILE)
    n2, S2 = read_similarity_csv(method_dir / "fisher_2n" / SIMILARITY_FILE)
    k = min(k, len(n1) - 1)
    overlaps = {t: len({a for a, _ in top_k(S1, n1, t, k)} & {a for a, _ in top_k(S2, n2, t, k)}) / k for t in n1}
    iu = np.triu_indices(len(n1), 1)
    from scipy.stats import spearmanr

    rho = float(spearmanr(S1[iu], S2[iu]).statistic) if len(iu[0]) > 2 else float("nan")
    return {"k": k, "mean_topk_overlap": float(np.mean(list(overlaps.values()))), "per_task": overlaps,
            "spearman_all_pairs": rho}


def write_transfer_outputs(root: Path, tasks: list[str], k: int) -> dict:
    from pitune_core.predict.embeddings import random_embedding  # lazy: loads torch
    from pitune_core.study.transfer import (  # lazy: loads torch
        gain_matrices,
        prediction_quality,
        summarise_quality,
    )

    per_seed = gain_matrices(StudyPaths(root).transfer_pairs, tasks)
    stacked = np.stack(list(per_seed.values())) if per_seed else np.full((1, len(tasks), len(tasks)), np.nan)
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(stacked), axis=0)
        mean = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
    np.fill_diagonal(mean, np.nan)
    write_matrix_csv(StudyPaths(root).transfer_matrix, tasks, mean)
    sims = {}
    for kind in EMBEDDINGS:
        names, S = read_similarity_csv(StudyPaths(root).similarity_csv("lora", kind))
        sims[kind] = (names, S)
    names = sims["fisher"][0]
    rnd = random_embedding(names, seed=0)
    sims["random"] = (names, similarity_matrix(rnd.groups, names, kind="cosine"))
    quality = {emb: {seed: prediction_quality(S, nm, G, tasks, k=k) for seed, G in per_seed.items()}
               for emb, (nm, S) in sims.items()}
    summary = summarise_quality(quality, k=k)
    (StudyPaths(root).predict_quality).write_text(json.dumps(summary, indent=2))
    return summary
