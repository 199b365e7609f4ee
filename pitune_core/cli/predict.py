"""CLI for the predict half: ``embed``, ``similarity``, ``graph``, ``top-k``, ``transfer-matrix``.

All commands work on a study directory (default ``precomputed``): experts are read from
``STUDY/experts/EXPERT_TYPE/TASK`` and outputs go to ``STUDY/predict/EXPERT_TYPE/EMBEDDING/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli.options import add_db, add_embedding, add_study, db_of, renamed, study_of
from pitune_core.common import check_task_name, parse_int_list, progress
from pitune_core.paths import EMBEDDINGS_FILE, GRAPH_FILE, SIMILARITY_FILE, StudyPaths
from pitune_core.spec.parse import shots_arg
from pitune_core.spec.vocab import DEFAULT_EXPERT_TYPE, DEFAULT_K, DEFAULT_SHOTS, EXPERT_META_FILE, EXPERT_TYPES, GRAPH_K, PAIR_SHOTS
from pitune_core.study.verify import require_verified
from pitune_core.cli.library import cmd_top_k as library_top_k


def _expert_dirs(study: Path, expert_type: str, tasks: list[str] | None) -> dict[str, Path]:
    from pitune_core.data.tasks import get_task  # lazy: loads safetensors

    root = StudyPaths(study).experts_of(expert_type)
    if tasks:
        for t in tasks:
            get_task(t)
        dirs = {t: root / t for t in tasks}
    else:
        dirs = {p.name: p for p in sorted(root.glob("*")) if (p / EXPERT_META_FILE).exists()}
    if not dirs:
        raise ValueError(f"no {expert_type} experts under {root}; train them with `pitune train-expert` "
                         f"or `pitune precompute`")
    return dirs


def _out(args) -> Path:
    return StudyPaths(study_of(args)).embedding_dir(args.expert_type, args.embedding)


def cmd_embed(args) -> int:
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.predict.embeddings import embed_experts, save_embeddings  # lazy: loads torch

    study = Path(study_of(args))
    dirs = _expert_dirs(study, args.expert_type, args.tasks)
    bb = UnifiedBackbone.load(args.projector or StudyPaths(study).backbone)
    bar = progress(total=len(dirs), desc=f"{args.embedding} embeddings", unit="task")
    emb = embed_experts(dirs, args.embedding, bb, n_samples=args.n, seed=args.seed, on_task=lambda t: bar.update(1))
    bar.close()
    path = save_embeddings(_out(args) / EMBEDDINGS_FILE, emb)
    print(f"{len(emb.names)} task embeddings ({emb.flat().shape[1]} dims, {len(emb.groups)} groups) -> {path}")
    return 0


def cmd_similarity(args) -> int:
    from pitune_core.predict.embeddings import load_embeddings  # lazy: loads torch
    from pitune_core.predict.similarity import similarity_matrix, top_k, write_similarity_csv  # lazy: loads numpy

    d = _out(args)
    emb = load_embeddings(d / EMBEDDINGS_FILE)
    kind = args.kind or ("fisher" if args.embedding == "fisher" else "cosine")
    S = similarity_matrix(emb.groups, emb.names, kind=kind)
    name = "similarity.csv" if kind == ("fisher" if args.embedding == "fisher" else "cosine") else f"similarity_{kind}.csv"
    write_similarity_csv(d / name, emb.names, S)
    print(f"{len(emb.names)}x{len(emb.names)} {kind} similarity -> {d / name}")
    for t in emb.names:
        nb = top_k(S, emb.names, t, min(3, len(emb.names) - 1))
        print(f"  {t:24s} " + ", ".join(f"{n} {s:.3f}" for n, s in nb))
    return 0


def cmd_graph(args) -> int:
    from pitune_core.predict.graph import annotate_communities, build_graph, community_summary, detect_communities, write_graph_json  # lazy: loads networkx
    from pitune_core.predict.similarity import read_similarity_csv  # lazy: loads numpy
    from pitune_core.data.tasks import get_task  # lazy: loads safetensors

    d = _out(args)
    names, S = read_similarity_csv(d / SIMILARITY_FILE)
    attrs = {n: {"modality": get_task(n).modality} for n in names}
    mode = "threshold" if args.threshold is not None else "knn"
    G = build_graph(names, S, attrs, mode=mode, k=args.k, threshold=args.threshold if args.threshold is not None else 0.5)
    annotate_communities(G, detect_communities(G, seed=0))
    path = Path(args.out) if args.out else d / GRAPH_FILE
    write_graph_json(path, G)
    print(f"graph with {G.number_of_nodes()} tasks and {G.number_of_edges()} edges -> {path}")
    for c in community_summary(G):
        print(f"  community: {', '.join(sorted(c['members']))}  [{', '.join(sorted(c['modalities']))}]")
    return 0


def cmd_top_k(args) -> int:
    if getattr(args, "library", None):  # an imported library (`pitune library import`): ranked from a target's own expert
        return library_top_k(args)
    from pitune_core.predict.similarity import read_similarity_csv, top_k  # lazy: loads numpy

    check_task_name(args.target, "target")
    require_verified(study_of(args), "top-k")  # a study that fails its manifest check is refused
    names, S = read_similarity_csv(_out(args) / SIMILARITY_FILE)
    from pitune_core.study.read.placed import merge_similarity  # lazy: loads numpy (user tasks placed with `pitune task place`)

    names, S = merge_similarity(study_of(args), args.expert_type, args.embedding, names, S, only={args.target})
    from pitune_core.study.read.reader import Study  # lazy: loads safetensors

    gated = {n: why for n, why in Study(study_of(args)).gated(args.expert_type).items() if n != args.target}
    keep = [i for i, n in enumerate(names) if n not in gated]
    names, S = [names[i] for i in keep], S[keep][:, keep]
    for n, s in top_k(S, names, args.target, args.k):
        print(f"{n}\t{s:.4f}")
    for n, why in sorted(gated.items()):
        print(f"pitune: {n} {why}", file=sys.stderr)
    return 0


def cmd_transfer_matrix(args) -> int:
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.study.outputs import write_transfer_outputs  # lazy: loads numpy
    from pitune_core.study.transfer import TransferBudget, run_pairs  # lazy: loads torch

    study = Path(study_of(args))
    sp = StudyPaths(study)
    dirs = _expert_dirs(study, "lora", args.tasks)
    tasks = list(dirs)
    budget = TransferBudget(shots=args.shots, steps=args.steps, seeds=tuple(parse_int_list(args.seeds, "seeds")))
    bar = progress(desc="transfer pairs", unit="pair")

    def on_pair(i, n, job):
        bar.total = n
        bar.update(1)
        bar.set_postfix_str(f"{job[0]} <- {job[1]} (seed {job[2]})")

    if args.executor == "inprocess":
        # the backbone is only needed here: local/Ray workers load their own
        run_pairs(tasks, dirs, "lora", UnifiedBackbone.load(sp.backbone), budget, sp.transfer,
                  on_pair=on_pair)
    else:
        from pitune_core.study.transfer import run_pairs_on  # lazy: loads torch

        run_pairs_on(args.executor, tasks, dirs, "lora", budget, sp.transfer, sp.backbone, db_of(args),
                     address=args.address, max_parallel=args.max_parallel)
    bar.close()
    summary = write_transfer_outputs(study, tasks, k=GRAPH_K)
    print(json.dumps({k: {kk: v for kk, v in s.items() if kk != "seeds"} for k, s in summary.items()}, indent=2))
    print(f"transfer matrix -> {sp.transfer_matrix}", file=sys.stderr)
    return 0


def register(sub, add) -> None:
    def common(sp, method=True):
        add_study(sp)
        sp.add_argument("--expert-type", default=DEFAULT_EXPERT_TYPE, choices=EXPERT_TYPES,
                        help=f"the experts' peft method (default: {DEFAULT_EXPERT_TYPE})")
        if method:
            add_embedding(sp)
            renamed(sp, "--method", "--embedding")

    sp = add("embed", cmd_embed, "embed tasks by the Fisher information of their experts (or a baseline)")
    common(sp)
    sp.add_argument("--tasks", nargs="*")
    sp.add_argument("--n", type=int, default=128, help="samples for the Fisher average")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--projector")

    sp = add("similarity", cmd_similarity, "task-by-task similarity matrix from embeddings")
    common(sp)
    sp.add_argument("--kind", choices=["fisher", "cosine"], help="fisher: the paper's pair-normalised measure")

    sp = add("graph", cmd_graph, "task graph (networkx node-link JSON) with communities")
    common(sp)
    sp.add_argument("--k", type=int, default=GRAPH_K, help=f"neighbours per task (kNN graph; default {GRAPH_K})")
    sp.add_argument("--threshold", type=float, help="threshold graph instead of kNN")
    sp.add_argument("--out")

    sp = add("top-k", cmd_top_k, "the k most similar source tasks of a target")
    common(sp)
    sp.add_argument("target")
    sp.add_argument("--k", type=int, default=DEFAULT_K, help=f"sources to list (default: {DEFAULT_K})")
    sp.add_argument("--library", metavar="LIB", help="rank an imported library's adapters instead of the study's "
                                                     "(`pitune library import`), from a target's own expert")
    sp.add_argument("--shots", default=str(DEFAULT_SHOTS),
                    help=f"with --library: examples per class the own expert is trained on (default: {DEFAULT_SHOTS})")
    sp.add_argument("--seed", type=int, default=0, help="with --library: the few-shot sample's seed")

    sp = add("transfer-matrix", cmd_transfer_matrix, "measure pairwise transfer and score the predictions (resumable)")
    add_study(sp)
    sp.add_argument("--tasks", nargs="*")
    sp.add_argument("--shots", type=shots_arg, default=PAIR_SHOTS,
                    help=f"examples per class of every pair, or 'full' (default: {PAIR_SHOTS})")
    sp.add_argument("--steps", type=int, default=30)
    sp.add_argument("--seeds", default="0,1")
    sp.add_argument("--executor", default="inprocess", choices=["inprocess", "local", "ray"],
                    help="inprocess (default), local worker processes, or Ray (one task per pair)")
    sp.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    sp.add_argument("--max-parallel", type=int, help="pairs at once (local) / CPUs for a local Ray")
    add_db(sp, "run registry for local/ray executors")
