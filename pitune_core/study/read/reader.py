"""Read-only access to a study directory (the output of ``pitune precompute``).

The dashboard reads everything it shows through :class:`Study`; nothing here writes into the
study, trains, or imports torch at module import time (the similarity / graph helpers that do are
imported lazily, on first use).

Paths are only ever built from names the study itself lists (its tasks, its expert methods, its
embeddings): a name that is not one of those raises :class:`ValueError` before any path is joined,
so text typed by a user can never point outside the study directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pitune_core.common import (EXPERT_TYPES, EXPERT_TYPE_LABELS, MODALITIES, check_task_name, parse_shots,
                                parse_sources)
from pitune_core.paths import GRAPH_FILE, LAYOUT_FILE, LAYOUT_NOTE_FILE, RUNS_LOG_FILE, SIMILARITY_FILE, StudyPaths
from pitune_core.study.read.results import ROBUSTNESS_FILE, read_robustness
from pitune_core.study.read.results import parse_float as _float, read_matrix_csv, read_results
from pitune_core.study.robustness import robustness_table
from pitune_core.paths import default_study as default_study_path
from pitune_core.spec.configs import TransferConfig
from pitune_core.spec.parse import check_not_own_source
from pitune_core.spec.vocab import DEFAULT_SHOTS, EXPERT_META_FILE, GRAPH_K, NEIGHBORS_FILE, PREDICTOR_EMBEDDINGS, PREDICTOR_PREFIX, predictor_of
from pitune_core.spec.vocab import EMBEDDINGS as STUDY_EMBEDDINGS
from pitune_core.study.read.placed import merge_layout, merge_similarity, placed_task_infos  # + user tasks placed on it
from pitune_core.spec.weights import initial_weights, normalise_weights, parse_weights  # the one weight parser

from pitune_core.predict.quality import best_predictor, fullest_plan, headline
from pitune_core.study.read.groundtruth_files import (GROUNDTRUTH_FILES, GT_MAX_PAIRS_BYTES, GroundTruthError, gt_file,
                                                     parse_gt_quality, parse_gt_reliability, read_bounded_json,
                                                     read_gt_gains, versus_rule)
from pitune_core.common import admission, check_plan_name, read_regular
from pitune_core.predict.layout import read_layout_csv
from pitune_core.predict.neighbors import read_neighbors_csv
from pitune_core.predict.similarity import read_similarity_csv, top_k
from pitune_core.study.read.crossmodal import finding_sentence, modality_gains
from pitune_core.study.read.evidence import read_protocol_csv, summarise, target_measurements
from pitune_core.study.verify import verify_study


__all__ = [
    "Study",
    "StudyError",
    "GroundTruthError",
    "TopSource",
    "filter_runs_for",
    "METHODS",
    "EMBEDDINGS",
    "EMBEDDING_LABELS",
    "MODALITIES",
    "default_study_path",
    "rebuild_hint",
    "normalise_weights",
    "initial_weights",
    "zip_directory",
    "read_run_files",
    "parse_shots",
]

METHODS = EXPERT_TYPES
METHOD_LABELS = EXPERT_TYPE_LABELS
#: embeddings in display order; ``fisher_2n`` (Fisher with twice the samples) only exists for LoRA;
#: then every ground-truth predictor drawn as a graph (``predictor-<name>``,
#: :mod:`pitune_core.study.predictor_graphs`), where the study has one
EMBEDDINGS = (*STUDY_EMBEDDINGS, "fisher_2n", *PREDICTOR_EMBEDDINGS)
EMBEDDING_LABELS = {"fisher": "Fisher", "weights": "expert weights", "data": "data only",
                    "fisher_2n": "Fisher (2N samples)",
                    **{e: f"predictor: {predictor_of(e)}" for e in PREDICTOR_EMBEDDINGS}}



def rebuild_hint(root: str | os.PathLike) -> list[str]:
    """The commands that (re)build a study at ``root``."""
    root = os.fspath(root)
    return [f"pitune precompute --out {root}",
            f"pitune precompute --quick --out {root}",
            f"pitune verify {root} --no-load"]


class StudyError(Exception):
    """A study directory that cannot be used; ``problems`` lists every reason."""

    def __init__(self, root: Path, problems: Sequence[str]):
        self.root = Path(root)
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "unknown problem"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"study {self.root} is not usable: {first}{more}. "
                         f"Rebuild it with `{rebuild_hint(self.root)[0]}` (or `--quick` for a small one).")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def zip_directory(path: str | os.PathLike) -> bytes:
    """A zip archive (in memory) of the regular files under ``path``; symlinks are skipped."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                zf.write(p, arcname=str(Path(root.name) / p.relative_to(root)))
    return buf.getvalue()


def read_run_files(run_dir: str | os.PathLike, runs_root: str | os.PathLike) -> dict[str, Any]:
    """The JSON / text outputs of one run directory (config, weights history, metrics, error, log tail).

    ``run_dir`` must lie inside ``runs_root`` (both come from the run registry, never from user
    text); anything else raises ``ValueError``. Missing files are simply absent from the result.
    """
    d = Path(run_dir).resolve()
    root = Path(runs_root).resolve()
    if d == root or not d.is_relative_to(root):
        raise ValueError(f"run directory {d} is outside the runs directory {root}")
    out: dict[str, Any] = {"run_dir": str(d)}
    for name in ("config", "weights", "metrics"):
        p = d / f"{name}.json"
        if p.is_file():
            try:
                out[name] = _read_json(p)
            except (OSError, ValueError) as e:
                out[f"{name}_error"] = f"{p.name} is not readable: {e}"
    for name in ("error.txt", "FAILED"):
        p = d / name
        if p.is_file():
            out[name] = p.read_text(encoding="utf-8", errors="replace")[-20000:]
    log = d / "log.txt"
    if log.is_file() and not log.is_symlink():
        out["log"] = log.read_text(encoding="utf-8", errors="replace")[-8000:]
    expert = d / "expert"
    out["expert_dir"] = str(expert) if (expert / "adapter_config.json").is_file() and not expert.is_symlink() else None
    return out


def _plan_folders(base: Path, has_outputs) -> list[str]:
    """The plan folders under ``base`` (``protocol/`` or ``groundtruth/``) for which ``has_outputs``
    holds, sorted; names that are not plan names and symbolic links are skipped, so a listed name is
    safe to join."""
    if base.is_symlink() or not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        try:
            check_plan_name(d.name)
        except ValueError:
            continue
        if not d.is_symlink() and d.is_dir() and has_outputs(d):
            out.append(d.name)
    return out


@dataclass(frozen=True)
class TopSource:
    name: str
    similarity: float
    modality: str | None
    gain: float | None  # measured transfer gain in accuracy points (None: not measured)


class Study:
    """One study directory, read-only. Cheap to construct; reads files on first use."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self._cache: dict[tuple, Any] = {}

    def __repr__(self) -> str:
        return f"Study({str(self.root)!r})"

    # ---------------------------------------------------------------- validity
    def problems(self) -> list[str]:
        """Everything wrong with the directory ([] = usable); never raises."""
        if not self.root.exists():
            return [f"{self.root} does not exist"]
        if not self.root.is_dir():
            return [f"{self.root} is not a directory"]

        try:
            problems = list(verify_study(self.root, load_experts=False))
        except Exception as e:  # noqa: BLE001 - report, never crash the caller
            return [f"could not verify {self.root}: {type(e).__name__}: {e}"]
        if problems:
            return problems
        for rel in ("tasks.json", "experts/summary.csv"):
            if not (self.root / rel).is_file():
                problems.append(f"missing: {rel}")
        if not problems and not self.methods():
            problems.append("no experts: experts/<method>/ is empty")
        if not problems and not any(self.embeddings(m) for m in self.methods()):
            problems.append("no predictions: predict/<method>/<embedding>/similarity.csv is missing")
        try:
            if not problems:
                self.tasks()
        except (OSError, ValueError) as e:
            problems.append(f"tasks.json is not readable: {e}")
        return problems

    @classmethod
    def open(cls, root: str | os.PathLike | None = None) -> "Study":
        """Open and verify (checksums, not expert loading); :class:`StudyError` if unusable."""
        study = cls(default_study_path() if root is None else root)
        problems = study.problems()
        if problems:
            raise StudyError(study.root, problems)
        return study

    def _memo(self, key: tuple, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # ---------------------------------------------------------------- names (the only path parts)
    def _check_method(self, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown expert type {method!r}; expected one of {', '.join(METHODS)}")
        return method

    def _check_embedding(self, embedding: str) -> str:
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; expected one of {', '.join(EMBEDDINGS)}")
        return embedding

    def _check_task(self, task: str) -> str:
        if task not in self.task_names():
            raise ValueError(f"unknown task {task!r}: not in {self.root / 'tasks.json'}")
        return task

    # ---------------------------------------------------------------- study-wide files
    def manifest(self) -> dict:
        return self._memo(("manifest",), lambda: _read_json(StudyPaths(self.root).manifest))

    def tasks(self) -> list[dict]:
        def load():
            data = _read_json(StudyPaths(self.root).tasks_json)
            if not isinstance(data, list) or not all(isinstance(t, dict) and "name" in t for t in data):
                raise ValueError("expected a list of task objects with a 'name'")
            for t in data:
                check_task_name(t["name"], "tasks.json lists a task")
            have = {t["name"] for t in data}
            return data + [t for t in placed_task_infos(self.root) if t["name"] not in have]
        return self._memo(("tasks",), load)

    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks()]

    def task(self, name: str) -> dict:
        t = self._memo(("task_index", len(self.tasks())), lambda: {t["name"]: t for t in self.tasks()}).get(name)
        if t is not None:  # a dict: the sidebar asks for every task's modality (10,000 in a hub)
            return t
        raise ValueError(f"unknown task {name!r}: not in {self.root / 'tasks.json'}")

    def modality(self, name: str) -> str | None:
        try:
            return self.task(name).get("modality")
        except ValueError:
            return None

    def methods(self) -> list[str]:
        """Expert types present (some expert saved under ``experts/<method>/``), LoRA first."""
        def find():
            out = []
            for m in METHODS:
                d = StudyPaths(self.root).experts_of(m)
                if d.is_dir() and any((p / EXPERT_META_FILE).is_file() for p in d.iterdir()):
                    out.append(m)
            return out
        return self._memo(("methods",), find)

    def expert_tasks(self, method: str) -> list[str]:
        """Tasks that have a saved expert of ``method`` (study task order)."""
        self._check_method(method)
        d = StudyPaths(self.root).experts_of(method)
        return self._memo(("expert_tasks", method),
                          lambda: [t for t in self.task_names() if (d / t / EXPERT_META_FILE).is_file()])

    def expert_dir(self, method: str, task: str) -> Path:
        self._check_method(method)
        self._check_task(task)
        return StudyPaths(self.root).expert(method, task)

    def embeddings(self, method: str) -> list[str]:
        """Embeddings with a similarity matrix for ``method``, in display order."""
        self._check_method(method)
        base = StudyPaths(self.root).predict_of(method)
        return [e for e in EMBEDDINGS if (base / e / SIMILARITY_FILE).is_file() or (base / e / NEIGHBORS_FILE).is_file()]

    def default_embedding(self, method: str) -> tuple[str, str]:
        """``(embedding, why)``: what the dashboard ranks sources with by default. The evidence
        decides: the predictor with the best mean Spearman at the smallest few-shot size of the
        fullest ground truth (:func:`~pitune_core.predict.quality.headline`), when the study draws
        it as a graph (``predictor-<name>``); else the best of the predictors it does draw (a learned
        predictor such as transfer history has no graph); else Fisher (the paper's choice), or the
        first embedding the study has."""
        have = self.embeddings(method)
        fallback = "fisher" if "fisher" in have else (have[0] if have else "fisher")
        qualities = {}
        for plan in self.groundtruth_plans():
            try:
                q = self.groundtruth_quality(plan)
            except GroundTruthError:
                continue
            if q and headline(q):
                qualities[plan] = q
        plan = fullest_plan(qualities)
        if plan is None:
            return fallback, "no ground-truth evidence in this study"
        size, best = headline(qualities[plan])
        emb = PREDICTOR_PREFIX + best
        if emb in have:
            return emb, f"best Spearman at {size} in groundtruth/{plan}" + versus_rule(qualities[plan], size, best)
        missing = f"{best} is best at {size} in groundtruth/{plan}, but this study has no {emb} graph; showing "
        drawn = [p for p in (predictor_of(e) for e in have) if p is not None]
        second = best_predictor(qualities[plan], size, among=drawn)
        if second is not None:  # the evidence's best among the predictors this study draws
            return (PREDICTOR_PREFIX + second,
                    missing + f"{second}, the best with a graph" + versus_rule(qualities[plan], size, second))
        return fallback, missing + fallback

    def expert_summary(self) -> list[dict]:
        """Rows of ``experts/summary.csv`` with numbers parsed."""
        def load():
            rows = []
            for r in _read_csv(StudyPaths(self.root).expert_summary):
                row: dict[str, Any] = dict(r)
                for k in ("expert", "zero_shot", "majority", "expert_accuracy", "train_time_s", "peak_memory_mb"):
                    if k in row:
                        row[k] = _float(row[k])
                for k in ("num_train", "num_test", "steps"):
                    if k in row:
                        v = _float(row[k])
                        row[k] = int(v) if v is not None else None
                rows.append(row)
            return rows
        return self._memo(("summary",), load)

    def experts_of(self, method: str) -> dict[str, dict]:
        """Per task, its ``method`` expert's row of ``experts/summary.csv`` (expert, zero_shot, majority,
        metric, ...); a user task placed on this study with ``method`` gets the same numbers from
        its placement record (``source``: "placement.json"; None where the record has none)."""
        self._check_method(method)
        out = {r["task"]: r for r in self.expert_summary() if r.get("method") == method}
        for t in self.tasks():
            scores = (t.get("placed_scores") or {}).get(method) if t.get("user_task") else None
            if scores and t["name"] not in out:
                out[t["name"]] = {"task": t["name"], "method": method, "modality": t.get("modality"),
                                  "source": "placement.json", **scores}
        return out

    def gated(self, method: str) -> dict[str, str]:
        """``{task: reason}`` of the experts that are not offered as sources (the library's gate,
        :func:`pitune_core.common.admission`), as ``experts/summary.csv`` records it (``pitune
        precompute``); for a study written before the gate, judged from each expert's
        ``pitune_expert.json`` as a run judges it (:func:`pitune_core.study.sources.admitted_experts`)."""
        def load():
            rows = self.experts_of(method)
            if all("admitted" in r for r in rows.values()):
                return {t: str(r.get("gate") or "not offered as a source") for t, r in rows.items()
                        if str(r["admitted"]).strip() == "0"}

            out = {}
            for t in rows:
                try:
                    meta = json.loads(read_regular(self.expert_dir(method, t) / EXPERT_META_FILE, 1 << 20))
                except (OSError, ValueError) as e:
                    out[t] = f"not offered as a source: its metadata is unreadable ({e})"[:300]
                    continue
                if not isinstance(meta, dict) or not isinstance((meta.get("metrics") or {}).get("val"), dict):
                    continue  # a marker without scores (a synthetic hub's): nothing to judge, no run can use it
                ok, why = admission(meta)
                if not ok:
                    out[t] = why
            return out
        return self._memo(("gated", method), load)

    def node_attrs(self, method: str) -> dict[str, dict]:
        """Per task: modality, accuracy (the expert's), zero-shot, description, classes, sizes."""
        experts, gated = self.experts_of(method), self.gated(method)
        out = {}
        for t in self.tasks():
            e = experts.get(t["name"], {})
            out[t["name"]] = {
                "modality": t.get("modality"),
                "accuracy": e.get("expert"),
                "zero_shot": e.get("zero_shot"),
                "majority": e.get("majority"),
                "metric": e.get("metric") or t.get("metric"),
                "description": t.get("description", ""),
                "num_classes": t.get("num_classes"),
                "num_train": t.get("num_train"),
                "source": t.get("source", ""),
                "user_task": bool(t.get("user_task")),
                "family": t.get("family"),
                "gated": gated.get(t["name"]),
            }
        return out

    def projector(self) -> dict | None:
        p = StudyPaths(self.root).projector_meta
        return self._memo(("projector",), lambda: _read_json(p) if p.is_file() else None)

    def ablation(self) -> list[dict]:
        p = StudyPaths(self.root).blank_images
        if not p.is_file():
            return []
        return [{"task": r["task"], "accuracy": _float(r.get("accuracy")),
                 "accuracy_images_blanked": _float(r.get("accuracy_images_blanked"))} for r in _read_csv(p)]

    def fisher_stability(self, method: str = "lora") -> dict | None:
        p = StudyPaths(self.root).fisher_stability(self._check_method(method))
        return _read_json(p) if p.is_file() else None

    # ---------------------------------------------------------------- predictions
    def _predict_dir(self, method: str, embedding: str) -> Path:
        self._check_method(method)
        self._check_embedding(embedding)
        d = StudyPaths(self.root).embedding_dir(method, embedding)
        if not (d / SIMILARITY_FILE).is_file() and not (d / NEIGHBORS_FILE).is_file():
            have = ", ".join(self.embeddings(method)) or "none"
            raise ValueError(f"no {embedding} embedding for {method} experts in this study (available: {have})")
        return d

    # ---------------------------------------------------------------- hub scale (top-k tables)
    def has_matrix(self, method: str, embedding: str) -> bool:
        """Whether the full similarity matrix is stored (a synthetic hub of 10,000 tasks stores only
        each task's top-k neighbours, ``neighbors.csv``)."""
        return (self._predict_dir(method, embedding) / SIMILARITY_FILE).is_file()

    def has_neighbours(self, method: str, embedding: str) -> bool:
        return (self._predict_dir(method, embedding) / NEIGHBORS_FILE).is_file()

    def prediction_names(self, method: str, embedding: str) -> list[str]:
        """The tasks with a ``method``/``embedding`` prediction, without parsing a large matrix: the
        matrix's names when it is small or already read, else the study's tasks (a hub's tables
        cover every task of its tasks.json)."""
        d = self._predict_dir(method, embedding)
        if ("sim", method, embedding) in self._cache or (
                (d / SIMILARITY_FILE).is_file() and (d / SIMILARITY_FILE).stat().st_size < 2_000_000):
            return list(self.similarity(method, embedding)[0])
        return self.task_names()

    def neighbours(self, method: str, embedding: str) -> tuple[list[str], Any, Any]:
        """``(names, index (n, k), similarity (n, k))``: every task's stored top-k, best first
        (``neighbors.csv``, written by ``pitune hub synth``); ValueError if the study has none."""
        def load():
            d = self._predict_dir(method, embedding)
            if not (d / NEIGHBORS_FILE).is_file():
                raise ValueError(f"no {NEIGHBORS_FILE} for {method}/{embedding} in this study")
            names = self.task_names()
            index, sim = read_neighbors_csv(d / NEIGHBORS_FILE, names)
            return names, index, sim
        return self._memo(("neighbours", method, embedding), load)

    def similarity(self, method: str, embedding: str) -> tuple[list[str], Any]:
        """(task names, similarity matrix as a numpy array)."""
        def load():
            path = self._predict_dir(method, embedding) / SIMILARITY_FILE
            names, S = read_similarity_csv(path)
            for n in names:  # file-supplied names reach paths and labels: identifiers only
                check_task_name(n, f"{path.relative_to(self.root)} names a task")
            return merge_similarity(self.root, method, embedding, names, S)
        return self._memo(("sim", method, embedding), load)

    def precomputed_graph(self, method: str, embedding: str):
        """The networkx graph saved by ``precompute`` (``graph.json``), or None."""
        p = self._predict_dir(method, embedding) / GRAPH_FILE
        if not p.is_file():
            return None
        from pitune_core.predict.graph import read_graph_json  # lazy: loads networkx

        return read_graph_json(p)

    def layout(self, method: str, embedding: str) -> tuple[list[str], Any, str]:
        """(names, coordinates (n, 2), note on how the layout was made)."""
        def load():
            d = self._predict_dir(method, embedding)
            if not (d / LAYOUT_FILE).is_file():
                raise ValueError(f"no layout for {method}/{embedding} in this study")
            names, coords = read_layout_csv(d / LAYOUT_FILE)
            for n in names:
                check_task_name(n, f"{LAYOUT_FILE} names a task")
            note_p = d / LAYOUT_NOTE_FILE
            note = note_p.read_text(encoding="utf-8").strip() if note_p.is_file() else ""
            return merge_layout(self.root, method, embedding, names, coords, note)
        return self._memo(("layout", method, embedding), load)

    def task_graph(self, method: str, embedding: str, mode: str = "knn", k: int = GRAPH_K, threshold: float = 0.5,
                   community_method: str = "louvain", seed: int = 0):
        """The task graph rebuilt from ``similarity.csv`` with communities annotated.

        Returns ``(G, summary)``: ``G`` an undirected networkx graph whose nodes carry
        :meth:`node_attrs` plus ``community``; ``summary`` is
        :func:`pitune_core.predict.graph.community_summary` (members and modalities per community).
        """
        from pitune_core.predict.graph import (  # lazy: loads networkx
            annotate_communities,
            build_graph,
            community_summary,
            detect_communities,
        )

        if mode == "knn" and self.has_neighbours(method, embedding):  # a hub: the stored top-k table
            import networkx as nx

            names, index, sim = self.neighbours(method, embedding)
            if not 1 <= int(k) <= index.shape[1]:
                raise ValueError(f"k must be between 1 and {index.shape[1]} (the neighbours stored per task)")
            attrs = self.node_attrs(method)
            G = nx.Graph(mode="knn", k=int(k))
            for n in names:
                G.add_node(n, **attrs.get(n, {}))
            G.add_weighted_edges_from((names[i], names[j], float(s)) for i in range(len(names))
                                      for j, s in zip(index[i, :k].tolist(), sim[i, :k].tolist()))
            annotate_communities(G, detect_communities(G, method=community_method, seed=seed))
            return G, community_summary(G)
        if not self.has_matrix(method, embedding):
            raise ValueError("this hub stores only each task's top-k neighbours: link tasks by k nearest neighbours")
        names, S = self.similarity(method, embedding)
        attrs = self.node_attrs(method)
        G = build_graph(names, S, {n: attrs.get(n, {}) for n in names}, mode=mode, k=k, threshold=threshold)
        annotate_communities(G, detect_communities(G, method=community_method, seed=seed))
        return G, community_summary(G)

    def top_k(self, target: str, k: int, method: str, embedding: str) -> list[TopSource]:
        """The ``k`` experts most similar to ``target`` (best first), with measured gains."""
        self._check_task(target)
        if self.has_neighbours(method, embedding):  # a hub: its stored top-k (exact similarities)
            names, index, sim = self.neighbours(method, embedding)
            i = names.index(target)
            gains, gated = self.measured_gains(target), self.gated(method)
            row = [(j, s) for j, s in zip(index[i].tolist(), sim[i].tolist()) if names[j] not in gated]
            return [TopSource(names[j], float(s), self.modality(names[j]), gains.get(names[j]))
                    for j, s in row[:max(1, int(k))]]
        names, S = self.similarity(method, embedding)
        if target not in names:
            raise ValueError(f"{target} has no {method} {embedding} embedding in this study")
        users = {t["name"] for t in self.tasks() if t.get("user_task")} - {target}
        users |= set(self.gated(method)) - {target}  # gated experts are never offered as sources
        if users:  # user tasks have no expert: never a source
            keep = [i for i, n in enumerate(names) if n not in users]
            names, S = [names[i] for i in keep], S[keep][:, keep]
        k = max(1, min(int(k), len(names) - 1))
        gains = self.measured_gains(target)
        return [TopSource(n, float(s), self.modality(n), gains.get(n)) for n, s in top_k(S, names, target, k)]

    def top_k_measured(self, target: str, k: int, method: str, embedding: str) -> list[TopSource]:
        """Like :meth:`top_k`, ranked only over the sources whose transfer to ``target`` was measured
        (what transfer/predict_quality.json's per-target ``predicted`` lists rank; ties by name)."""
        self._check_task(target)
        names, S = self.similarity(method, embedding)
        if target not in names:
            raise ValueError(f"{target} has no {method} {embedding} embedding in this study")
        gains = self.measured_gains(target)
        i = names.index(target)
        cands = sorted((n for n in gains if n in names and n != target), key=lambda n: (-float(S[i, names.index(n)]), n))
        return [TopSource(n, float(S[i, names.index(n)]), self.modality(n), gains[n]) for n in cands[:max(1, int(k))]]

    # ---------------------------------------------------------------- transfer (measured)
    def transfer_matrix(self) -> tuple[list[str], list[str], Any] | None:
        """(targets, sources, gains in accuracy points with NaN where not measured), or None."""
        def load():
            p = StudyPaths(self.root).transfer_matrix
            if not p.is_file():
                return None
            targets, cols, M = read_matrix_csv(p)
            for n in (*cols, *targets):
                check_task_name(n, "transfer_matrix.csv names a task")
            return targets, cols, M
        return self._memo(("transfer",), load)

    def measured_gains(self, target: str) -> dict[str, float]:
        """{source: measured gain in points} for ``target`` from :meth:`measured_matrix`; {} if the
        target was not measured."""
        mm = self.measured_matrix()
        if mm is None or target not in mm[0]:
            return {}
        targets, cols, M, _ = mm
        row = M[targets.index(target)]
        return {c: float(v) for c, v in zip(cols, row) if c != target and math.isfinite(v)}

    def measured_matrix(self, plan: str | None = None) -> tuple[list[str], list[str], Any, str] | None:
        """The study's measured transfer, ``(targets, sources, gains in points, where)``: the seed-averaged
        gains of the ground truth ``plan`` (default: the plan whose pairs cover the most targets), else
        transfer/transfer_matrix.csv; None when the study has neither. ``where`` names the file (and
        the number of seeds). :class:`GroundTruthError` for an unreadable pairs log."""
        def load():
            plans = [plan] if plan else [n for n in self.groundtruth_plans()
                                         if self._groundtruth_file(n, "pairs.jsonl") is not None]
            found = [(n, g) for n in plans if (g := self.groundtruth_gains(n)) is not None and g[0]]
            if found:
                name, (targets, sources, M, info) = max(found, key=lambda ng: (len(ng[1][0]), ng[0]))
                seeds = info["seeds"]
                return (targets, sources, M, f"groundtruth/{name}/pairs.jsonl, mean over {len(seeds)} seed"
                                              f"{'s' * (len(seeds) != 1)}")
            tm = self.transfer_matrix()
            return None if tm is None else (*tm, "transfer/transfer_matrix.csv")
        return self._memo(("measured", plan), load)

    def predict_quality(self) -> dict | None:
        p = StudyPaths(self.root).predict_quality
        return self._memo(("pq",), lambda: _read_json(p) if p.is_file() else None)

    def quality_table(self) -> list[dict]:
        """One row per embedding: mean/std Spearman and top-K hit rate (K read from the keys)."""
        pq = self.predict_quality() or {}
        rows = []
        for emb, q in pq.items():
            if not isinstance(q, dict):
                continue
            row: dict[str, Any] = {"embedding": emb, "spearman_mean": q.get("spearman_mean"),
                                   "spearman_std": q.get("spearman_std")}
            for key, v in q.items():
                if key.startswith("top") and key.endswith("_hit_mean"):
                    row["top_k"] = key[3:-len("_hit_mean")]
                    row["hit_mean"] = v
                elif key.startswith("top") and key.endswith("_hit_std"):
                    row["hit_std"] = v
            rows.append(row)
        return rows

    def target_quality(self, embedding: str, target: str) -> list[dict]:
        """Per seed: the Spearman / hit / best measured source / predicted sources for ``target``."""
        pq = (self.predict_quality() or {}).get(embedding) or {}
        out = []
        for seed, s in sorted((pq.get("seeds") or {}).items()):
            t = ((s or {}).get("per_target") or {}).get(target)
            if t:
                out.append({"seed": seed, **t})
        return out

    # ---------------------------------------------------------------- ground truth (``pitune transfer-study``)
    def groundtruth_plans(self) -> list[str]:
        """Plans with ground-truth outputs under ``groundtruth/`` (a folder per plan holding
        quality.json, reliability.json or pairs.jsonl), sorted; folders whose name is not a plan
        name, and symbolic links, are not listed (so a listed name is safe to join)."""
        return self._memo(("gt_plans",), lambda: _plan_folders(
            StudyPaths(self.root).groundtruth("x").parent,
            lambda d: any((d / f).is_file() for f in GROUNDTRUTH_FILES)))

    def _groundtruth_file(self, name: str, file: str) -> Path | None:
        if name not in self.groundtruth_plans():
            raise GroundTruthError(f"no ground truth named {str(name)[:80]!r} in this study "
                                   f"(available: {', '.join(self.groundtruth_plans()) or 'none'})")
        p = StudyPaths(self.root).groundtruth(name) / file
        return p if os.path.lexists(p) else None

    def groundtruth_quality(self, name: str) -> dict | None:
        """``groundtruth/NAME/quality.json`` (written by :func:`pitune_core.study.transfer.quality_table`),
        validated: predictor names from the fixed list, size labels ``K-shot``/``full``, task names
        identifiers, every number finite or None (NaN / inf, e.g. a CI from one target, become None).
        None when the plan has no quality.json yet; :class:`GroundTruthError` (one readable line)
        for a file that is too large, not JSON or not of that shape."""
        p = self._groundtruth_file(name, "quality.json")
        if p is None:
            return None
        return self._memo(("gt_quality", name), lambda: parse_gt_quality(read_bounded_json(p, self.root), name))

    def groundtruth_reliability(self, name: str) -> dict | None:
        """``groundtruth/NAME/reliability.json`` (:func:`pitune_core.predict.quality.seed_reliability`),
        validated like :meth:`groundtruth_quality`; None when absent."""
        p = self._groundtruth_file(name, "reliability.json")
        if p is None:
            return None
        return self._memo(("gt_rel", name), lambda: parse_gt_reliability(read_bounded_json(p, self.root), name))

    def groundtruth_gains(self, name: str) -> tuple[list[str], list[str], Any, dict] | None:
        """The plan's measured gains from ``groundtruth/NAME/pairs.jsonl``: ``(targets, sources, G, info)``
        with ``G[i, j]`` the seed-averaged gain (points) of target i from source j over scratch (NaN
        where not measured) and ``info`` = ``{key, seeds, skipped}``. Only the records of one
        configuration are used (quality.json's key, else the log's only key); None without pairs."""
        p = self._groundtruth_file(name, "pairs.jsonl")
        if p is None:
            return None

        def load():
            key = None
            try:
                key = (self.groundtruth_quality(name) or {}).get("key")
            except GroundTruthError:
                pass
            return read_gt_gains(p, self.root, key, self.task_names())
        return self._memo(("gt_gains", name), load)

    def cross_modal_finding(self, plan: str | None = None) -> dict | None:
        """Same- vs cross-modality measured gains (:func:`pitune_core.study.read.crossmodal.modality_gains`)
        with ``sentence`` and ``source``: from the ground truth's pairs of ``plan`` (default: the
        plan whose pairs cover the most targets) when there are any, else from
        transfer/transfer_matrix.csv; None when the study has neither. :class:`GroundTruthError`
        for an unreadable pairs log."""
        def load():
            mm = self.measured_matrix(plan)
            if mm is None:
                return None
            targets, sources, M, source = mm
            res = modality_gains(targets, sources, M, self.modality)
            return {**res, "source": source, "sentence": finding_sentence(res)}
        return self._memo(("cross_modal", plan), load)

    # ---------------------------------------------------------------- compare (baselines)
    def compare_results(self, target: str | None = None) -> list[dict]:
        """Rows of ``compare/results.csv`` (optionally one target); shots are ints or ``"full"``."""
        def load():
            p = StudyPaths(self.root).results_csv
            if not p.is_file():
                return []
            return read_results(p)
        rows = self._memo(("compare",), load)
        return [r for r in rows if target is None or r["target"] == target]

    def compare_targets(self) -> list[str]:
        """Targets the study compared approaches on: the pre-registered comparison's, then those of a
        pre-protocol ``compare/results.csv``."""
        seen: list[str] = self.protocol_targets()
        for r in self.compare_results():
            if r["target"] not in seen:
                seen.append(r["target"])
        return seen

    # ---------------------------------------------------------------- the pre-registered protocol
    def protocol_plans(self) -> list[str]:
        """Names of the plans with a ``protocol/<name>/results.csv`` (``pitune study run``), sorted;
        a folder whose name is not a valid plan name, or a symbolic link, is skipped."""
        return _plan_folders(StudyPaths(self.root).protocol("x").parent,
                             lambda d: (d / "results.csv").is_file() and not (d / "results.csv").is_symlink())

    def protocol_results(self, name: str) -> list[dict]:
        """Validated rows of ``protocol/<name>/results.csv`` (every planned run, status done | failed |
        missing; :func:`pitune_core.study.read.evidence.read_protocol_csv`); a one-line ``ValueError`` for
        an unknown plan or a malformed file. Re-read when the file changes (a study fills over time)."""
        if name not in self.protocol_plans():
            raise ValueError(f"no protocol results for plan {str(name)[:80]!r} in this study")
        p = StudyPaths(self.root).protocol(name) / "results.csv"
        st = p.stat()
        return self._memo(("protocol", name, st.st_mtime_ns, st.st_size),
                          lambda: read_protocol_csv(p, p.relative_to(self.root).as_posix()))

    def protocol_summary(self, name: str) -> dict:
        """Progress, approach × regime table, paired differences with bootstrap CIs, verdicts and the
        recommendation per regime (:func:`pitune_core.study.read.evidence.summarise`; differences only over
        targets where both approaches have every planned seed done). Never raises for a bad file:
        ``{"plan": name, "problem": "<one line>"}`` instead."""
        try:
            rows = self.protocol_results(name)
        except (OSError, ValueError) as e:
            return {"plan": name, "problem": str(e)}
        p = StudyPaths(self.root).protocol(name) / "results.csv"
        st = p.stat()
        out = self._memo(("protocol_summary", name, st.st_mtime_ns, st.st_size), lambda: summarise(rows))
        return {"plan": name, "problem": None, **out}

    def protocol_robustness(self, name: str) -> dict:
        """The comparison's robustness (``protocol/<name>/robustness.csv`` against its results.csv,
        :func:`pitune_core.study.read.results.read_robustness`; summarised by
        :func:`pitune_core.study.robustness.robustness_table`): ``{"plan", "problem", "runs_scored",
        "regimes"}``, ``runs_scored`` 0 and no regime when the plan holds no robustness measurement.
        Never raises for a bad file: ``problem`` says what is wrong in one line."""
        out: dict[str, Any] = {"plan": name, "problem": None, "runs_scored": 0, "regimes": []}
        try:
            runs = self.protocol_results(name)
            p = StudyPaths(self.root).protocol(name) / ROBUSTNESS_FILE
            if not p.exists() and not p.is_symlink():
                return out
            res, st = StudyPaths(self.root).protocol(name) / "results.csv", p.stat()
            key = ("protocol_robustness", name, st.st_mtime_ns, st.st_size, res.stat().st_mtime_ns)
            return {**out, **self._memo(key, lambda: robustness_table(
                runs, read_robustness(p, runs, p.relative_to(self.root).as_posix())))}
        except (OSError, ValueError) as e:
            return {**out, "problem": str(e)}

    def protocol_targets(self) -> list[str]:
        """Targets of the study's pre-registered comparison(s), in the order of their results (plans
        in name order); a plan whose results cannot be read adds none."""
        seen: dict[str, None] = {}
        for name in self.protocol_plans():
            try:
                for r in self.protocol_results(name):
                    seen.setdefault(r["target"], None)
            except (OSError, ValueError):
                continue
        return list(seen)

    def target_evidence(self, target: str, method: str = "lora", plan: str | None = None) -> dict:
        """What the study measured on ``target``, for the page that draws a user's run beside it:

        ``{"target", "source" (the file read, or None), "provisional" (a pre-protocol comparison),
        "plan", "metric", "regimes" ({regime: approach rows}, :func:`~pitune_core.study.read.evidence.target_measurements`),
        "zero_shot", "zero_shot_source", "problem" (one line, or None)}``. Read from the protocol's
        results (``protocol/<plan>/results.csv``: the plan that holds the target, ``plan`` if given),
        else from a pre-protocol ``compare/results.csv`` (marked provisional); zero-shot from the
        expert summary, or a placed user task's placement record. Scores are the task's metric, 0..1."""
        self._check_task(target)
        out: dict[str, Any] = {"target": target, "source": None, "provisional": False, "plan": None,
                               "metric": self.task(target).get("metric") or "accuracy", "regimes": {},
                               "zero_shot": None, "zero_shot_source": None, "problem": None}
        plans = [plan] if plan else list(reversed(self.protocol_plans()))
        for name in plans:
            try:
                rows = self.protocol_results(name)
            except (OSError, ValueError) as e:
                out["problem"] = str(e)
                continue
            measured = target_measurements(rows, target)
            if measured:
                metrics = {r["metric"] for r in rows if r["target"] == target and r["metric"]}
                out.update(source=f"protocol/{name}/results.csv", plan=name, regimes=measured,
                           metric=next(iter(metrics)) if len(metrics) == 1 else out["metric"])
                break
        if not out["regimes"]:
            legacy = [{**r, "status": "done", "score": r["score"] if r["score"] is not None else r["accuracy"]}
                      for r in self.compare_results(target)]
            measured = target_measurements(legacy, target)
            if measured:
                out.update(source="compare/results.csv", provisional=True, regimes=measured)
        e = self.experts_of(method).get(target) if method in METHODS else None
        if e and e.get("zero_shot") is not None:
            out.update(zero_shot=e["zero_shot"], zero_shot_source=e.get("source") or "experts/summary.csv",
                       metric=e.get("metric") or out["metric"])
        return out

    def measurement_logs(self) -> list[dict]:
        """The study's measurement logs, counted: every ground-truth plan's ``pairs.jsonl`` (one record
        per target, source and seed) and every protocol plan's ``runs.jsonl`` (one record per planned
        run, its last status), ``[{stage, path, runs, failed, seconds, timed}]``; ``seconds`` sums the
        records' ``time_s`` (None when none records it). Lines that are not JSON objects are skipped;
        a log over its size limit is reported with ``problem``."""
        out = []
        gt = [("ground truth (transfer pairs)", f"groundtruth/{n}/pairs.jsonl") for n in self.groundtruth_plans()]
        pr = [("protocol (pre-registered runs)", f"protocol/{n}/{RUNS_LOG_FILE}")
              for n in _plan_folders(StudyPaths(self.root).protocol("x").parent,
                                     lambda d: (d / RUNS_LOG_FILE).is_file())]
        legacy = [(stage, p.relative_to(self.root).as_posix()) for stage, p in
                  (("transfer (pairs)", StudyPaths(self.root).transfer_pairs),
                   ("compare (runs)", StudyPaths(self.root).compare_runs)) if p.is_file()]
        for stage, rel in [*gt, *pr, *legacy]:
            path = self.root / rel
            row: dict[str, Any] = {"stage": stage, "path": rel, "runs": 0, "failed": 0, "seconds": None,
                                   "timed": 0, "problem": None}
            if not path.is_file():
                continue
            try:
                gt_file(path, self.root, GT_MAX_PAIRS_BYTES)
            except GroundTruthError as e:
                row["problem"] = str(e)
                out.append(row)
                continue
            last: dict[Any, dict] = {}
            with open(path, encoding="utf-8", errors="replace") as fh:
                for i, line in enumerate(fh):
                    try:
                        rec = json.loads(line)
                    except (ValueError, RecursionError):
                        continue
                    if not isinstance(rec, dict):
                        continue
                    # a protocol run is keyed by its configuration (a retry replaces it), a pair by
                    # (target, source, seed, budget key); a record of neither shape counts once
                    ident = rec.get("key") if "job" in rec else \
                        (rec.get("target"), rec.get("source"), rec.get("seed"), rec.get("key")) if "source" in rec else i
                    last[json.dumps(ident, sort_keys=True, default=str)] = rec
            secs = 0.0
            for rec in last.values():
                status = rec.get("status", "done")
                row["runs"] += status == "done"
                row["failed"] += status == "failed"
                t = _float(rec.get("time_s")) if isinstance(rec.get("time_s"), (int, float, str)) else None
                if t is not None and status == "done":
                    secs, row["timed"] = secs + t, row["timed"] + 1
            row["seconds"] = secs if row["timed"] else None
            out.append(row)
        return out

    def recorded_times(self) -> list[dict]:
        """Compute time per stage, summed from what each run recorded (not the manifest's wall time
        of the last, possibly resumed, invocation): ``[{stage, seconds, runs, source}]``;
        ``seconds`` is None where the study's files record no run times."""
        out = []
        secs, n = 0.0, 0
        for row in self.expert_summary():
            t = _float(row.get("train_time_s"))
            if t is not None:
                secs, n = secs + t, n + 1
        out.append({"stage": "experts (training)", "seconds": secs if n else None, "runs": n,
                    "source": "experts/summary.csv: train_time_s"})
        for log in self.measurement_logs():
            out.append({"stage": log["stage"], "seconds": log["seconds"], "runs": log["runs"],
                        "source": f"{log['path']}: time_s" + (
                            f" ({log['problem']})" if log["problem"] else
                            "" if log["timed"] or not log["runs"] else " (not recorded by this study's runs)")})
        return out

    # ---------------------------------------------------------------- runs
    def transfer_config(self, target: str, sources: Sequence[str], method: str = "lora",
                        embedding: str = "fisher", weights: str | Sequence[float] = "uniform",
                        shots: Any = DEFAULT_SHOTS, seed: int = 0, weights_only: bool = False,
                        k: int | None = None) -> TransferConfig:
        """A validated :class:`~pitune_core.spec.configs.TransferConfig` for the run registry's ``transfer`` kind
        (its ``to_dict()`` is what is submitted; cheap checks against this study here, and the worker
        re-validates everything with :func:`pitune_core.tune.run.prepare_transfer`).

        With no ``sources`` and a ``k``, the run chooses its own top-``k``: a few-shot run ranks the
        study's sources with ``embedding``'s predictor computed from its own examples alone (the
        protocol: nothing from the target's other examples), a full-data run takes the study's
        ranking. Learned weights only (hand-set weights name one weight per source)."""
        self._check_task(target)
        self._check_method(method)
        self._predict_dir(method, embedding)
        most = self.task(target).get("max_shots")  # user tasks: the smallest class's training examples
        if most is not None and parse_shots(shots) is not None and parse_shots(shots) > int(most):
            raise ValueError(f"shots={parse_shots(shots)} is more than {target} has: its smallest class has "
                             f"{most} training examples; choose at most {most} (or 'full')")
        sources = parse_sources(list(sources or [])) or []  # task identifiers, duplicates refused
        if sources:
            have = set(self.expert_tasks(method))
            names, _ = self.similarity(method, embedding)
            check_not_own_source(target, sources)
            for s in sources:
                if s not in have:
                    raise ValueError(f"no {method} expert for {s!r} in this study")
                if s not in names:
                    raise ValueError(f"{s!r} has no {embedding} similarity in this study")
            k = len(sources)
        elif k is None:
            raise ValueError("choose at least one source expert")
        else:  # the run ranks its sources itself
            others = [t for t in self.expert_tasks(method) if t != target]
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(others):
                raise ValueError(f"k must be a whole number from 1 to {len(others)} (the other experts), got {k!r}")
        w = parse_weights(weights, k)  # the one weight parser (raises a readable ValueError)
        if not isinstance(w, str):
            if not sources:
                raise ValueError("hand-set weights need named sources: choose them, or learn the weights")
            w = normalise_weights(w)  # exactly what the run uses
        return TransferConfig(target=target, k=k, method=method, embedding=embedding, shots=parse_shots(shots),
                              weights=w, sources=tuple(sources) or None, seed=int(seed), study=str(self.root),
                              weights_only=bool(weights_only) and isinstance(w, str))


def filter_runs_for(records: Iterable[Any], target: str | None = None) -> list[Any]:
    """Registry records of ``transfer`` runs, optionally only those for ``target``."""
    out = []
    for r in records:
        if getattr(r, "kind", None) != "transfer":
            continue
        if target is None or (r.config or {}).get("target") == target:
            out.append(r)
    return out
