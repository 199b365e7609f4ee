"""pitune_core.study.read.reader: read-only access to a study directory.

Most tests use a small synthetic study written here (every file format as ``pitune precompute``
writes it, with a manifest of real checksums), so they run anywhere in well under a second; the
last one also opens the shipped ``precomputed/`` study when it exists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pitune_core.spec.configs import TransferConfig
from pitune_core.study.read.reader import (
    Study,
    StudyError,
    default_study_path,
    initial_weights,
    normalise_weights,
    parse_shots,
    read_run_files,
    rebuild_hint,
    zip_directory,
)

REPO = Path(__file__).resolve().parent.parent

TASKS = [
    ("movie_sentiment", "language", 2), ("tweet_sentiment", "language", 2), ("bbc_topic", "language", 5),
    ("sklearn_digits", "vision", 10), ("mnist", "vision", 10), ("textures", "vision", 4),
    ("mnist_digit_question", "vision-language", 2), ("snippet_face_mood", "vision-language", 2),
]
NAMES = [t[0] for t in TASKS]
IA3_TASKS = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "mnist"]
TRANSFER_TASKS = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "textures"]
COMPARE_TARGET = "sklearn_digits"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _similarity(names: list[str], seed: int) -> np.ndarray:
    """Symmetric, in (0, 1), higher within a modality, distinct off-diagonal values."""
    mod = {n: m for n, m, _ in TASKS}
    rng = np.random.default_rng(seed)
    n = len(names)
    S = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            v = (0.55 if mod[names[i]] == mod[names[j]] else 0.3) + 0.2 * rng.random()
            S[i, j] = S[j, i] = v
    return S


def _write_sim(path: Path, names: list[str], S: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *names])
        for n, row in zip(names, S):
            w.writerow([n, *[repr(float(v)) for v in row]])


def make_synthetic_study(root: Path) -> Path:
    """A complete small study directory (no real experts' weights; everything else real format)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tasks = [{"name": n, "modality": m, "num_classes": c, "labels": [str(i) for i in range(c)],
              "verbalizers": [f"class {i}" for i in range(c)], "metric": "accuracy", "source": "synthetic",
              "description": f"synthetic {m} task {n}", "num_train": 100 + 10 * i, "num_val": 20, "num_test": 50}
             for i, (n, m, c) in enumerate(TASKS)]
    (root / "tasks.json").write_text(json.dumps(tasks, indent=1))
    (root / "backbone").mkdir()
    (root / "backbone" / "projector.json").write_text(json.dumps({"metrics": {"zero_shot_val": {}}}))
    rows = []
    for method, names in (("lora", NAMES), ("ia3", IA3_TASKS)):
        for i, n in enumerate(names):
            d = root / "experts" / method / n
            d.mkdir(parents=True)
            (d / "adapter_config.json").write_text(json.dumps({"peft_type": method.upper()}))
            (d / "pitune_expert.json").write_text(json.dumps({"task": n, "method": method}))
            acc = 0.5 + 0.05 * i
            m = next(t[1] for t in TASKS if t[0] == n)
            rows.append([n, m, method, "accuracy", acc, 0.3, 0.2, acc, 100, 50, 20, 1.0, 900.0])
    with open(root / "experts" / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "modality", "method", "metric", "expert", "zero_shot", "majority", "expert_accuracy",
                    "num_train", "num_test", "steps", "train_time_s", "peak_memory_mb"])
        w.writerows(rows)
    (root / "ablation").mkdir()
    (root / "ablation" / "blank_images.csv").write_text(
        "task,accuracy,accuracy_images_blanked\nmnist_digit_question,0.6,0.5\nsnippet_face_mood,0.7,0.55\n")
    for seed, emb in enumerate(("fisher", "weights", "data")):
        _write_sim(root / "predict" / "lora" / emb / "similarity.csv", NAMES, _similarity(NAMES, seed))
    _write_sim(root / "predict" / "ia3" / "fisher" / "similarity.csv", IA3_TASKS, _similarity(IA3_TASKS, 7))
    with open(root / "predict" / "lora" / "fisher" / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "x", "y"])
        for i, n in enumerate(NAMES):
            w.writerow([n, repr(float(np.cos(i))), repr(float(np.sin(i)))])
    (root / "predict" / "lora" / "fisher" / "layout_note.txt").write_text("synthetic circle layout\n")
    (root / "predict" / "lora" / "fisher_stability.json").write_text(json.dumps(
        {"k": 3, "mean_topk_overlap": 0.9, "per_task": {}, "spearman_all_pairs": 0.95}))
    (root / "transfer").mkdir()
    rng = np.random.default_rng(3)
    with open(root / "transfer" / "transfer_matrix.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", *TRANSFER_TASKS])
        for t in TRANSFER_TASKS:
            w.writerow([t, *["" if s == t else f"{rng.normal(0, 4):.4f}" for s in TRANSFER_TASKS]])
    pq = {emb: {"spearman_mean": 0.1 * i, "spearman_std": 0.05, "top3_hit_mean": 0.5 + 0.1 * i, "top3_hit_std": 0.1,
                "seeds": {"0": {"per_target": {t: {"spearman": 0.2, "hit": 1.0, "best_source": TRANSFER_TASKS[0]
                                                   if t != TRANSFER_TASKS[0] else TRANSFER_TASKS[1],
                                                   "predicted": [x for x in TRANSFER_TASKS if x != t][:3]}
                                               for t in TRANSFER_TASKS}}}}
          for i, emb in enumerate(("fisher", "weights", "data"))}
    (root / "transfer" / "predict_quality.json").write_text(json.dumps(pq, indent=1))
    (root / "compare").mkdir()
    with open(root / "compare" / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "method", "shots", "seed", "accuracy", "score", "metric", "sources"])
        for shots in (4, 16, "full"):
            for approach, base in (("pi-tuning", 0.6), ("target-only", 0.5), ("uniform-avg", 0.3)):
                for seed in ((0, 1) if shots != "full" else (0,)):
                    acc = base + 0.01 * seed + (0.1 if shots == "full" else 0.0)
                    w.writerow([COMPARE_TARGET, approach, shots, seed, acc, acc, "accuracy",
                                "" if approach == "target-only" else "mnist|textures"])
    files = {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"format": "pitune-study/1", "command": "synthetic (tests)", "plan": {}, "seeds": {"study": 0},
                "backbone": {"id": "synthetic"}, "versions": {}, "started": "2026-01-01T00:00:00+00:00",
                "finished": "2026-01-01T00:10:00+00:00", "stage_seconds": {"experts": 60.0}, "hardware": {},
                "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


@pytest.fixture
def study_dir(tmp_path) -> Path:
    return make_synthetic_study(tmp_path / "study")


@pytest.fixture
def study(study_dir) -> Study:
    return Study.open(study_dir)


# ----------------------------------------------------------------------------- opening / verifying

def test_open_synthetic_study(study):
    assert study.problems() == []
    assert study.task_names() == NAMES
    assert study.methods() == ["lora", "ia3"]
    assert study.embeddings("lora") == ["fisher", "weights", "data"]
    assert study.embeddings("ia3") == ["fisher"]
    assert study.expert_tasks("ia3") == IA3_TASKS
    assert study.manifest()["format"] == "pitune-study/1"


def test_missing_study_raises_with_rebuild_hint(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(StudyError) as err:
        Study.open(missing)
    assert err.value.problems == [f"{missing.resolve()} does not exist"]
    assert "pitune precompute --out" in str(err.value)
    assert rebuild_hint(missing)[0] == f"pitune precompute --out {missing}"
    assert "--quick" in rebuild_hint(missing)[1]


def test_incomplete_and_corrupt_study_are_reported(study_dir):
    (study_dir / "predict" / "lora" / "fisher" / "similarity.csv").write_text("task,a\na,1\n")
    (study_dir / "compare" / "results.csv").unlink()
    problems = Study(study_dir).problems()
    assert "corrupt (sha256 mismatch): predict/lora/fisher/similarity.csv" in problems
    assert "missing: compare/results.csv" in problems
    (study_dir / "manifest.json").unlink()
    problems = Study(study_dir).problems()
    assert len(problems) == 1 and "manifest.json is missing" in problems[0]


def test_default_study_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PITUNE_STUDY", str(tmp_path))
    assert default_study_path() == tmp_path
    monkeypatch.delenv("PITUNE_STUDY")
    assert default_study_path() == REPO / "precomputed"


# ----------------------------------------------------------------------------- reads

def test_top_k_with_measured_gains(study):
    names, S = study.similarity("lora", "fisher")
    for k in (1, 3, 5):
        top = study.top_k("sklearn_digits", k, "lora", "fisher")
        assert len(top) == k
        assert "sklearn_digits" not in [s.name for s in top]
        sims = [s.similarity for s in top]
        assert sims == sorted(sims, reverse=True)
        i = names.index("sklearn_digits")
        assert sims[0] == pytest.approx(max(S[i, j] for j in range(len(names)) if j != i))
    gains = study.measured_gains("sklearn_digits")
    assert set(gains) == set(TRANSFER_TASKS) - {"sklearn_digits"}
    top = study.top_k("sklearn_digits", 7, "lora", "fisher")
    for s in top:
        assert s.gain == (gains.get(s.name))
        assert s.modality == study.modality(s.name)
    assert study.measured_gains("bbc_topic") == {}  # not in the transfer matrix
    assert len(study.top_k("mnist", 99, "lora", "fisher")) == len(NAMES) - 1  # clamped


def test_task_graph_knn_and_threshold(study):
    G, summary = study.task_graph("lora", "fisher", mode="knn", k=2)
    assert set(G.nodes) == set(NAMES)
    assert all(G.degree(n) >= 2 for n in G)
    assert G.nodes["mnist"]["modality"] == "vision"
    assert G.nodes["mnist"]["accuracy"] == pytest.approx(0.7)
    members = sorted(m for c in summary for m in c["members"])
    assert members == sorted(NAMES)  # the communities partition the tasks
    for c in summary:
        assert c["modalities"] == sorted({G.nodes[m]["modality"] for m in c["members"]})
    G3, _ = study.task_graph("lora", "fisher", mode="knn", k=3)
    assert G3.number_of_edges() > G.number_of_edges()
    Gt, _ = study.task_graph("lora", "fisher", mode="threshold", threshold=0.6)
    assert all(w >= 0.6 for _, _, w in Gt.edges(data="weight"))
    names, S = study.similarity("lora", "fisher")
    assert Gt.number_of_edges() == int((np.triu(S, 1) >= 0.6).sum())


def test_other_files(study):
    names, coords, note = study.layout("lora", "fisher")
    assert names == NAMES and coords.shape == (len(NAMES), 2) and note == "synthetic circle layout"
    with pytest.raises(ValueError, match="no layout"):
        study.layout("lora", "weights")
    q = {r["embedding"]: r for r in study.quality_table()}
    assert set(q) == {"fisher", "weights", "data"}
    assert q["weights"]["top_k"] == "3" and q["weights"]["hit_mean"] == pytest.approx(0.6)
    assert study.target_quality("fisher", "textures")[0]["best_source"] == "movie_sentiment"
    rows = study.compare_results(COMPARE_TARGET)
    assert {r["shots"] for r in rows} == {4, 16, "full"}
    assert study.compare_results("mnist") == []
    assert study.compare_targets() == [COMPARE_TARGET]
    assert [a["task"] for a in study.ablation()] == ["mnist_digit_question", "snippet_face_mood"]
    assert study.fisher_stability()["k"] == 3
    assert study.experts_of("ia3").keys() == set(IA3_TASKS)


def test_names_never_become_paths(study):
    for bad in ("../../etc", "/etc/passwd", "lora/../../x", ""):
        with pytest.raises(ValueError):
            study.expert_dir("lora", bad)
        with pytest.raises(ValueError):
            study.expert_dir(bad, "mnist")
        with pytest.raises(ValueError):
            study.similarity("lora", bad)
        with pytest.raises(ValueError):
            study.top_k(bad, 3, "lora", "fisher")
    assert study.expert_dir("lora", "mnist") == study.root / "experts" / "lora" / "mnist"
    with pytest.raises(ValueError, match="no weights embedding for ia3"):
        study.similarity("ia3", "weights")


# ----------------------------------------------------------------------------- run configs

def test_transfer_config(study):
    cfg = study.transfer_config("sklearn_digits", ["mnist", "textures"], weights=[3, 1], shots="full", seed=2)
    assert isinstance(cfg, TransferConfig)  # the spec's run settings, validated once
    assert cfg.to_dict() == {"target": "sklearn_digits", "k": 2, "method": "lora", "embedding": "fisher", "shots": None,
                             "weights": [0.75, 0.25], "sources": ["mnist", "textures"], "seed": 2,
                             "study": str(study.root), "weights_only": False, "own_expert": True, "robustness": False}
    cfg = study.transfer_config("sklearn_digits", ["mnist"], weights="auto", shots=4, weights_only=True)
    assert cfg.weights == "auto" and cfg.shots == 4 and cfg.weights_only is True
    # hand-set weights are fixed: "weights only" would train nothing, so it is dropped
    assert study.transfer_config("mnist", ["textures"], weights=[1], weights_only=True).weights_only is False
    bad = [
        (("sklearn_digits", []), {}, "at least one source"),
        (("sklearn_digits", ["sklearn_digits"]), {}, "cannot be one of its own sources"),
        (("sklearn_digits", ["bbc_topic"]), {"method": "ia3"}, "no ia3 expert"),
        (("sklearn_digits", ["mnist", "textures"]), {"weights": [1]}, "got 1 weights for 2 sources"),
        (("sklearn_digits", ["mnist"]), {"weights": [-1]}, "non-negative"),
        (("sklearn_digits", ["mnist"]), {"weights": [0]}, "not all be zero"),
        (("sklearn_digits", ["mnist"]), {"weights": "magic"}, "weights must be"),
        (("sklearn_digits", ["mnist"]), {"shots": 0}, "shots must be at least 1"),
        (("no_such_task", ["mnist"]), {}, "unknown task"),
    ]
    for args, kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            study.transfer_config(*args, **kw)


def test_weights_helpers():
    assert normalise_weights([1, 1, 2]) == [0.25, 0.25, 0.5]
    assert initial_weights("uniform", [0.9, 0.1]) == [0.5, 0.5]
    assert initial_weights("auto", [0.6, 0.2]) == pytest.approx([0.75, 0.25])
    assert initial_weights("auto", [0.5, -1.0]) == pytest.approx([0.5 / (0.5 + 1e-6), 1e-6 / (0.5 + 1e-6)])
    assert initial_weights([2, 6], [0.1, 0.2]) == [0.25, 0.75]
    with pytest.raises(ValueError):
        initial_weights([1], [0.1, 0.2])
    with pytest.raises(ValueError):
        normalise_weights([])
    assert parse_shots("full") is None and parse_shots(None) is None and parse_shots("8") == 8


# ----------------------------------------------------------------------------- run files

def test_zip_directory(tmp_path):
    d = tmp_path / "expert"
    (d / "sub").mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00" * 100)
    os.symlink("/etc/passwd", d / "link")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("x")
    os.symlink(tmp_path / "outside", d / "linked_dir")
    data = zip_directory(d)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["expert/adapter_config.json", "expert/sub/w.bin"]
        assert zf.read("expert/sub/w.bin") == b"\x00" * 100
    with pytest.raises(FileNotFoundError):
        zip_directory(tmp_path / "missing")


def test_read_run_files_stays_in_runs_root(tmp_path):
    root = tmp_path / "runs"
    run = root / "20260101-000000-abcdef"
    (run / "expert").mkdir(parents=True)
    (run / "expert" / "adapter_config.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"target": "mnist"}))
    (run / "weights.json").write_text(json.dumps({"sources": ["a"], "history": [{"step": 0, "weights": [1.0]}]}))
    (run / "metrics.json").write_text("{not json")
    (run / "log.txt").write_text("[t] started\n")
    got = read_run_files(run, root)
    assert got["config"] == {"target": "mnist"}
    assert got["weights"]["sources"] == ["a"]
    assert "metrics" not in got and "not readable" in got["metrics_error"]
    assert got["expert_dir"] == str((run / "expert").resolve())
    assert got["log"] == "[t] started\n"
    for outside in (tmp_path, root, root / ".." / "elsewhere", Path("/etc")):
        with pytest.raises(ValueError, match="outside the runs directory"):
            read_run_files(outside, root)


# ----------------------------------------------------------------------------- the real study

def test_shipped_study_opens():
    root = Path(os.environ.get("PITUNE_TEST_STUDY") or REPO / "precomputed")
    if not (root / "manifest.json").is_file():
        pytest.skip(f"no complete study at {root} (build it with `pitune precompute --out {root}`)")
    study = Study.open(root)
    method = study.methods()[0]
    emb = study.embeddings(method)[0]
    names, S = study.similarity(method, emb)
    assert S.shape == (len(names), len(names))
    target = names[0]
    k = min(3, len(names) - 1)
    assert len(study.top_k(target, k, method, emb)) == k
    G, summary = study.task_graph(method, emb, k=min(2, len(names) - 1))
    assert sorted(m for c in summary for m in c["members"]) == sorted(names)
