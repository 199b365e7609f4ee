"""Predictions for an imported library, from the adapters' weights alone (no data needed).

Two embeddings that need none of the adapters' training data:

- ``weights``: each adapter's update ``ΔW = B·A`` at every adapted position (layer x module), compared
  by cosine per position and averaged over positions (the paper compares embeddings group by group).
  ΔW is never formed: ``<B_i A_i, B_j A_j>_F = Σ (B_iᵀ B_j) ⊙ (A_i A_jᵀ)`` costs r x r per pair, so a
  20-adapter library is compared in milliseconds. Unlike the raw A and B factors, ΔW does not depend
  on how an update was factorised (two scripts with different seeds give different A for the same ΔW).
- ``arrow``: Arrow's prototypes (Ostapenko et al. 2024, as peft's Arrow routing builds them): the top
  right singular vector of ΔW at each position; adapters compared by the mean absolute cosine of
  their prototypes (a singular vector's sign is arbitrary).

The library's graph, communities and map reuse the study's functions (:mod:`pitune_core.predict.graph`,
:mod:`~pitune_core.predict.layout`, :mod:`~pitune_core.predict.similarity`) and are written where a
study keeps them (``predict/lora/EMBEDDING/``), so the dashboard can read a library like a study.
:func:`import_library` is the whole import: checks, experts, predictions, then one rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pitune_core.model.library import Library, abandon, commit, stage_import
from pitune_core.paths import GRAPH_FILE, LAYOUT_FILE, LAYOUT_NOTE_FILE, SIMILARITY_FILE
from pitune_core.spec.vocab import GRAPH_K
from pitune_core.model.library import LibraryError, adapter_name, find_adapters, open_library, using_base
from pitune_core.predict.layout import layout_from_similarity, write_layout_csv
from pitune_core.predict.similarity import fisher_similarity, read_similarity_csv, top_k, write_similarity_csv

LIBRARY_EMBEDDINGS = ("weights", "arrow")
#: the embedding a library's graph and top-k use by default
DEFAULT_EMBEDDING = "weights"


def _position(tensor_name: str) -> str:
    """A LoRA tensor's adapter position: its module path (A and B of one module share it)."""
    return tensor_name[: tensor_name.index(".lora_")]


def lora_factors(expert_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{position: (A (r, in), B (out, r))}`` of a LoRA expert folder (read with safetensors; the
    folder is one pitune validated, :func:`pitune_core.model.experts.read_expert_meta`)."""
    from safetensors import safe_open

    out: dict[str, list] = {}
    with safe_open(str(Path(expert_dir) / "adapter_model.safetensors"), framework="np") as f:
        for k in sorted(f.keys()):
            pos = _position(k)
            slot = out.setdefault(pos, [None, None])
            slot[0 if ".lora_A." in k else 1] = f.get_tensor(k).astype(np.float64)
    return {p: (a, b) for p, (a, b) in out.items() if a is not None and b is not None}


def factors_of_model(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same as :func:`lora_factors` for a peft model in memory (a target's own expert)."""
    out: dict[str, list] = {}
    for n, p in model.named_parameters():
        if ".lora_A." in n or ".lora_B." in n:
            key = n.replace(".default", "")
            slot = out.setdefault(_position(key), [None, None])
            slot[0 if ".lora_A." in n else 1] = p.detach().double().cpu().numpy()
    return {p: (a, b) for p, (a, b) in out.items() if a is not None and b is not None}


def _stacked(factors: list[dict]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    positions = sorted(factors[0])
    for i, f in enumerate(factors[1:], 1):
        if sorted(f) != positions or any(f[p][0].shape != factors[0][p][0].shape for p in positions):
            raise ValueError(f"adapter {i} has other LoRA positions or ranks than the first; one library holds one")
    A = [np.stack([f[p][0] for f in factors]) for p in positions]  # (n, r, in)
    B = [np.stack([f[p][1] for f in factors]) for p in positions]  # (n, out, r)
    return positions, A, B


def _cosine(G: np.ndarray, eps: float = 1e-30) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(G), 0.0, None))
    denom = np.outer(d, d)
    return np.where(denom > eps, G / np.where(denom > eps, denom, 1.0), 0.0)


def weight_similarity(factors: list[dict]) -> np.ndarray:
    """Cosine of ΔW = B·A per position, averaged over positions, (n, n); an all-zero update (an
    adapter that learned nothing) has similarity 0 to every other one."""
    _, A, B = _stacked(factors)
    S = np.zeros((len(factors), len(factors)))
    for a, b in zip(A, B):
        btb = np.einsum("nor,mos->nmrs", b, b)
        aat = np.einsum("nri,msi->nmrs", a, a)
        S += _cosine((btb * aat).sum(axis=(2, 3)))
    S /= len(A)
    np.fill_diagonal(S, 1.0)
    return (S + S.T) / 2


def arrow_prototypes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The top right singular vector of ΔW = B·A for each adapter, (n, in), via QR of the factors
    (an r x r SVD per adapter, ΔW never formed)."""
    out = np.zeros((a.shape[0], a.shape[2]))
    for i in range(a.shape[0]):
        qb, rb = np.linalg.qr(b[i])  # (out, r), (r, r)
        qa, ra = np.linalg.qr(a[i].T)  # (in, r), (r, r)
        _, s, vt = np.linalg.svd(rb @ ra.T)
        if s[0] > 0:
            out[i] = qa @ vt[0]
    return out


def arrow_similarity(factors: list[dict]) -> np.ndarray:
    """Mean absolute cosine of the adapters' Arrow prototypes over positions, (n, n)."""
    _, A, B = _stacked(factors)
    S = np.zeros((len(factors), len(factors)))
    for a, b in zip(A, B):
        v = arrow_prototypes(a, b)
        S += np.abs(_cosine(v @ v.T))
    S /= len(A)
    np.fill_diagonal(S, 1.0)
    return (S + S.T) / 2


SIMILARITIES: dict[str, Callable[[list[dict]], np.ndarray]] = {"weights": weight_similarity,
                                                                "arrow": arrow_similarity}


def similarity(factors: list[dict], embedding: str = DEFAULT_EMBEDDING) -> np.ndarray:
    if embedding not in SIMILARITIES:
        raise ValueError(f"unknown library embedding {embedding!r}; choose one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[embedding](factors)


def build_predictions(lib: Library, k: int = GRAPH_K) -> dict[str, np.ndarray]:
    """Similarity matrices, kNN graphs with communities and maps of a library, per embedding, written
    under ``LIBRARY/predict/lora/EMBEDDING/``; returns the matrices."""
    factors = [lora_factors(d) for d in lib.expert_dirs().values()]
    out = {}
    for emb in LIBRARY_EMBEDDINGS:
        out[emb] = similarity(factors, emb)
        write_graph(lib, emb, list(lib.adapters), out[emb], k)
    return out


def write_graph(lib: Library, embedding: str, names: list[str], S: np.ndarray, k: int = GRAPH_K) -> None:
    """A similarity matrix, its kNN graph with communities and its map, where a study keeps them."""
    from pitune_core.predict.graph import annotate_communities, build_graph, detect_communities, write_graph_json  # lazy: loads networkx

    d = lib.paths.embedding_dir("lora", embedding)
    d.mkdir(parents=True, exist_ok=True)
    write_similarity_csv(d / SIMILARITY_FILE, names, S)
    if len(names) < 2:
        return
    G = build_graph(names, S, {n: {"modality": "language"} for n in names}, mode="knn", k=min(k, len(names) - 1))
    clipped = G.copy()  # modularity needs weights >= 0: opposite updates are simply not linked
    for u, v, w in clipped.edges(data="weight"):
        clipped[u][v]["weight"] = max(0.0, w)
    linked = clipped.size(weight="weight") > 0  # no positive link at all: every adapter on its own
    annotate_communities(G, detect_communities(clipped, seed=0) if linked else [{n} for n in names])
    write_graph_json(d / GRAPH_FILE, G)
    coords, note = layout_from_similarity(S, seed=0)
    write_layout_csv(d / LAYOUT_FILE, names, coords)
    (d / LAYOUT_NOTE_FILE).write_text(note + "\n")


def import_library(src: str | Path, name: str, base: str | Path | None = None, replace: bool = False,
                   on_adapter: Callable[[str], None] | None = None, samples: str | Path | None = None,
                   n_samples: int = 128, seed: int = 0) -> Library:
    """``pitune library import``: check every adapter, write the library and its predictions into a
    temporary folder, then rename it into place; on any error nothing is left behind. ``samples``: a
    folder of one CSV per adapter (:func:`measure_samples`: Fisher embeddings and the quality gate)."""
    sample_files = find_samples(samples, src) if samples is not None else None  # refused before any work
    tmp, lib = stage_import(src, name, base, replace=replace, on_adapter=on_adapter)
    try:
        build_predictions(lib)
        if sample_files is not None:
            measure_samples(lib, sample_files, n_samples, seed)
        commit(tmp, name)
    except BaseException:
        abandon(tmp)
        raise
    return open_library(name, check_base=False)


def neighbours(lib: Library, embedding: str = DEFAULT_EMBEDDING, k: int = GRAPH_K) -> dict[str, list[tuple[str, float]]]:
    """Each adapter's ``k`` most similar adapters (from the stored similarity matrix)."""
    names, S = read_similarity_csv(lib.paths.similarity_csv("lora", embedding))
    if len(names) < 2:
        return {n: [] for n in names}
    return {n: top_k(S, names, n, min(k, len(names) - 1)) for n in names}


def rank_for(own_factors: dict, lib: Library, embedding: str = DEFAULT_EMBEDDING) -> list[tuple[str, float]]:
    """The library's adapters ranked by similarity to a target's own expert (best first, ties by name)."""
    factors = [lora_factors(d) for d in lib.expert_dirs().values()] + [own_factors]
    try:
        S = similarity(factors, embedding)
    except ValueError as e:
        raise ValueError(f"the target's own expert cannot be compared with library {lib.name}: {e}") from None
    row = S[-1, :-1]
    return sorted(zip(lib.adapters, (float(s) for s in row)), key=lambda x: (-x[1], x[0]))


# ----------------------------------------------------------------------------- a sample per adapter

SAMPLE_COLUMNS = {"text": ("text", "a text column"), "label": ("label", "a label column")}


def find_samples(samples: str | Path, src: str | Path) -> dict[str, Path]:
    """``{adapter name: CSV}`` of a samples folder: one ``NAME.csv`` per adapter, named as the adapter is
    (its folder's name under DIR, or the name pitune gives it). A file that names no adapter, or a
    symbolic link, is refused in one line."""
    root = Path(samples).expanduser()
    if not root.is_dir():
        raise LibraryError(f"--samples {samples} is not a folder (one CSV per adapter: NAME.csv with text,label)")
    adapters = {n for n, _ in find_adapters(Path(src).expanduser())}
    out = {}
    for p in sorted(root.iterdir()):
        if p.is_symlink() or not p.is_file() or p.suffix.lower() != ".csv":
            raise LibraryError(f"--samples {p.name}: only regular NAME.csv files (one per adapter) are read")
        name = adapter_name(p.stem)
        if name not in adapters:
            raise LibraryError(f"--samples {p.name} names no adapter under DIR (adapters: {', '.join(sorted(adapters))[:200]})")
        out[name] = p
    return out


def read_sample(path: Path, limit: int = 4 << 20):
    """(texts, labels as class indices, class names) of one adapter's sample CSV (text, label columns),
    read by the user task store's bounded reader; at least two classes."""
    from pitune_core.data.user_tasks import UserTaskError, read_file, read_records  # lazy: loads safetensors

    try:
        rows = [r for _, r in read_records(read_file(path, limit), path.name, SAMPLE_COLUMNS)]
    except UserTaskError as e:
        raise LibraryError(f"--samples {path.name}: {e}") from None
    classes = sorted({r["label"] for r in rows})
    if len(classes) < 2:
        raise LibraryError(f"--samples {path.name}: a sample needs at least two labels (found {len(classes)})")
    return [r["text"] for r in rows], [classes.index(r["label"]) for r in rows], classes


def measure_samples(lib: Library, files: dict[str, Path], n_samples: int = 128, seed: int = 0) -> dict:
    """With a sample per adapter (its labels said as words), what pitune measures for its own experts:

    - the quality gate (:func:`pitune_core.common.admission`): each sampled adapter is scored on its
      sample against the bare base (zero-shot) and the majority class, recorded in its
      ``pitune_expert.json`` as the validation metrics, so an adapter that learned nothing is gated out
      of the sources, as in a study (the sample may overlap the adapter's training data: the check is a
      floor, not an estimate of its accuracy). Adapters without a sample are not measured and stay offered;
    - Fisher embeddings (:func:`pitune_core.predict.embeddings.fisher_information` on at most
      ``n_samples`` of the sample), their similarity, graph and map (``predict/lora/fisher/``), when
      every adapter has a sample (a graph compares all of them)."""
    import json

    import torch

    from pitune_core.model.backbone import TaskTensors, UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.device import seed_everything  # lazy: loads torch
    from pitune_core.model.experts import EXPERT_META, load_expert, predict  # lazy: loads torch
    from pitune_core.model.metrics import majority_baseline, score  # lazy: loads sklearn
    from pitune_core.predict.embeddings import fisher_information, save_embeddings, stack  # lazy: loads torch

    per, metrics = {}, {}
    with using_base(lib.base):
        bb = UnifiedBackbone(backbone_id=lib.base.backbone_id)
        for name, path in files.items():
            texts, labels, classes = read_sample(path)
            y = np.asarray(labels)
            t = TaskTensors(texts, None, torch.as_tensor(labels, dtype=torch.long))
            model, _ = load_expert(lib.expert_dirs()[name], bb, trainable=True)
            m = {"val": score(y, predict(bb, model, t, classes), len(classes)),
                 "zero_shot_val": score(y, predict(bb, None, t, classes), len(classes)),
                 "majority_val": majority_baseline(y, y, len(classes)), "sample": path.name, "num_sample": len(y)}
            meta_path = Path(lib.expert_dirs()[name]) / EXPERT_META
            meta = json.loads(meta_path.read_text())
            meta.update(metrics=m, headline_metric="accuracy")
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
            metrics[name] = m
            g = seed_everything(seed)
            idx = torch.randperm(len(t), generator=g)[: min(n_samples, len(t))]
            per[name] = fisher_information(model, bb, t.subset(idx), classes)
    if set(per) == set(lib.adapters):
        emb = stack({n: per[n] for n in lib.adapters}, {"kind": "fisher", "method": "lora",
                                                        "backbone_id": lib.base.backbone_id, "n_samples": n_samples,
                                                        "seed": seed})
        save_embeddings(lib.paths.embeddings_file("lora", "fisher"), emb)
        write_graph(lib, "fisher", emb.names, fisher_similarity(emb.groups, dtype="float64"))
    return metrics
