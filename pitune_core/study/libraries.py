"""What the dashboard reads of an imported expert library (``pitune library import``), without torch.

A library is laid out like a study (``experts/lora/NAME/``, ``predict/lora/EMBEDDING/``), but it has
no manifest, tasks or measurements, so it is not opened as a :class:`~pitune_core.study.read.reader.Study`:
this module gives the few things its dashboard view shows -- the adapters with the quality gate's
verdict where a sample measured them, the embeddings it has, each one's graph (with communities) and
map positions -- from bounded JSON / CSV reads only (the first page renders without torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from pitune_core.model.library import EXPERT_META, Library, list_libraries, open_library
from pitune_core.common import admission
from pitune_core.model import expert_schema as schema

#: the embeddings a library may have, in the order the dashboard offers them
EMBEDDINGS = ("fisher", "weights", "arrow")


@dataclass(frozen=True)
class LibraryView:
    """An imported library as the dashboard shows it."""

    lib: Library
    embeddings: tuple[str, ...]
    #: {adapter: (offered as a source, the gate's one line, sample accuracy or None)}
    gate: dict

    @property
    def name(self) -> str:
        return self.lib.name


def library_names() -> list[str]:
    return list_libraries()


def library_view(name: str) -> LibraryView:
    """Open a library for display (its base is not re-hashed here: a run checks it before it starts)."""
    from pathlib import Path

    lib = open_library(name, check_base=False)
    gate = {}
    for n, d in lib.expert_dirs().items():
        meta = schema.read_json_bounded(Path(d) / EXPERT_META)
        if isinstance(meta, dict) and meta.get("metrics"):
            ok, why = admission(meta)
            acc = ((meta["metrics"].get("val") or {}).get("accuracy"))
            gate[n] = (ok, why, acc if isinstance(acc, (int, float)) else None)
        else:
            gate[n] = (True, "not measured (no sample)", None)
    embs = tuple(e for e in EMBEDDINGS if lib.paths.similarity_csv("lora", e).is_file())
    return LibraryView(lib, embs, gate)


def library_graph(view: LibraryView, embedding: str):
    """``(graph, community summary, {adapter: (x, y)})`` of one embedding, as the import wrote them."""
    from pitune_core.predict.graph import community_summary, read_graph_json  # lazy: loads networkx
    from pitune_core.predict.layout import read_layout_csv  # lazy: loads numpy

    G = read_graph_json(view.lib.paths.graph_json("lora", embedding))
    names, coords = read_layout_csv(view.lib.paths.layout_csv("lora", embedding))
    return G, community_summary(G), {n: (float(x), float(y)) for n, (x, y) in zip(names, coords)}


def library_neighbours(view: LibraryView, embedding: str, target: str, k: int) -> list[tuple[str, float]]:
    """An adapter's ``k`` most similar adapters (its stored similarity row)."""
    from pitune_core.predict.similarity import read_similarity_csv, top_k  # lazy: loads numpy

    names, S = read_similarity_csv(view.lib.paths.similarity_csv("lora", embedding))
    return top_k(S, names, target, min(k, len(names) - 1)) if len(names) > 1 else []
