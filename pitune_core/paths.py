"""Where pitune's files live: the one owner of every location.

Every default location (the study, the run registry, the cache, the user task store) and every
sub-path inside a study directory is spelled here and nowhere else, so a rename is one edit and an
environment variable is honoured everywhere. Plain :mod:`pathlib`, no I/O at import time, no
torch: every layer (and the dashboard) may import it.

Environment variables:

- ``PITUNE_STUDY``: the study directory (default: ``precomputed/`` beside the package);
- ``PITUNE_RUNS_DB``: the run registry database (default: ``runs/registry.sqlite`` in the working
  directory);
- ``PITUNE_CACHE``: downloaded archives, task data and image features (default ``~/.cache/pitune``);
- ``PITUNE_PROJECTOR``: a projector directory to use instead of the study's.
- ``PITUNE_TASKS``: the user task store (default ``$XDG_DATA_HOME/pitune/tasks``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: the repository (or site-packages) folder that holds ``pitune_core/`` and ``dashboard/``
REPO_ROOT = Path(__file__).resolve().parent.parent
#: the study shipped with the repository
SHIPPED_STUDY = REPO_ROOT / "precomputed"
#: the Streamlit app
DASHBOARD_APP = REPO_ROOT / "dashboard" / "app.py"
#: the committed study plans (``plans/*.json``)
PLANS_DIR = REPO_ROOT / "plans"

#: file names inside an embedding directory (``predict/EXPERT_TYPE/EMBEDDING/``)
EMBEDDINGS_FILE = "embeddings.safetensors"
SIMILARITY_FILE = "similarity.csv"
SIMILARITY_COSINE_FILE = "similarity_cosine.csv"
GRAPH_FILE = "graph.json"
#: the folder of the predictors' shipped source-side rows inside ``predict/EXPERT_TYPE/``
SOURCE_SIDE_DIR = "source-side"
LAYOUT_FILE = "layout.csv"
LAYOUT_NOTE_FILE = "layout_note.txt"
#: file names of a comparison (``compare/`` in a study, or ``pitune compare --out DIR``)
RUNS_LOG_FILE = "runs.jsonl"
RESULTS_FILE = "results.csv"


def default_study() -> Path:
    """``$PITUNE_STUDY`` if set, else the shipped ``precomputed/`` (an absolute path either way)."""
    env = os.environ.get("PITUNE_STUDY")
    return Path(env).expanduser().resolve() if env else SHIPPED_STUDY


def plan_path(p: str | Path) -> Path:
    """A plan file named by a study plan: as given when absolute or present from the working
    directory, else relative to the repository (``plans/few-shot-v2.json`` works from anywhere)."""
    p = Path(p)
    return p if p.is_absolute() or p.is_file() else REPO_ROOT / p


def default_runs_db() -> Path:
    """``$PITUNE_RUNS_DB`` if set, else ``./runs/registry.sqlite``."""
    return Path(os.environ.get("PITUNE_RUNS_DB") or os.path.join("runs", "registry.sqlite"))


def cache_dir(create: bool = True) -> Path:
    """Root of pitune's cache (``$PITUNE_CACHE``, default ``~/.cache/pitune``)."""
    root = Path(os.environ.get("PITUNE_CACHE") or Path.home() / ".cache" / "pitune")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def runs_root() -> Path:
    """Default parent of run directories written by ``pitune transfer`` / ``compare`` (``./runs``)."""
    return Path("runs")


def user_tasks_dir() -> Path:
    """The user task store (``pitune task add``): ``$PITUNE_TASKS``, else ``$XDG_DATA_HOME/pitune/tasks``,
    else ``~/.local/share/pitune/tasks``; the user's data, never inside the package."""
    env = os.environ.get("PITUNE_TASKS")
    if env:
        return Path(env).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().resolve() / "pitune" / "tasks"


@dataclass(frozen=True)
class StudyPaths:
    """Every sub-path of a study directory (what ``pitune precompute`` writes, what the reader reads).

    Names given to the methods (expert types, tasks, embeddings) are the caller's responsibility
    to validate; :mod:`pitune_core.study.read.reader` only passes names the study itself lists.
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # top level
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "REPORT.md"

    @property
    def tasks_json(self) -> Path:
        return self.root / "tasks.json"

    @property
    def backbone(self) -> Path:
        return self.root / "backbone"

    @property
    def projector_meta(self) -> Path:
        return self.backbone / "projector.json"

    # experts
    @property
    def experts(self) -> Path:
        return self.root / "experts"

    @property
    def expert_summary(self) -> Path:
        return self.experts / "summary.csv"

    def experts_of(self, expert_type: str) -> Path:
        return self.experts / expert_type

    def expert(self, expert_type: str, task: str) -> Path:
        return self.experts / expert_type / task

    # ablation
    @property
    def ablation(self) -> Path:
        return self.root / "ablation"

    @property
    def blank_images(self) -> Path:
        return self.ablation / "blank_images.csv"

    @property
    def linear_probe(self) -> Path:
        return self.ablation / "linear_probe.csv"

    # predict
    @property
    def predict(self) -> Path:
        return self.root / "predict"

    def predict_of(self, expert_type: str) -> Path:
        return self.predict / expert_type

    def embedding_dir(self, expert_type: str, embedding: str) -> Path:
        return self.predict / expert_type / embedding

    def similarity_csv(self, expert_type: str, embedding: str) -> Path:
        return self.embedding_dir(expert_type, embedding) / SIMILARITY_FILE

    def source_side(self, expert_type: str) -> Path:
        """The predictors' source-side rows the study ships (``{kind}-{source}-{key}.npz`` and the
        ``context.json`` of the settings they were made with): made by the ground truth's predictors
        stage, read at run time so that nothing source-side is recomputed on a user's machine."""
        return self.predict / expert_type / SOURCE_SIDE_DIR

    def embeddings_file(self, expert_type: str, embedding: str) -> Path:
        return self.embedding_dir(expert_type, embedding) / EMBEDDINGS_FILE

    def graph_json(self, expert_type: str, embedding: str) -> Path:
        return self.embedding_dir(expert_type, embedding) / GRAPH_FILE

    def layout_csv(self, expert_type: str, embedding: str) -> Path:
        return self.embedding_dir(expert_type, embedding) / LAYOUT_FILE

    def fisher_stability(self, expert_type: str) -> Path:
        return self.predict / expert_type / "fisher_stability.json"

    # transfer (the measured ground truth)
    @property
    def transfer(self) -> Path:
        return self.root / "transfer"

    @property
    def transfer_pairs(self) -> Path:
        return self.transfer / "pairs.jsonl"

    @property
    def transfer_budget(self) -> Path:
        return self.transfer / "budget.json"

    @property
    def transfer_matrix(self) -> Path:
        return self.transfer / "transfer_matrix.csv"

    @property
    def predict_quality(self) -> Path:
        return self.transfer / "predict_quality.json"

    # the pre-registered protocol: one folder per plan (``pitune study run``)
    def protocol(self, plan_name: str) -> Path:
        return self.root / "protocol" / plan_name

    # the transfer ground truth and the predictors measured against it (``pitune transfer-study``)
    def groundtruth(self, plan_name: str) -> Path:
        return self.root / "groundtruth" / plan_name

    # compare (π-Tuning against the baselines)
    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def compare_runs(self) -> Path:
        return self.compare / RUNS_LOG_FILE

    @property
    def results_csv(self) -> Path:
        return self.compare / RESULTS_FILE
