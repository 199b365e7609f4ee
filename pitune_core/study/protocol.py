"""The pre-registered few-shot protocol: a committed plan, runs keyed by their full configuration.

A plan file (``plans/*.json``) fixes, before any result exists, what is run: the targets (chosen by
a rule the file states and :func:`select_targets` re-derives), the shots, the seeds, the approaches
(the core ones on every target × shots × seed, ablations and the other baselines at 16 shots only),
``k``, the expert type, the budget rule and the π-Tuning recipe, and whether every run's model is also
scored for robustness (``robustness``; a ``pilot`` plan, 2 seeds allowed, only sizes another plan's
seeds: :mod:`pitune_core.study.preregister_protocol`). :func:`run_plan` executes it
against a study (its source experts, their Fisher embeddings and its backbone):

- every run is keyed by a hash of its full configuration: the plan's content, the job (target,
  approach, shots, seed) and the context it runs in (backbone identity, the source experts' and
  embeddings' bytes, the data version and the duplicate table). A resumed run reuses a logged row
  only under the same key, so a row made under another plan, another backbone or other sources is
  never reused;
- ``runs.jsonl`` is append-only (one JSON object per finished or failed run); a killed run resumes
  where it stopped, and ``PITUNE_SHARD=i/n`` splits the jobs between processes or machines;
- every planned row is reported: ``results.csv`` lists each planned run with its status (done,
  failed, missing); nothing is filtered;
- the backbone's alignment must not have seen a target (:func:`alignment_check`); the shipped
  projector did, so runs on it are refused unless explicitly allowed (smoke tests only).

``pitune study run --plan plans/few-shot-v2.json --study STUDY --out DIR`` is the command.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pitune_core.spec.vocab import BUDGET_RULES, DEFAULT_K, EXPERT_TYPES, LEGACY_BUDGET_RULE, STUDY_SHOTS
from pitune_core.common import check_plan_name, read_jsonl, sha256_file
from pitune_core.spec.vocab import ABLATIONS, CORE, OTHERS, TRANSFER  # noqa: F401  (the plan's approach groups)
from pitune_core.study.manifest import register_files
from pitune_core.study.read.results import ROBUSTNESS_FILE, robustness_rows, write_robustness
from pitune_core.paths import StudyPaths, cache_dir

PLAN_FORMAT = "pitune-protocol-plan/1"
MAX_PLAN_BYTES = 1 << 20
RESULT_COLUMNS = ("key", "target", "approach", "shots", "seed", "status", "score", "accuracy", "metric", "steps_select",
                  "steps_tune", "steps_total", "sources", "selection", "time_s", "cpu_s")


#: fields added to :class:`ProtocolPlan` after plans were committed, with the default an older plan has;
#: left out of a plan's serialisation while at that default (:meth:`ProtocolPlan.as_dict`)
LATE_FIELDS = {"robustness": False, "pilot": False}


class PlanError(ValueError):
    """A plan file that is not a valid protocol plan."""


@dataclass
class ProtocolPlan:
    name: str
    rule: dict
    targets: list[str]
    shots: list  # ints, or None for full data
    seeds: list[int]
    core: list[str] = field(default_factory=lambda: list(CORE))
    extra: list[str] = field(default_factory=lambda: list(ABLATIONS + OTHERS))
    extra_shots: list = field(default_factory=lambda: [16])
    k: int = DEFAULT_K
    method: str = "lora"
    budget: str = ("few-shot: 5 epochs of the shots clamped to [30, 100] steps; full data: 3 epochs, at most 400 "
                   "steps (the study experts' budget); selecting approaches spend recipe.select_fraction of it on "
                   "the target's own expert; recipe.budget says whether that comes out of their tuning steps "
                   "('split', plans without it) or on top of them ('equal')")
    recipe: dict = field(default_factory=dict)
    notes: str = ""
    #: also score every run's final model, with no further training, on the target's shifted and corrupted
    #: test sets (:func:`pitune_core.tune.robustness.score_robustness`; ``TransferConfig.robustness`` of a
    #: single run): the row's ``result.robustness`` in ``runs.jsonl``
    robustness: bool = False
    #: a pilot: its results size another plan's seeds (:mod:`pitune_core.study.preregister_protocol`) and are
    #: never evidence themselves; the only kind of plan allowed 2 seeds
    pilot: bool = False

    def jobs(self) -> list[dict]:
        """Every planned run, in the order a resumed study fills them: regime by regime (the plan's
        shots order), within a regime the core approaches first, seed by seed. A study stopped part
        way through thus holds complete, paired comparisons (every target and seed of a regime)
        rather than a thin slice of every regime. The order is not part of a run's key."""
        out = []
        for shots in self.shots:
            tiers = [self.core] + ([self.extra] if shots in self.extra_shots else [])
            for approaches in tiers:
                for seed in self.seeds:
                    for t in self.targets:
                        for a in approaches:
                            out.append({"target": t, "approach": a, "shots": shots, "seed": seed})
        return out

    def as_dict(self) -> dict:
        """The plan's fields, less those added after plans were first committed while they hold their
        default (:data:`LATE_FIELDS`): an older plan's file, digest and run keys stay what they were."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in LATE_FIELDS or v != LATE_FIELDS[k]}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def recipe_obj(self):
        from pitune_core.tune.baselines import Recipe  # lazy: loads torch

        return Recipe(**{"budget": LEGACY_BUDGET_RULE, **self.recipe})  # a plan that names no rule predates it


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PlanError(msg)


def parse_plan(obj: dict) -> ProtocolPlan:
    """Validate a plan object (untrusted JSON) and return it."""
    from pitune_core.data.tasks import TASKS  # lazy: loads safetensors
    from pitune_core.tune.baselines import APPROACHES, Recipe  # lazy: loads torch

    _check(isinstance(obj, dict), "a plan must be a JSON object")
    _check(obj.get("format") == PLAN_FORMAT, f"not a protocol plan (format must be {PLAN_FORMAT!r})")
    fields = {f for f in ProtocolPlan.__dataclass_fields__}
    unknown = sorted(set(obj) - fields - {"format"})
    _check(not unknown, f"unknown plan field(s): {', '.join(unknown)}")
    for f in ("name", "rule", "targets", "shots", "seeds"):
        _check(f in obj, f"the plan lacks {f!r}")
    try:
        check_plan_name(obj["name"])
    except ValueError as e:
        raise PlanError(str(e)) from None
    _check(isinstance(obj["rule"], dict) and isinstance(obj["rule"].get("text"), str), "rule must hold a 'text'")
    tg = obj["targets"]
    _check(isinstance(tg, list) and tg and all(isinstance(t, str) for t in tg), "targets must be a list of task names")
    bad = [t for t in tg if t not in TASKS]
    _check(not bad, f"unknown target task(s): {', '.join(map(repr, bad[:5]))}")
    _check(len(set(tg)) == len(tg), "targets must not repeat")
    for key in ("shots", "extra_shots"):
        v = obj.get(key, [16])
        _check(isinstance(v, list) and v and all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1)
                                                 for s in v), f"{key} must be a list of positive ints or null (full data)")
    for key in LATE_FIELDS:
        _check(isinstance(obj.get(key, False), bool), f"{key} must be true or false")
    seeds, least = obj["seeds"], 2 if obj.get("pilot", False) else 3
    _check(isinstance(seeds, list) and len(seeds) >= least and len(set(seeds)) == len(seeds)
           and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds),
           f"seeds must be at least {least} distinct non-negative ints" + ("" if least == 2 else " (2 for a pilot)"))
    for key in ("core", "extra"):
        v = obj.get(key, [])
        _check(isinstance(v, list) and all(a in APPROACHES for a in v),
               f"{key} must list known approaches ({', '.join(APPROACHES)})")
    k = obj.get("k", DEFAULT_K)
    _check(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= len(TASKS) - 1, "k out of range")
    _check(obj.get("method", "lora") in EXPERT_TYPES, f"method must be one of {', '.join(EXPERT_TYPES)}")
    recipe = obj.get("recipe", {})
    _check(isinstance(recipe, dict) and set(recipe) <= set(Recipe.__dataclass_fields__), "recipe has unknown fields")
    _check(recipe.get("budget", LEGACY_BUDGET_RULE) in BUDGET_RULES,
           f"recipe.budget must be one of {', '.join(BUDGET_RULES)}")
    kw = {k: v for k, v in obj.items() if k != "format"}
    return ProtocolPlan(**kw)


def load_plan(path: str | Path) -> ProtocolPlan:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} does not exist")
    if path.stat().st_size > MAX_PLAN_BYTES:
        raise PlanError(f"plan file {path} is larger than {MAX_PLAN_BYTES} bytes")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"plan file {path} is not valid JSON ({e})") from None
    return parse_plan(obj)


def plan_to_json(plan: ProtocolPlan) -> str:
    return json.dumps({"format": PLAN_FORMAT, **plan.as_dict()}, indent=1) + "\n"


# ----------------------------------------------------------------------------- the target rule

TARGET_RULE = ("every task of the suite whose own full-data {method} expert in {summary} beats both the "
               "bare backbone's zero-shot score and the majority-class score by at least {margin} points of "
               "its headline metric, and whose every class has at least {min_shots} training examples "
               "(so {min_shots}-shot runs exist); the rule must give at least {min_targets} targets "
               "covering all three modalities. Zero-shot in that summary was measured with the shipped "
               "projector, whose alignment saw some of these tasks: their zero-shot is inflated, which can "
               "only exclude a task, never add one.")


def select_targets(summary_csv: str | Path, method: str = "lora", margin: float = 5.0, min_shots: int = 16,
                   min_targets: int = 12) -> tuple[list[str], list[dict]]:
    """Targets by :data:`TARGET_RULE` (in suite order) and the per-task evidence behind the choice."""
    import numpy as np

    from pitune_core.data.tasks import MODALITIES, TASKS, load_raw_task_data  # lazy: loads safetensors

    with open(summary_csv, newline="") as f:
        rows = {r["task"]: r for r in csv.DictReader(f) if r["method"] == method}
    chosen, evidence = [], []
    for name, spec in TASKS.items():
        r = rows.get(name)
        if r is None:
            evidence.append({"task": name, "chosen": False, "why": "no expert in the summary"})
            continue
        expert, zero, major = (100 * float(r[c]) for c in ("expert", "zero_shot", "majority"))
        counts = np.bincount(load_raw_task_data(spec).train.labels, minlength=spec.num_classes)
        ok_margin = expert - max(zero, major) >= margin
        ok_shots = int(counts.min()) >= min_shots
        evidence.append({"task": name, "modality": spec.modality, "expert": round(expert, 2), "zero_shot": round(zero, 2),
                         "majority": round(major, 2), "margin": round(expert - max(zero, major), 2),
                         "min_class_train": int(counts.min()), "chosen": ok_margin and ok_shots})
        if ok_margin and ok_shots:
            chosen.append(name)
    mods = {TASKS[t].modality for t in chosen}
    if len(chosen) < min_targets or mods != set(MODALITIES):
        raise PlanError(f"the target rule gives {len(chosen)} targets over {sorted(mods)}; it needs at least "
                        f"{min_targets} covering {', '.join(MODALITIES)}")
    return chosen, evidence


def make_plan(summary_csv: str | Path = "precomputed/experts/summary.csv", name: str = "few-shot-v2",
              margin: float = 5.0, min_shots: int = 16, min_targets: int = 12) -> ProtocolPlan:
    """The plan the rule gives (what ``plans/few-shot-v2.json`` holds)."""
    from pitune_core.tune.baselines import Recipe  # lazy: loads torch

    targets, evidence = select_targets(summary_csv, "lora", margin, min_shots, min_targets)
    text = TARGET_RULE.format(method="lora", summary=summary_csv, margin=margin, min_shots=min_shots,
                              min_targets=min_targets)
    return ProtocolPlan(
        name=name, targets=targets, shots=list(STUDY_SHOTS), seeds=[0, 1, 2],
        rule={"text": text, "summary": str(summary_csv), "method": "lora", "margin_points": margin,
              "min_shots": min_shots, "min_targets": min_targets, "evidence": evidence},
        recipe=asdict(Recipe()),
        notes=("Core approaches run on every target x shots x seed; the recipe's ablations and the other "
               "baselines at 16 shots only. Source experts, their Fisher embeddings and the backbone come from "
               "the study given to `pitune study run --study`; that study must be built with a projector "
               "aligned on the clip-art corpus (pitune_core.model.align), never on a target. Every planned run "
               "is reported; none is filtered."))


# ----------------------------------------------------------------------------- context and keys

def alignment_check(study: str | Path, targets: list[str]) -> dict:
    """What the study's projector was aligned on and whether that touches a target's evaluation data.

    Returns ``{"corpus", "clean", "touched": [targets], "detail"}``. A projector aligned on task
    data ("tasks" corpus, e.g. the shipped one) touches every image target (its tasks share images
    with others) and every target it was aligned on, so it is clean only for a plan of language
    targets it never saw (the projector maps images; the text trunk is the frozen pre-trained one);
    a projector of unknown alignment is never clean; a clip-art projector is clean when no clip-art
    image equals or nearly equals an image of a target's val/test split.
    """
    from pitune_core.data.tasks import get_task  # lazy: loads safetensors
    from pitune_core.model.backbone import PROJECTOR_META  # lazy: loads torch

    meta_path = StudyPaths(study).backbone / PROJECTOR_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    image_targets = [t for t in targets if get_task(t).modality != "language"]
    corpus = meta.get("corpus") or ("tasks" if meta.get("tasks") else "unknown")
    if corpus == "tasks" or corpus == "unknown":
        touched = sorted(set(image_targets) | (set(targets) & set(meta.get("tasks", []))))
        return {"corpus": corpus, "clean": corpus == "tasks" and not touched, "touched": touched,
                "detail": f"aligned on the training splits of {', '.join(meta.get('tasks', [])) or 'unknown data'}"}
    from pitune_core.model.align import check_disjoint, clipart_corpus  # lazy: loads torch

    overlap = check_disjoint(clipart_corpus()["images"], image_targets)
    touched = sorted({k.split("/")[0] for k, v in overlap.items() if v["exact"] or v["near"]})
    return {"corpus": corpus, "clean": not touched, "touched": touched, "detail": "clip-art corpus, checked by "
            "content hash and difference hash against every target's val and test images"}


def run_context(study: str | Path, method: str, targets: list[str]) -> dict:
    """What a row's validity depends on besides the plan and the job."""
    from pitune_core.data.dedup import table  # lazy: loads safetensors
    from pitune_core.data.tasks import DATA_VERSION  # lazy: loads safetensors
    from pitune_core.model.backbone import PROJECTOR_FILE, projector_id  # lazy: loads torch

    paths = StudyPaths(study)
    experts = paths.experts_of(method)
    h = hashlib.sha256()
    for d in sorted(p for p in experts.iterdir() if (p / "adapter_model.safetensors").exists()):
        h.update(d.name.encode() + b"\0" + sha256_file(d / "adapter_model.safetensors").encode())
    emb = paths.embeddings_file(method, "fisher")
    dedup = hashlib.sha256(json.dumps(table(), sort_keys=True).encode()).hexdigest()[:16]
    return {"backbone_id": projector_id(paths.backbone) if (paths.backbone / PROJECTOR_FILE).exists() else None,
            "sources": h.hexdigest()[:16], "embeddings": sha256_file(emb)[:16] if emb.exists() else None,
            "data_version": DATA_VERSION, "dedup": dedup}


def job_key(plan: ProtocolPlan, job: dict, context: dict) -> str:
    blob = json.dumps({"plan": plan.as_dict(), "job": job, "context": context}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- running

def _records(log: Path) -> list[dict]:
    return read_jsonl(log)


def _open_out(out: Path, plan: ProtocolPlan) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pf = out / "plan.json"
    text = plan_to_json(plan)
    if pf.exists() and pf.read_text() != text:
        raise PlanError(f"{out} holds runs of another plan ({pf} differs); give another output directory")
    if not pf.exists():
        pf.write_text(text)
    return out / "runs.jsonl"


def load_study_sources(study: str | Path, method: str):
    """The study's source experts with their similarities and Fisher embeddings (protocol selection)."""
    from pitune_core.predict.embeddings import load_embeddings  # lazy: loads torch
    from pitune_core.study.sources import load_sources  # lazy: loads torch

    sources = load_sources(study, method)
    emb = StudyPaths(study).embeddings_file(method, "fisher")
    if not emb.exists():
        raise PlanError(f"study {study} has no {method} Fisher embeddings ({emb}); run its embeddings stage")
    sources.embeddings = load_embeddings(emb)
    return sources


def run_plan(plan: ProtocolPlan, study: str | Path, out: str | Path, backbone=None, limit: int | None = None,
             allow_unclean_alignment: bool = False, on_run: Callable[[int, int, dict], None] | None = None,
             workdir: str | Path | None = None, sample: bool = False) -> dict:
    """Run (or resume) the plan's jobs of this shard; returns ``{"ran", "skipped", "failed", "log"}``.

    ``sample=True`` runs one seeded job per (approach, regime) cell instead (full data first): a few
    real runs to measure per-run times for :func:`estimate`, with ``limit`` capping them."""
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.study.transfer import take_shard  # lazy: loads torch
    from pitune_core.tune.baselines import run_method  # lazy: loads torch
    from pitune_core.tune.side_cache import SideCache  # lazy: loads torch

    out = Path(out)
    align = alignment_check(study, plan.targets)
    if not align["clean"] and not allow_unclean_alignment:
        raise PlanError(f"the study's projector was aligned on data that touches target(s) "
                        f"{', '.join(align['touched'])} ({align['detail']}); build the study with a clip-art "
                        f"projector (`pitune align`, default corpus) first")
    context = {**run_context(study, plan.method, plan.targets), "alignment_clean": align["clean"]}
    log = _open_out(out, plan)
    register_files(study, [out / "plan.json", log])
    jobs = take_shard(plan.jobs() if not sample else sample_jobs(plan))
    done = {r["key"] for r in _records(log) if r.get("status") == "done"}
    sources = load_study_sources(study, plan.method)
    bb = backbone or UnifiedBackbone.load(StudyPaths(study).backbone)
    recipe = plan.recipe_obj()
    # the approaches of a (target, shots, seed) share its target side, built once (tune/side_cache.py)
    sides = SideCache(cache_dir() / "target-sides", json.dumps(context, sort_keys=True))
    ran = skipped = failed = 0
    for i, job in enumerate(jobs):
        key = job_key(plan, job, context)
        if key in done or key in (done := {r["key"] for r in _records(log) if r.get("status") == "done"}):
            skipped += 1
            continue
        if limit is not None and ran + failed >= limit:
            break
        t0, c0 = time.time(), time.process_time()
        try:
            # a robustness plan scores each final model on its target's shifted / corrupted sets, corrupted
            # with the run's seed (every approach of a target and seed sees the same corrupted copies)
            more = {"robustness": {"seed": job["seed"]}} if plan.robustness else {}
            r = run_method(job["approach"], job["target"], sources, bb, plan.method, k=plan.k, shots=job["shots"],
                           seed=job["seed"], recipe=recipe, workdir=workdir, side_cache=sides, **more)
            rec = {"key": key, "status": "done", "job": job, "context": context, "result": r,
                   "time_s": round(time.time() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                   "threads": _threads()}
            ran += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # logged and retried on resume; the study goes on
            rec = {"key": key, "status": "failed", "job": job, "context": context,
                   "error": "".join(traceback.format_exception_only(e)).strip()[-2000:],
                   "time_s": round(time.time() - t0, 2)}
            failed += 1
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        register_files(study, [log])  # the study keeps verifying while its protocol log grows
        if on_run:
            on_run(i + 1, len(jobs), rec)
    return {"ran": ran, "skipped": skipped, "failed": failed, "log": str(log), "alignment": align}


def sample_jobs(plan: ProtocolPlan, seed: int = 0) -> list[dict]:
    """One job per (approach, regime) cell, picked with ``seed``: the core approaches' cells first
    (each approach at full data, 16 and 4 shots in turn, so a few runs already span the regimes),
    then the 16-shot extras."""
    import numpy as np

    cells: dict[tuple, list[dict]] = {}
    for j in plan.jobs():
        cells.setdefault((j["shots"] is not None, -(j["shots"] or 0), j["approach"]), []).append(j)
    rng = np.random.default_rng(seed)
    order = sorted(cells, key=lambda c: (c[2] not in plan.core, plan.core.index(c[2]) if c[2] in plan.core else 0,
                                         c[2], c[0], c[1]))
    return [cells[c][int(rng.integers(len(cells[c])))] for c in order]


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def collect(plan: ProtocolPlan, out: str | Path, context: dict) -> list[dict]:
    """Every planned run (all shards) with its status and result; nothing is filtered."""
    recs = _records(Path(out) / "runs.jsonl")
    by_key: dict[str, dict] = {}
    for r in recs:  # a later "done" wins over an earlier failure of the same key
        if r.get("status") == "done" or r["key"] not in by_key:
            by_key[r["key"]] = r
    rows = []
    for job in plan.jobs():
        key = job_key(plan, job, context)
        r = by_key.get(key)
        row = {"key": key, **job, "status": "missing" if r is None else r["status"]}
        if r is not None and r["status"] == "done":
            res = r["result"]
            row.update(score=res["score"], accuracy=res["accuracy"], metric=res["metric"],
                       steps_select=res["steps"]["select"], steps_tune=res["steps"]["tune"],
                       steps_total=res["steps"]["total"], sources="|".join(res.get("sources", [])),
                       selection=res.get("selection"), time_s=r["time_s"], cpu_s=r.get("cpu_s"))
            if res.get("robustness") is not None:  # scored on shifted and corrupted sets (robustness.csv)
                row["robustness"] = res["robustness"]
        rows.append(row)
    return rows


def write_results(plan: ProtocolPlan, out: str | Path, context: dict, study: str | Path | None = None) -> Path:
    """Write ``results.csv`` (every planned run with its status), ``robustness.csv`` (the robustness
    rows of the done runs that have them; only once some run has, then kept current) and ``report.md``; with ``study``,
    register them in that study's manifest when ``out`` lies inside it, and rewrite the study's
    REPORT.md (which includes this report)."""
    from pitune_core.study.read.stats import report_section  # lazy: loads numpy

    rows = collect(plan, out, context)
    path = Path(out) / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "shots": "full" if r["shots"] is None else r["shots"]})
    rob, rob_path = robustness_rows([r for r in rows if r["status"] == "done"]), Path(out) / ROBUSTNESS_FILE
    if rob or rob_path.exists():  # a study without robustness rows keeps its files as they were
        write_robustness(rob_path, rob)
    from pitune_core.data.dedup import markdown as dedup_markdown  # lazy: loads safetensors

    steps = {}
    for r in rows:
        if r["status"] == "done":
            steps.setdefault((r["approach"], _regime(r["shots"])), set()).add((r["steps_select"], r["steps_tune"]))
    lines = ["### Steps per approach (own-expert selection + tuning)", "", "| approach | regime | select + tune |",
             "|---|---|---|"]
    lines += [f"| {a} | {g} | {', '.join(f'{s} + {t}' for s, t in sorted(v))} |" for (a, g), v in sorted(steps.items())]
    done = [r for r in rows if r["status"] == "done"]
    cpu = sum(float(r["cpu_s"] if r.get("cpu_s") is not None else r["time_s"]) for r in done)
    (Path(out) / "report.md").write_text(
        report_section(rows, others=[a for a in TRANSFER if a in plan.core + plan.extra], planned=len(rows),
                       title=f"Pre-registered comparison: {plan.name}",
                       ablations=[a for a in ABLATIONS if a in plan.core + plan.extra])
        + f"\nCPU time of the {len(done)} runs done: {cpu / 3600:.2f} h (process CPU seconds, all threads).\n"
        + f"\nPlan: {plan.name} (rule: {plan.rule['text']})\n\nAlignment clean for every target: "
        f"{context.get('alignment_clean')}; data version {context.get('data_version')}.\n\n"
        + "\n".join(lines) + "\n\n" + dedup_markdown())
    if study is not None and register_files(study, [path, Path(out) / "report.md", Path(out) / "plan.json",
                                                     Path(out) / "runs.jsonl", rob_path]):
        from pitune_core.study.report import report  # lazy: loads numpy (the plan parser, read by the CLI, stays numpy-free)

        rep = StudyPaths(study).report  # the study's REPORT.md carries this plan's report: keep it current
        rep.write_text(report(study))
        register_files(study, [rep])
    return path


def results_context(plan: ProtocolPlan, study: str | Path) -> dict:
    """The context a plan's rows are keyed and reported with: :func:`run_context` plus whether the
    projector's alignment is clean for the plan's targets."""
    return {**run_context(study, plan.method, plan.targets), "alignment_clean": alignment_check(study, plan.targets)["clean"]}


def write_results_of(plan: ProtocolPlan, study: str | Path, out: str | Path) -> Path:
    """:func:`write_results` for a plan run against ``study`` (``pitune study run|status``, the
    ``protocol`` stage of ``pitune precompute``)."""
    return write_results(plan, out, results_context(plan, study), study=study)


def estimate(plan: ProtocolPlan, out: str | Path, context: dict) -> dict:
    """CPU time of the whole plan extrapolated from the measured runs of each (approach, regime).

    A (approach, regime) pair with no measurement takes the mean of the measured approaches of its
    regime (``guessed`` counts them). Times are CPU seconds of the run's process (all its threads;
    wall-clock for rows logged without ``cpu_s``), so a shared, overloaded machine does not inflate them."""
    import numpy as np

    rows = collect(plan, out, context)
    measured: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["status"] == "done":  # CPU seconds of the process (all its threads); wall-clock for old rows
            t = r.get("cpu_s") if r.get("cpu_s") is not None else r["time_s"]
            measured.setdefault((r["approach"], _regime(r["shots"])), []).append(float(t))
    per_regime = {}
    for (a, g), v in measured.items():
        per_regime.setdefault(g, []).extend(v)
    total = remaining = 0.0
    guessed = 0
    for r in rows:
        g = _regime(r["shots"])
        v = measured.get((r["approach"], g)) or per_regime.get(g)
        if not v:
            return {"planned_runs": len(rows), "done": sum(r["status"] == "done" for r in rows),
                    "measured_runs": sum(len(x) for x in measured.values()), "estimate_s": None,
                    "reason": f"no measured run in regime {g}"}
        guessed += (r["approach"], g) not in measured
        t = float(np.mean(v))
        total += t
        remaining += t if r["status"] != "done" else 0.0
    return {"planned_runs": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "measured_runs": sum(len(x) for x in measured.values()), "guessed_cells": guessed,
            "estimate_s": round(total), "remaining_s": round(remaining),
            "per_run_s": {f"{a}@{g}": round(float(np.mean(v)), 1) for (a, g), v in sorted(measured.items())}}


def _regime(shots) -> str:
    return "full" if shots is None else f"{shots}-shot"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="write the pre-registered plan from its rule")
    p.add_argument("--write-plan", metavar="PATH", help="write the plan the rule gives to PATH")
    p.add_argument("--summary", default="precomputed/experts/summary.csv")
    args = p.parse_args(argv)
    plan = make_plan(args.summary)
    if args.write_plan:
        Path(args.write_plan).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_plan).write_text(plan_to_json(plan))
    print(f"{len(plan.targets)} targets: {', '.join(plan.targets)}; {len(plan.jobs())} planned runs")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
