"""CLI: ``pitune library import|list|show|remove`` (bring your own expert library), and the
``--library`` form of ``top-k`` (:func:`cmd_top_k`); that of ``transfer`` and ``compare`` is in
:mod:`pitune_core.cli.transfer`, beside the run helpers it shares."""

from __future__ import annotations

import json
import sys
import time

from pitune_core.spec.vocab import GRAPH_K
from pitune_core.common import admission, check_task_name, parse_shots, progress, StageBars
from pitune_core.cli.options import action_adder


def cmd_import(args) -> int:
    from pitune_core.predict.library import import_library, neighbours  # lazy: loads numpy

    t0 = time.time()
    bars = []  # opened at the first checked adapter: a refusal stays one line

    def on_adapter(name: str) -> None:
        if not bars:
            bars.append(progress(desc="adapters checked", unit="adapter"))
        bars[0].update(1)

    try:
        lib = import_library(args.dir, args.name, base=args.base, replace=args.replace, on_adapter=on_adapter,
                             samples=args.samples)
    finally:
        for b in bars:
            b.close()
    print(f"library {lib.name}: {len(lib.adapters)} LoRA adapters (r={lib.method_config['r']}, "
          f"{', '.join(lib.method_config['target_modules'])}) on base {lib.base.path} ({lib.base.id}) "
          f"-> {lib.root} ({time.time() - t0:.1f} s)")
    for a in lib.info["adapters"]:
        if a["ignored_heads"]:
            print(f"pitune: adapter {a['name']}: its own head ({', '.join(a['ignored_heads'])}) is ignored: pitune "
                  f"scores every task by label-as-text matching", file=sys.stderr)
    _print_gate(lib)
    emb = "fisher" if lib.paths.embeddings_file("lora", "fisher").is_file() else "weights"
    _print_neighbours(lib, neighbours(lib, emb), emb)
    return 0


def _print_gate(lib) -> None:
    """The quality gate's verdict on each adapter a sample measured (as ``pitune task place`` says it)."""
    from pitune_core.model.experts import read_expert_meta  # lazy: loads torch
    from pitune_core.model.library import using_base  # lazy: `pitune --help` does not load it

    for n, d in lib.expert_dirs().items():
        with using_base(lib.base):
            meta = read_expert_meta(d)
        if meta.get("metrics"):
            ok, why = admission(meta)
            acc = meta["metrics"]["val"]["accuracy"]
            print(f"  {n:28s} sample accuracy {acc:.3f}: {'offered as a source' if ok else why}")


def _print_neighbours(lib, nbs: dict, embedding: str) -> None:
    from pitune_core.predict.graph import read_graph_json  # lazy: loads networkx

    graph = lib.paths.graph_json("lora", embedding)
    community = {}
    if graph.is_file():
        G = read_graph_json(graph)
        community = {n: G.nodes[n].get("community") for n in G.nodes}
    print(f"neighbours ({embedding} similarity):")
    for n, nb in nbs.items():
        c = community.get(n)
        print(f"  {n:28s} {'' if c is None else f'[community {c}] '}" + ", ".join(f"{m} {s:.3f}" for m, s in nb))


def cmd_list(args) -> int:
    from pitune_core.model.library import LibraryError, libraries_dir, list_libraries, open_library  # lazy: `pitune --help` does not load it

    rows = []
    for name in list_libraries():
        try:
            lib = open_library(name, check_base=False)
            rows.append({"name": name, "adapters": len(lib.adapters), "r": lib.method_config["r"],
                         "base": lib.base.path, "base_id": lib.base.id, "created": lib.info.get("created")})
        except LibraryError as e:
            rows.append({"name": name, "error": str(e)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no libraries in {libraries_dir()} (import one with `pitune library import DIR --name NAME`)",
              file=sys.stderr)
    for r in rows:
        print(f"{r['name']}\t{r['error']}" if "error" in r else
              f"{r['name']}\t{r['adapters']} adapters\tr={r['r']}\tbase {r['base_id']} ({r['base']})\t{r['created']}")
    return 0


def cmd_show(args) -> int:
    from pitune_core.model.library import open_library  # lazy: `pitune --help` does not load it
    from pitune_core.predict.library import neighbours  # lazy: loads numpy

    lib = open_library(args.name, check_base=False)
    if args.json:
        print(json.dumps(lib.info, indent=2))
        return 0
    print(f"library {lib.name}: {len(lib.adapters)} LoRA adapters, r={lib.method_config['r']} on "
          f"{', '.join(lib.method_config['target_modules'])}, imported {lib.info.get('created')} from "
          f"{lib.info.get('source')}")
    print(f"base: {lib.base.path} ({lib.base.id}; weights sha256 {lib.base.weights_sha256})")
    for a in lib.info["adapters"]:
        heads = f"; head ignored: {', '.join(a['ignored_heads'])}" if a["ignored_heads"] else ""
        print(f"  {a['name']:28s} from {a['source']} (alpha {a['alpha']:g}{heads})")
    _print_gate(lib)
    if not lib.paths.similarity_csv("lora", args.embedding).is_file():
        raise ValueError(f"library {lib.name} has no {args.embedding} graph (Fisher needs a sample per adapter: "
                         f"import with --samples DIR)")
    _print_neighbours(lib, neighbours(lib, args.embedding, args.k), args.embedding)
    return 0


def cmd_remove(args) -> int:
    from pitune_core.model.library import remove_library  # lazy: `pitune --help` does not load it

    print(f"removed {remove_library(args.name)}")
    return 0


def cmd_library(args) -> int:
    return args.library_func(args)


def register(sub, add) -> None:
    from pitune_core.predict.library import DEFAULT_EMBEDDING, LIBRARY_EMBEDDINGS  # lazy: loads numpy

    sp = add("library", cmd_library, "bring your own expert library: peft LoRA adapters trained elsewhere "
                                     "(import, list, show, remove)")
    action = action_adder(sp, "library_command", "library_func")

    p = action("import", cmd_import, "import every peft LoRA adapter folder under DIR (checked strictly; one "
                                     "line per refusal, nothing imported half-way), with its graph")
    p.add_argument("dir", metavar="DIR", help="a folder of adapter folders (adapter_config.json + "
                                              "adapter_model.safetensors, as save_pretrained writes them)")
    p.add_argument("--name", required=True, help="the library's name (lower-case letters, digits, underscores)")
    p.add_argument("--base", metavar="MODEL_DIR", help="the base model folder the adapters were trained on "
                                                       "(default: the packaged MiniLM); nothing is fetched")
    p.add_argument("--replace", action="store_true", help="replace a library of that name")
    p.add_argument("--samples", metavar="DIR", help="a small sample per adapter (DIR/NAME.csv with text,label "
                                                   "columns): Fisher embeddings and graph, and the quality gate")

    p = action("list", cmd_list, "list the imported libraries ($PITUNE_LIBRARIES)")
    p.add_argument("--json", action="store_true")

    p = action("show", cmd_show, "a library's adapters, base and graph neighbours")
    p.add_argument("name")
    p.add_argument("--embedding", default=DEFAULT_EMBEDDING, choices=("fisher", *LIBRARY_EMBEDDINGS),
                   help="fisher: where the import had --samples")
    p.add_argument("--k", type=int, default=GRAPH_K, help=f"neighbours per adapter (default: {GRAPH_K})")
    p.add_argument("--json", action="store_true")

    p = action("remove", cmd_remove, "delete a library")
    p.add_argument("name")


# ----------------------------------------------------------------------------- top-k --library

def cmd_top_k(args) -> int:
    from pitune_core.model.library import open_library  # lazy: `pitune --help` does not load it
    from pitune_core.tune.library import library_sources, rank_target, resolve_embedding  # lazy: loads numpy

    check_task_name(args.target, "target")
    lib = open_library(args.library)
    shots = parse_shots(args.shots)
    emb = resolve_embedding(lib, getattr(args, "embedding", None))
    t0 = time.time()
    bar = StageBars(f"ranking {lib.name} for {args.target}")
    try:
        ranking = rank_target(args.target, lib, shots, args.seed, emb, on_step=bar)
    finally:
        bar.close()
    for n, s in ranking[: args.k]:
        print(f"{n}\t{s:.4f}")
    for n, why in sorted(library_sources(lib, args.target, emb).gated.items()):  # as the study's top-k says it
        print(f"pitune: {n} {why}", file=sys.stderr)
    print(f"pitune: {lib.name}'s adapters ranked by {emb} similarity to {args.target}'s own expert "
          f"({'all' if shots is None else shots} shots per class, {time.time() - t0:.1f} s)", file=sys.stderr)
    return 0
