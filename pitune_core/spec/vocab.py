"""pitune's vocabulary: every name a study, a run, the CLI and the dashboard share, each spelled once.

Plain Python (no torch, no numpy, nothing else of the project), so that the CLI's parsers, the
dashboard's widgets, the job validators and the workers all read the same records.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- expert types

#: the expert types pitune trains (peft methods); order = display order
EXPERT_TYPES = ("lora", "prompt", "ia3")
EXPERT_TYPE_LABELS = {"lora": "LoRA", "prompt": "prompt tuning", "ia3": "IA³"}
DEFAULT_EXPERT_TYPE = "lora"

# ----------------------------------------------------------------------------- tasks

MODALITIES = ("language", "vision", "vision-language")

# ----------------------------------------------------------------------------- embeddings and predictors

#: the task embeddings a study computes for every expert type (``predict/<type>/<embedding>/``)
EMBEDDINGS = ("fisher", "weights", "data")
DEFAULT_EMBEDDING = "fisher"
#: every predictor of :data:`pitune_core.predict.predictors.PREDICTORS`, by name, in its order
#: (predictors.py refuses to import if the two differ)
PREDICTOR_NAMES = ("fisher", "fisher_flat", "fisher_batch", "fisher_sampled", "fisher_probe", "data", "weights",
                   "same_modality", "random", "expert_accuracy", "expert_loglik", "logme", "knn_accuracy", "same_family")
#: a predictor drawn as a task graph lives in ``predict/<method>/predictor-<name>/`` and is offered
#: wherever an embedding is
PREDICTOR_PREFIX = "predictor-"
PREDICTOR_EMBEDDINGS = tuple(PREDICTOR_PREFIX + p for p in PREDICTOR_NAMES)
#: predictors that learn from measured transfer (:mod:`pitune_core.predict.learned`, issue 28): they read a
#: ground truth's gains of the *other* targets, so they are functions of a gain matrix, not of
#: ``(target, ctx)``, and are kept out of :data:`PREDICTOR_NAMES` (the rows a study's predictor stage computes)
LEARNED_PREDICTOR_NAMES = ("transfer_history", "combined")
#: every name a ground truth's plan may list and its quality table may score: the predictors of a study's
#: predictor stage, then those that learn from measured transfer (scored by the quality stage)
SCORED_PREDICTOR_NAMES = PREDICTOR_NAMES + LEARNED_PREDICTOR_NAMES


def predictor_of(embedding: str) -> str | None:
    """``"predictor-logme"`` -> ``"logme"``; None for an embedding that is not a known predictor."""
    name = embedding[len(PREDICTOR_PREFIX):] if embedding.startswith(PREDICTOR_PREFIX) else None
    return name if name in PREDICTOR_NAMES else None


def check_embedding(embedding: object) -> str:
    """``embedding`` if a run may rank its sources with it (an embedding or a predictor), else one line."""
    if not isinstance(embedding, str) or (embedding not in EMBEDDINGS and not predictor_of(embedding)):
        raise ValueError(f"unknown embedding {str(embedding)[:60]!r}; choose one of "
                         f"{', '.join((*EMBEDDINGS, *PREDICTOR_EMBEDDINGS))}")
    return embedding


# ----------------------------------------------------------------------------- run settings' defaults

#: examples per class of a few-shot run (``None`` = full data)
DEFAULT_SHOTS = 16
#: the few-shot sizes (examples per class) the dashboard's widgets offer, smallest first
SHOT_CHOICES = (1, 2, 4, 8, 16, 32, 64)
#: the same, then "full" (all training data: ``None`` in a config, ``--shots full`` on the CLI)
SHOT_OPTIONS = (*SHOT_CHOICES, "full")
#: the target data sizes a study measures (examples per class; ``None`` = full data): the few-shot
#: comparison's regimes and the ground truth's predictor sizes
STUDY_SHOTS = (4, 16, None)
#: sources a run interpolates when none are named
DEFAULT_K = 3
#: the fewest sources a run may interpolate
K_MIN = 1
#: the most sources the dashboard's slider offers (a run may ask for more on the CLI)
K_MAX_SLIDER = 10
#: examples per class of each pair of the pairwise transfer matrix (``transfer-matrix``)
PAIR_SHOTS = 8
#: neighbours per task of a study's kNN task graph (``graph.json``)
GRAPH_K = 3
#: the k of a predictor's quality metrics (``top3_hit``, ``ndcg3``) and of the Fisher stability's top-k
QUALITY_K = 3

# ----------------------------------------------------------------------------- robustness (issue 28)

#: the evaluation sets a tuned model is scored on with no further training (:mod:`pitune_core.tune.robustness`):
#: its own test set, a test set of another task of its family with the same labels, corrupted copies of its own
ROBUSTNESS_SETS = ("in-distribution", "shifted", "corrupted")
#: corruptions of a test set's images and texts (:mod:`pitune_core.data.robustness` documents each)
IMAGE_CORRUPTIONS = ("gaussian_noise", "blur", "contrast")
TEXT_CORRUPTIONS = ("typos", "casing")
CORRUPTIONS = IMAGE_CORRUPTIONS + TEXT_CORRUPTIONS
#: a corruption's severity levels (1 = mildest), and those scored unless others are asked for
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITIES = (3,)

# ----------------------------------------------------------------------------- approaches


@dataclass(frozen=True)
class Approach:
    """One approach :func:`pitune_core.tune.baselines.run_method` knows, with the properties that
    decide how it runs."""

    name: str
    #: "pi-tuning", "ablation" or "baseline"
    role: str
    #: trains the target's own expert on the run's data and ranks the sources by it (the top-k)
    ranks_sources: bool
    #: trains the own expert first (the rankers, and the π-style runs over random / all sources)
    own_expert_first: bool
    #: interpolates experts with InterpolatedExperts (π-Tuning's machinery)
    interpolates: bool
    #: needs LoRA experts (peft merges, LoraHub, Arrow)
    lora_only: bool
    #: tunes on the run's data after choosing (so it spends the rest of the step budget)
    tunes: bool
    #: in the shipped study's plan (its baselines list)
    shipped: bool
    help: str
    #: learns the mixing weights (an interpolating approach; the others keep them uniform)
    learns_weights: bool = False
    #: interpolates the target's own expert beside its sources (an interpolating approach)
    mixes_own: bool = False


def _a(name, role, ranks, own_first, interp, lora, shipped, help_, tunes=True, weights=False, own=False):
    return Approach(name, role, ranks, own_first, interp, lora, tunes, shipped, help_, weights, own)


#: every approach, in display order: the shipped plan's first, then the ablations and baselines added later
APPROACH_RECORDS = (
    _a("pi-tuning", "pi-tuning", True, True, True, False, True,
       "the paper's recipe: the own expert + the top-k predicted experts, softmax weights per layer and adapter "
       "position, weights and experts tuned jointly", weights=True, own=True),
    _a("pi-tuning-weights-only", "ablation", True, True, True, False, True, "π-Tuning with the experts frozen",
       weights=True, own=True),
    _a("uniform-avg", "baseline", True, True, True, False, True, "uniform average of the top-k experts, untuned",
       tunes=False),
    _a("uniform-avg-tuned", "baseline", True, True, True, False, True,
       "uniform average of the top-k experts, experts tuned"),
    _a("random-k", "baseline", False, True, True, False, True, "π-Tuning over k random sources",
       weights=True, own=True),
    _a("best-single", "baseline", True, True, False, False, True,
       "the most similar source as initialisation, tuned"),
    _a("all-experts", "baseline", False, True, True, False, True, "π-Tuning over every source",
       weights=True, own=True),
    _a("target-only", "baseline", False, False, False, False, True, "a fresh expert on the target"),
    _a("full-finetune", "baseline", False, False, False, False, True, "the whole trunk tuned"),
    _a("peft-linear", "baseline", True, True, False, True, True,
       "peft's linear add_weighted_adapter merge of the top-k LoRAs, then tuned"),
    _a("peft-ties", "baseline", True, True, False, True, True, "peft's TIES merge of the top-k LoRAs, then tuned"),
    _a("peft-dare", "baseline", True, True, False, True, True, "peft's DARE merge of the top-k LoRAs, then tuned"),
    _a("pi-tuning-no-own", "ablation", True, True, True, False, False,
       "π-Tuning with the own expert left out of the interpolation", weights=True),
    _a("pi-tuning-global", "ablation", True, True, True, False, False, "π-Tuning with one weight vector",
       weights=True, own=True),
    _a("lorahub", "baseline", False, False, False, True, False,
       "LoraHub: gradient-free weights for every source LoRA, used as found", tunes=False),
    _a("lorahub-tuned", "baseline", False, False, False, True, False, "LoraHub's merge, then tuned"),
    _a("arrow", "baseline", False, False, False, True, False,
       "peft's Arrow routing over the source LoRA library (training-free)", tunes=False),
)
APPROACHES_BY_NAME = {a.name: a for a in APPROACH_RECORDS}
#: every approach's name
APPROACHES = tuple(a.name for a in APPROACH_RECORDS)
#: the approaches of the shipped study (kept as its plan's list)
BASELINES = tuple(a.name for a in APPROACH_RECORDS if a.shipped)
PI_STYLE = tuple(a.name for a in APPROACH_RECORDS if a.interpolates)
LORA_ONLY = tuple(a.name for a in APPROACH_RECORDS if a.lora_only)
#: approaches that rank sources (and so train the target's own expert first)
SELECTING = tuple(a.name for a in APPROACH_RECORDS if a.ranks_sources)
#: peft's add_weighted_adapter merges of the top-k LoRAs
PEFT_MERGES = tuple(a.name for a in APPROACH_RECORDS if a.lora_only and a.ranks_sources)


# the pre-registered protocol's groups of approaches (pitune_core.study.protocol), in the order its
# plans and report list them
#: run on every target × shots × seed
CORE = ("pi-tuning", "target-only", "full-finetune", "best-single", "peft-linear", "lorahub")
#: the recipe's ablations (own expert out, one global weight vector, experts frozen)
ABLATIONS = ("pi-tuning-no-own", "pi-tuning-global", "pi-tuning-weights-only")
#: the other baselines
OTHERS = ("uniform-avg", "uniform-avg-tuned", "random-k", "all-experts", "peft-ties", "peft-dare", "lorahub-tuned",
          "arrow")
#: the transfer approaches π-Tuning is compared with ("best other")
TRANSFER = ("best-single", "peft-linear", "lorahub", "lorahub-tuned", "uniform-avg", "uniform-avg-tuned", "random-k",
            "all-experts", "peft-ties", "peft-dare", "arrow")
assert set(ABLATIONS) == {a.name for a in APPROACH_RECORDS if a.role == "ablation"}
assert set(CORE + ABLATIONS + OTHERS) == set(APPROACHES) and len(CORE + ABLATIONS + OTHERS) == len(APPROACHES)


def check_approach(name: object, among: tuple[str, ...] = APPROACHES) -> str:
    if name not in among:
        raise ValueError(f"unknown approach {name!r}; choose from {', '.join(among)}")
    return name  # type: ignore[return-value]


# ----------------------------------------------------------------------------- run statuses

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
RUN_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
#: statuses a run never leaves on its own (``resume`` can requeue failed ones)
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: statuses in which nothing is executing the run any more
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED, INTERRUPTED})
RESUMABLE_STATUSES = frozenset({INTERRUPTED, FAILED})
#: statuses of a run that is waiting or executing
ACTIVE_STATUSES = (QUEUED, RUNNING)

# ----------------------------------------------------------------------------- file names

#: an expert's metadata file, beside its peft adapter
EXPERT_META_FILE = "pitune_expert.json"
#: a hub's top-k table (:mod:`pitune_core.study.hub`): no matrix
NEIGHBORS_FILE = "neighbors.csv"

# ----------------------------------------------------------------------------- image pathway bars

#: the image pathway's bars (issue 27): a vision expert within this many points of its linear probe;
#: a vision-language expert this many points above max(zero-shot, majority), and losing at least as
#: many points when its images are blanked
PROBE_GAP_POINTS = 5.0
VL_MARGIN_POINTS = 15.0

# ----------------------------------------------------------------------------- budget rules

#: how a run's step budget is shared (``Recipe.budget``, issue 28). ``equal``: every approach tunes on
#: the target for the whole budget after source selection; a selecting approach's own expert (its
#: selection cost) is counted apart, the same for every one of them. ``split``: the own expert's steps
#: come out of the budget (the previous studies' rule: a selecting approach tunes for what is left)
BUDGET_RULES = ("equal", "split")
#: the rule of a protocol plan that names none (plans written before issue 28)
LEGACY_BUDGET_RULE = "split"
