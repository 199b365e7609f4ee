"""The dashboard's view of an imported expert library (``pitune library import``).

Why a separate module: app.py renders a study; a library has no manifest, measurements or tasks of
its own, so it gets this one page instead of the study's tabs (chosen by the sidebar's "Expert
library" selector): its graph and communities (the study's figure), an adapter's neighbours, the
adapters with the quality gate's verdict where a sample measured them, and a launch form that queues
a π-Tuning run over the library in the run registry (kind ``library-transfer``, run by the
scheduler, never in the Streamlit process). Data comes from :mod:`pitune_core.study.libraries`
(no torch).
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from dashboard import figures as F
from dashboard.text import md as _md
from pitune_core.study.libraries import library_graph, library_neighbours, library_view
from pitune_core.spec.vocab import DEFAULT_K, DEFAULT_SHOTS, K_MIN, SHOT_OPTIONS
from pitune_core.runs import executor

EMBEDDING_LABELS = {"fisher": "Fisher (from a sample per adapter)", "weights": "weights (ΔW cosine)",
                    "arrow": "Arrow prototypes"}


def _targets() -> list[str]:
    """Language tasks a library run can target: the suite's and the user's own (a library is text-only)."""
    from pitune_core.data.tasks import TASKS  # lazy: loads safetensors
    from pitune_core.data.user_tasks import list_user_tasks  # lazy: loads safetensors

    return [*sorted(n for n, t in TASKS.items() if t.modality == "language"),
            *sorted(t.name for t in list_user_tasks("language"))]


def render(name: str, db: str, get_registry: Callable) -> None:
    view = library_view(name)
    lib = view.lib
    st.title(f"Expert library · {lib.name}")
    st.caption(_md(f"{len(lib.adapters)} LoRA adapters (r={lib.method_config['r']} on "
                   f"{', '.join(lib.method_config['target_modules'])}), imported {lib.info.get('created')} from "
                   f"{lib.info.get('source')}; base {lib.base.id} ({lib.base.path})"))
    if not view.embeddings:
        st.error("This library has no predictions; import it again with `pitune library import`.")
        return
    emb = st.radio("Similarity", list(view.embeddings), key="lib_embedding", horizontal=True,
                   format_func=lambda e: EMBEDDING_LABELS.get(e, e))
    pick = st.selectbox("Adapter", list(lib.adapters), key="lib_adapter")
    k = min(3, max(1, len(lib.adapters) - 1))
    top = library_neighbours(view, emb, pick, k)
    left, right = st.columns([4, 1.1])
    with left:
        if len(lib.adapters) > 1:
            G, summary, pos = library_graph(view, emb)
            st.vega_lite_chart(spec=F.graph_figure(G, pos, target=pick, sources=[n for n, _ in top]), theme=None,
                               width="stretch")
            st.caption("Fill = modality (a library is text-only), outline = community, edge width = similarity; the "
                       "chosen adapter is the red star, dashed lines lead to its most similar adapters.")
        else:
            summary = []
    with right:
        st.markdown(f"**Most similar to {_md(pick)}**")
        for n, s in top:
            st.markdown(f"{_md(n)} · {s:.3f}")
        st.markdown(f"**Communities** ({len(summary)})")
        for c in summary:
            st.markdown(f"**{c['community']}** — {c['size']} adapters  \n:small[{_md(', '.join(c['members']))}]")
    st.markdown("**Adapters**")
    st.dataframe([{"adapter": a["name"], "from": a["source"], "alpha": a["alpha"],
                   "own head (ignored)": ", ".join(a["ignored_heads"]),
                   "offered as a source": view.gate[a["name"]][0], "gate": view.gate[a["name"]][1]}
                  for a in lib.info["adapters"]], hide_index=True)
    _launch(lib.name, db, get_registry)


def _launch(name: str, db: str, get_registry: Callable) -> None:
    """Queue ``pitune transfer TARGET --library NAME`` as a background run of the registry."""
    st.subheader("π-Tuning over this library")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    target = c1.selectbox("Target task (language; add your own on the study's New task tab)", _targets(),
                          key="lib_target")
    shots = c2.selectbox("Shots per class", SHOT_OPTIONS, index=SHOT_OPTIONS.index(DEFAULT_SHOTS), key="lib_shots")
    kk = c3.number_input("k sources", K_MIN, 20, DEFAULT_K, key="lib_k")
    seed = c4.number_input("Seed", 0, 10_000, 0, key="lib_seed")
    if st.button("Launch π-Tuning", key="lib_launch", icon=":material/rocket_launch:"):
        reg = get_registry(db)
        if reg is None:
            return
        cfg = {"library": name, "target": target, "k": int(kk), "shots": None if shots == "full" else int(shots),
               "seed": int(seed), "weights": "uniform", "own_expert": True, "weights_only": False}
        try:  # the kind's validator runs here (the library's base is checked): a refused run is never queued
            run_id = reg.submit("library-transfer", cfg, name=f"{target} ← top-{int(kk)} of library {name}")
        except (ValueError, RuntimeError, OSError) as e:
            st.error(f"Cannot launch: {e}")
            return

        try:
            executor.ensure_scheduler(db)
        except (RuntimeError, OSError) as e:
            st.warning(f"Run {run_id} is queued, but the scheduler did not start ({e}). Start it with "
                       f"`pitune runs scheduler --db {db}`.")
        st.session_state["lib_launched"] = run_id
    if st.session_state.get("lib_launched"):
        st.success(f"Launched run `{st.session_state['lib_launched']}`: `pitune runs list` and the study's "
                   "**Runs & compare** tab follow it.")
