"""pitune dashboard: explore a π-Tuning study and launch interpolate-and-tune runs.

Run with ``pitune dashboard`` (or ``streamlit run dashboard/app.py``). The study directory comes
from ``$PITUNE_STUDY`` (default ``precomputed/`` in the repository), the run registry from
``$PITUNE_RUNS_DB`` (default ``runs/registry.sqlite`` in the repository).

This file only renders: data comes from :mod:`pitune_core.study.read.reader`, figures from
:mod:`dashboard.figures`, runs from :mod:`pitune_core.runs` (the page submits runs and a detached
scheduler executes them; nothing here trains or blocks).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard import figures as F  # noqa: E402
from dashboard.text import md as _md  # noqa: E402
from dashboard import new_task as NT  # noqa: E402
from dashboard import library as LIB  # noqa: E402
from pitune_core.predict.quality import fullest_plan, predictor_of  # noqa: E402
from pitune_core.paths import default_runs_db, default_study  # noqa: E402
from pitune_core.spec.configs import TransferConfig  # noqa: E402
from pitune_core.spec.vocab import (ACTIVE_STATUSES, CANCELLED, DEFAULT_K, FAILED, GRAPH_K, INTERRUPTED,  # noqa: E402
                                    QUEUED, RUNNING, SUCCEEDED)
from pitune_core.study.read.reader import (  # noqa: E402
    EMBEDDING_LABELS,
    METHOD_LABELS,
    Study,
    StudyError,
    filter_runs_for,
    initial_weights,
    read_run_files,
    rebuild_hint,
    zip_directory,
)
from pitune_core.runs.executor import scheduler_running
from pitune_core.runs.registry import RunRegistry
from pitune_core.study.libraries import library_names
from pitune_core.study.robustness import MEASURE_LABELS, MEASURES  # noqa: E402
from pitune_core.spec.vocab import SHOT_OPTIONS  # noqa: E402
from pitune_core.runs import executor as run_executor  # noqa: E402

st.set_page_config(page_title="pitune · π-Tuning dashboard", page_icon="π", layout="wide")

TABS = ["Graph", "Map", "Target", "Tune & launch", "Runs & compare", "Study", "New task"]
WEIGHT_MODES = {
    "learn-uniform": "learnable (π-Tuning), start uniform",
    "learn-auto": "learnable (π-Tuning), start from the predicted similarities",
    "hand": "fixed, set by hand",
}
ACTIVE = ACTIVE_STATUSES
STATUS_COLOR = {QUEUED: "gray", RUNNING: "blue", SUCCEEDED: "green", FAILED: "red", CANCELLED: "orange",
                INTERRUPTED: "orange"}


def _status(s: str) -> str:
    """A run status as coloured markdown text."""
    return f":{STATUS_COLOR.get(s, 'gray')}[**{_md(s)}**]"


#: widget keys whose values survive while their tab is not shown (tabs render lazily)
KEEP = ("graph_mode", "graph_k", "graph_threshold", "comm_method", "heat_order", "src_mode", "src_pick",
        "weights_mode", "shots", "seed", "weights_only", "open_run")


# ----------------------------------------------------------------------------- locations

def study_path() -> Path:
    return default_study().resolve()


def runs_db_path() -> Path:
    return default_runs_db().resolve()


def _stamp(root: Path) -> int:
    try:
        return (root / "manifest.json").stat().st_mtime_ns
    except OSError:
        return 0


# ----------------------------------------------------------------------------- cached loads

@st.cache_resource(show_spinner="Checking the study…", max_entries=4)
def load_study(root: str, stamp: int) -> Study:
    """Open + verify (checksums) once per study version; raises StudyError (not cached)."""
    return Study.open(root)


@st.cache_resource(show_spinner=False, max_entries=64)
def load_graph(root: str, stamp: int, method: str, embedding: str, mode: str, k: int, threshold: float,
               comm_method: str):
    study = load_study(root, stamp)
    G, summary = study.task_graph(method, embedding, mode=mode, k=k, threshold=threshold,
                                  community_method=comm_method)
    if G.number_of_nodes() > F.LARGE_N:  # a force layout of thousands of nodes takes minutes: use the map's
        try:
            lnames, coords, _ = study.layout(method, embedding)
            pos = {n: (float(x), float(y)) for n, (x, y) in zip(lnames, coords)}
            if all(n in pos for n in G):
                return G, summary, pos
        except ValueError:
            pass
    return G, summary, F.graph_positions(G)


@st.cache_resource(show_spinner=False)
def _open_registry(db: str):
    return RunRegistry(db)


def get_registry(db: str):
    """The run registry, or None after showing why it cannot be opened."""
    try:
        return _open_registry(db)
    except Exception as e:  # noqa: BLE001 - a broken/unwritable database must not crash the page
        st.error(f"The run registry `{db}` cannot be opened: {type(e).__name__}: {e}. "
                 "Point the dashboard at another one with `pitune dashboard --db PATH` (PITUNE_RUNS_DB).")
        return None


def _init(key: str, value) -> None:
    if key not in st.session_state:
        st.session_state[key] = value


def _choice(key: str, options: list, default) -> None:
    """Keep a select widget's stored value valid when its options change."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]


def _clamp(key: str, lo, hi, default) -> None:
    v = st.session_state.get(key, default)
    st.session_state[key] = min(max(v if v is not None else default, lo), hi)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _elapsed(rec) -> str:
    secs = rec.duration if rec.duration is not None else (rec.progress or {}).get("elapsed")
    if secs is None:
        return "–"
    secs = int(secs)
    return f"{secs // 60}:{secs % 60:02d}" if secs < 3600 else f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


# ----------------------------------------------------------------------------- missing study

def render_missing(root: Path, problems: list[str]) -> None:
    st.title("π-Tuning dashboard")
    st.error(f"The study at `{root}` cannot be used ({len(problems)} problem{'s' * (len(problems) != 1)}).",
             icon="🚫")
    shown = problems[:25]
    st.markdown("**What is wrong:**\n" + "\n".join(f"- {_md(p)}" for p in shown)
                + (f"\n- … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""))
    hint = rebuild_hint(root)
    st.markdown("**How to rebuild it** (finished steps are kept, so this resumes where it stopped):")
    st.code(f"{hint[0]}          # the full study (hours on CPU)\n"
            f"{hint[1]}  # a small real study (minutes)\n"
            f"{hint[2]}             # check it afterwards", language="bash")
    st.markdown("Or point the dashboard at another study: `pitune dashboard --study DIR` "
                "(environment variable `PITUNE_STUDY`).")


# ----------------------------------------------------------------------------- sidebar

def selection(study: Study) -> dict | None:
    """What the sidebar selects (expert type, embedding, target, k), from the session state and kept
    valid for this study, before the sidebar is drawn (it is drawn last: see :func:`main`); ``None``
    when the stored expert type has no predictions (the sidebar then says so)."""
    methods = study.methods()
    _choice("method", methods, "lora")
    method = st.session_state["method"]
    embs = study.embeddings(method)
    if not embs:
        return None
    default, why = study.default_embedding(method)
    _choice("embedding", embs, default)
    embedding = st.session_state["embedding"]
    names = study.prediction_names(method, embedding)  # not the whole matrix: a hub has 10,000 tasks
    compare_targets = [t for t in study.compare_targets() if t in names]
    _choice("target", names, compare_targets[0] if compare_targets else names[0])
    k_lo, k_hi = TransferConfig.bounds("k")  # the slider's bounds are the run setting's
    kmax = max(k_lo, min(k_hi, len(names) - 1))
    _clamp("k", k_lo, kmax, min(DEFAULT_K, kmax))
    return {"method": method, "embedding": embedding, "target": st.session_state["target"],
            "k": int(st.session_state["k"]),
            "_sidebar": {"embeddings": embs, "default": default, "why": why, "names": names,
                         "kmax": kmax}}


def render_sidebar(study: Study, root: Path, db: Path, sel: dict | None) -> None:
    """The sidebar's widgets, on the values :func:`selection` made valid."""
    sb = st.sidebar
    sb.title("π-Tuning")
    man = study.manifest()
    n_all = len(study.tasks())
    drawn = len(sel["_sidebar"]["names"]) if sel is not None else n_all
    graph = EMBEDDING_LABELS.get(sel["embedding"], sel["embedding"]) if sel is not None else ""
    sb.caption(f"Study `{root.name}` · {n_all} tasks"
               + (f", {drawn} on the {_md(graph)} graph (the targets offered below)" if drawn != n_all else "")
               + f" · finished {str(man.get('finished', '?'))[:16]}")
    methods = study.methods()
    sb.selectbox("Expert type", methods, key="method", format_func=lambda m: METHOD_LABELS.get(m, m),
                 help="Parameter-efficient experts trained per task on the frozen backbone.")
    if sel is None:
        sb.error(f"no predictions for {st.session_state['method']} experts in this study")
        st.stop()
    o = sel["_sidebar"]
    default, why = o["default"], o["why"]
    sb.selectbox("Task embedding / predictor", o["embeddings"], key="embedding",
                 format_func=lambda e: EMBEDDING_LABELS.get(e, e),
                 help="How sources are ranked for a target: the Fisher information of the experts "
                      "(π-Tuning), the expert weights, the data alone, or any predictor of the ground "
                      "truth (drawn from its full-data rows; a few-shot run recomputes the target's row "
                      "from its own shots). The default follows the evidence: " + why + ".")
    sb.caption(f"Default: {_md(EMBEDDING_LABELS.get(default, default))} ({_md(why)}).")
    sb.selectbox("Target task", o["names"], key="target", format_func=lambda t: f"{t} ({study.modality(t) or '?'})",
                 help="The task to transfer to. Click a node in the graph to pick it there.")
    sb.slider("k: sources to interpolate", TransferConfig.bounds("k")[0], o["kmax"], key="k",
              help="How many of the most similar experts the target borrows from.")
    sb.divider()
    sb.caption(f"Study: `{root}`")
    sb.caption(f"Runs: `{db}`")


# ----------------------------------------------------------------------------- pieces

def topk_list(study: Study, sel: dict, key: str, top: list | None = None) -> list:
    """The target's top-k predicted sources as a numbered list (``top``: already ranked by the caller)."""
    if top is None:
        top = study.top_k(sel["target"], sel["k"], sel["method"], sel["embedding"])
    users = {t["name"] for t in study.tasks() if t.get("user_task")}  # placed user tasks are never sources
    users |= set(study.gated(sel["method"])) - {sel["target"]}  # nor experts the library's gate does not offer
    names = [n for n in study.prediction_names(sel["method"], sel["embedding"]) if n not in users]
    with st.container(key=key):
        st.markdown(f"**Top-{len(top)} predicted sources for `{sel['target']}`**")
        st.markdown("\n".join(
            f"{i}. **{s.name}** ({_md(s.modality)}) — similarity {s.similarity:.3f}"
            + (" — *not measured* (no transfer run for this pair)" if s.gain is None
               else f", measured gain {s.gain:+.1f} pts")
            for i, s in enumerate(top, 1)))
        drawn = len([n for n in names if n != sel["target"]])
        experts = len([t for t in study.expert_tasks(sel["method"]) if t != sel["target"] and t not in users])
        over = (f"ranked over all {drawn} other experts of the study" if drawn >= experts else
                f"ranked over the {drawn} other tasks this graph draws (the study has {experts} other experts; "
                f"a run that ranks from its own examples ranks them all)")
        if study.gated(sel["method"]):
            over += f"; {len(study.gated(sel['method']))} experts are not offered as sources by the library's gate"
        st.caption(f"{_md(EMBEDDING_LABELS.get(sel['embedding'], sel['embedding']))} similarity of the "
                   f"{_md(METHOD_LABELS.get(sel['method'], sel['method']))} experts, {over} (predict/{_md(sel['method'])}/"
                   f"{_md(sel['embedding'])}/similarity.csv)")
    return top


def _pick_target_from_graph() -> None:
    """A click on a node of the graph (its Vega-Lite point selection) makes that task the target."""
    event = st.session_state.get("graph_chart")
    try:
        picked = event["selection"][F.PICK]
    except (KeyError, TypeError):
        return
    for p in picked if isinstance(picked, list) else []:  # Streamlit gives a list of {field: value}
        name = p.get("name") if isinstance(p, Mapping) else None
        if isinstance(name, str) and name in st.session_state.get("_task_names", ()):
            st.session_state["target"] = name
            return


# ----------------------------------------------------------------------------- tabs

def _set_target(name: str) -> None:
    """Callback (runs before the rerun, so the sidebar's target widget can still be set)."""
    if name in st.session_state.get("_task_names", ()):
        st.session_state["target"] = name


#: at most this many search matches are listed and labelled on the graph
MAX_MATCHES = 25


def _matches(names: list[str], key: str) -> list[str]:
    """The task names the search box ``key`` matches (any part of a name, case-insensitive), at most
    :data:`MAX_MATCHES`; read from the session state, so a figure can use them before the box is drawn."""
    _init(key, "")
    q = str(st.session_state[key] or "").strip().lower()
    return _find(names, q)[:MAX_MATCHES] if q else []


def _find(names: list[str], q: str) -> list[str]:
    return [n for n in names if q in n.lower()]


def _search(names: list[str], key: str) -> list[str]:
    """A search box (any part of a task name, case-insensitive); picking a match makes it the target."""
    _init(key, "")
    c1, c2, c3 = st.columns([1.6, 2, 1])
    q = c1.text_input("Find a task", key=key, placeholder="part of a task name",
                      help="Matches are labelled on the figure; pick one to make it the target.").strip().lower()
    if not q:
        return []
    found = _find(names, q)
    if not found:
        c2.caption(f"no task name contains “{_md(q)}”")
        return []
    shown = found[:MAX_MATCHES]
    pick = c2.selectbox(f"{len(found)} match{'es' * (len(found) != 1)}"
                        + (f" (first {MAX_MATCHES})" if len(found) > MAX_MATCHES else ""), shown, key=f"{key}_pick")
    c3.button("Make it the target", key=f"{key}_go", on_click=_set_target, args=(pick,),
              disabled=pick == st.session_state.get("target"))
    return shown


def tab_graph(study: Study, root: Path, stamp: int, sel: dict) -> None:
    """The task graph. Its chart is sent to the browser before the controls above it (their values
    are read from the session state first): the chart's scripts then load while the controls are
    drawn, which is the first page's critical path (``bench/bench_dashboard.py``)."""
    import numpy as np

    names = study.prediction_names(sel["method"], sel["embedding"])
    st.session_state["_task_names"] = list(names)
    dense = study.has_matrix(sel["method"], sel["embedding"])
    table_k = study.neighbours(sel["method"], sel["embedding"])[1].shape[1] \
        if study.has_neighbours(sel["method"], sel["embedding"]) else None
    # the search box and the controls are drawn after the chart and shown above it; on a hub the
    # search box goes first, since there the chart is megabytes of data and a search must answer at once
    search_first = len(names) > F.LARGE_N
    if search_first:
        matches = _search(list(names), "graph_search")
    else:
        search_box, matches = st.container(), _matches(list(names), "graph_search")
    controls = st.container()
    _init("graph_mode", "knn")
    modes = ["knn", "threshold"] if dense else ["knn"]
    _choice("graph_mode", modes, "knn")
    mode = st.session_state["graph_mode"]
    kmax = max(1, len(names) - 1) if table_k is None else table_k
    _clamp("graph_k", 1, kmax, min(GRAPH_K, kmax))
    if dense and (mode == "threshold" or len(names) <= F.LARGE_N):  # the slider's range needs the matrix
        _, S = study.similarity(sel["method"], sel["embedding"])
        off = S[~np.eye(len(S), dtype=bool)] if len(S) > 1 else np.array([0.0, 1.0])
        lo, hi = float(np.floor(off.min() * 100) / 100), float(np.ceil(off.max() * 100) / 100)
        default = round(float(np.quantile(off, 0.75)), 2)
    else:
        lo, hi, default = 0.0, 1.0, 0.5
    hi = max(hi, lo + 0.01)
    _clamp("graph_threshold", lo, hi, default)
    gk, thr = int(st.session_state["graph_k"]), float(st.session_state["graph_threshold"])
    _init("comm_method", "louvain")
    _choice("comm_method", ["louvain", "greedy"], "louvain")
    comm = st.session_state["comm_method"]
    G, summary, pos = load_graph(str(root), stamp, sel["method"], sel["embedding"], mode, gk, thr, comm)
    large = G.number_of_nodes() > F.LARGE_N
    # the graph first: its chart's scripts then load while the list beside it is drawn
    top = study.top_k(sel["target"], sel["k"], sel["method"], sel["embedding"])
    left, right = st.columns([4, 1.1])
    with left:
        users = [n for n in G if G.nodes[n].get("user_task")]  # the user's own tasks: labelled and ringed
        spec = F.graph_figure(G, pos, target=sel["target"], sources=[s.name for s in top],
                              highlight=[*users, *matches], height=680 if large else 620, rings=users)
        st.vega_lite_chart(spec=spec, key="graph_chart", on_select=_pick_target_from_graph,
                           selection_mode=[F.PICK], theme=None, width="stretch")
        st.caption(f"{METHOD_LABELS.get(sel['method'])} experts, {EMBEDDING_LABELS.get(sel['embedding'])} "
                   "similarity. Fill = modality, " + (
                       f"{len(names):,} tasks drawn on one canvas; each bubble is a community (its size grows with "
                       "its members); edges are the kNN links around the target when there are too many to draw. "
                       if large else "size = expert accuracy, outline = community, edge width = similarity. ")
                   + "The target is the red star, dashed lines lead to its top-k sources; "
                   + ("every task is named (the target, its sources and search matches in bold type). "
                      if G.number_of_nodes() <= F.NAME_ALL_N else
                      "only the target, its sources and search matches are named (hover for any other task). ")
                   + "Click a node to make it the target; drag to pan, scroll to zoom, double-click to reset the view.")
        _placed_elsewhere(study, sel, set(G))
        _cross_modal_note(study)
    with right:
        topk_list(study, sel, "topk-graph", top)
        st.markdown(f"**Communities** ({len(summary)}; " + ("bubbles on the graph)" if large else "node outline colour)"))
        shown = sorted(summary, key=lambda c: -int(c["size"]))[:20] if large else summary  # the largest, on a hub
        for c in shown:  # plain markdown: no HTML on the first view (its renderer is one more script to load)
            badge = " · **cross-modal**" if c["cross_modal"] else ""
            members = list(map(str, c["members"]))
            listed = ", ".join(members[:12]) + (f", … ({len(members) - 12} more)" if len(members) > 12 else "")
            st.markdown(f"**{_md(str(c['community']))}** — {int(c['size'])} tasks, "
                        f"{_md(', '.join(map(str, c['modalities'])))}{badge}  \n:small[{_md(listed)}]")
        if len(shown) < len(summary):
            st.caption(f"… and {len(summary) - len(shown)} smaller communities")
    if not search_first:
        with search_box:
            _search(list(names), "graph_search")
    c1, c2, c3, c4 = controls.columns([1.3, 1.3, 1.3, 1])
    c1.radio("Link tasks by", modes, key="graph_mode", horizontal=True,
             format_func=lambda m: {"knn": "k nearest neighbours", "threshold": "similarity threshold"}[m],
             help=None if dense else "This hub stores each task's top-k neighbours only (no full matrix).")
    if mode == "knn":
        c2.slider("Neighbours per task (kNN k)", 1, kmax, key="graph_k")
    else:
        c2.slider("Similarity threshold", lo, hi, key="graph_threshold", step=0.01)
    c3.radio("Communities", ["louvain", "greedy"], key="comm_method", horizontal=True,
             help="networkx community detection on the similarity-weighted graph.")
    # plain markdown, not st.metric: one widget kind less to load on the first view
    c4.markdown(f"**Edges**  \n{G.number_of_edges()}", help="Links in the graph with the current settings.")


def _placed_elsewhere(study: Study, sel: dict, drawn: set) -> None:
    """Say where a placed user task is drawn when this graph does not show it (a task is placed by
    Fisher and the study's default predictor, not by every predictor)."""
    for t in study.tasks():
        if t.get("user_task") and t["name"] not in drawn:
            on = [EMBEDDING_LABELS.get(e, e) for e in NT.placed_on(study.root, t["name"], sel["method"])]
            st.caption(f"Your task {_md(t['name'])} is not on this graph: it is placed by "
                       f"{_md(', '.join(on) or 'no embedding of these experts')}; choose one of those in the sidebar.")


def _cross_modal_note(study: Study) -> None:
    """The cross-modal finding, computed from the study's measured transfer (reader), in one line."""
    from pitune_core.study.read.reader import GroundTruthError  # lazy: loads safetensors

    try:
        f = study.cross_modal_finding(st.session_state.get("gt_plan"))
    except GroundTruthError as e:
        st.caption(f"Cross-modal finding not shown: {_md(e)}")
        return
    if f is None:
        return
    with st.container(key="cross-modal"):
        st.markdown("**Do cross-modality sources help?** Measured: " + _md(f["sentence"]))
        st.caption(f"From {_md(f['source'])}: gain over a from-scratch expert in accuracy points, the mean over "
                   "targets of each target's mean over its same- (cross-) modality sources, bootstrap 95% CI "
                   "over targets; the graph's cross-modal links are predictions, this is what was measured.")


def tab_map(study: Study, root: Path, stamp: int, sel: dict) -> None:
    import numpy as np

    names = study.prediction_names(sel["method"], sel["embedding"])
    st.session_state["_task_names"] = list(names)  # the search's "make it the target" checks against it
    mode = st.session_state.get("graph_mode", "knn")
    if not study.has_matrix(sel["method"], sel["embedding"]):
        mode = "knn"
    kmax = study.neighbours(sel["method"], sel["embedding"])[1].shape[1] \
        if study.has_neighbours(sel["method"], sel["embedding"]) else max(1, len(names) - 1)
    G, summary, _ = load_graph(str(root), stamp, sel["method"], sel["embedding"], mode,
                               min(kmax, int(st.session_state.get("graph_k", min(GRAPH_K, kmax)))),
                               float(st.session_state.get("graph_threshold", 0.5)),
                               st.session_state.get("comm_method", "louvain"))
    communities = {n: G.nodes[n].get("community") for n in G}
    attrs = study.node_attrs(sel["method"])
    top = [s.name for s in study.top_k(sel["target"], sel["k"], sel["method"], sel["embedding"])]
    st.subheader("Task map")
    matches = _search(list(names), "map_search")
    try:
        lnames, coords, note = study.layout(sel["method"], sel["embedding"])
    except ValueError as e:
        st.info(str(e))
    else:
        users = [n for n in lnames if attrs.get(n, {}).get("user_task")]  # labelled and ringed
        fig = F.layout_figure(lnames, coords, attrs, communities, target=sel["target"], sources=top,
                              highlight=[*users, *matches], height=620)
        NT.highlight(fig, users, {n: coords[i] for i, n in enumerate(lnames)})
        st.plotly_chart(fig, key="layout_chart", config={"displaylogo": False})
        st.caption((note or "UMAP of the task embeddings.") + " The target is the red star; its top-k sources "
                   "and search matches are labelled.")
    st.subheader("Similarity heatmap")
    if not study.has_matrix(sel["method"], sel["embedding"]):
        st.info(f"This study stores only each task's top-{kmax} neighbours, not the full {len(names):,} × "
                f"{len(names):,} similarity matrix, so there is no heatmap. The graph and the top-k list show "
                "the neighbours.")
        return
    names, S = study.similarity(sel["method"], sel["embedding"])
    _init("heat_order", "community")
    order_by = st.radio("Order by", ["community", "cluster", "modality", "name"], key="heat_order",
                        horizontal=True, help="community: the graph's communities (Graph tab settings); "
                        "cluster: average-linkage clustering of 1 − similarity.")
    shown = list(names)
    if len(names) > F.HEATMAP_MAX:
        shown = F.heatmap_block(names, S, sel["target"], F.HEATMAP_MAX)
        st.caption(f"{len(names):,} tasks are too many for one heatmap: showing the target "
                   f"{_md(sel['target'])} and its {len(shown) - 1} most similar tasks.")
    idx = [names.index(n) for n in shown]
    S_shown = np.asarray(S)[np.ix_(idx, idx)]
    modalities = {n: attrs.get(n, {}).get("modality") for n in shown}
    order = F.order_tasks(shown, order_by, communities, modalities, S_shown)
    st.plotly_chart(F.heatmap_figure(shown, S_shown, order, communities if order_by == "community" else None),
                    key="heatmap_chart", config={"displaylogo": False})


def tab_target(study: Study, sel: dict) -> None:
    t = study.task(sel["target"])
    experts = study.experts_of(sel["method"])
    e = experts.get(t["name"], {})
    st.subheader(t["name"])  # task names are validated identifiers (reader)
    st.caption(f"{_md(t.get('modality'))} · {_md(t.get('num_classes'))} classes · {_md(t.get('description', ''))}")
    metric = (e.get("metric") or t.get("metric") or "accuracy").replace("_", "-")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(f"Own expert ({metric})", _pct(e.get("expert")))
    m2.metric("Zero-shot", _pct(e.get("zero_shot")))
    m3.metric("Majority class", _pct(e.get("majority")))
    m4.metric("Training examples", t.get("num_train", "–"))
    if t.get("user_task"):
        st.caption("Test scores of your task from its placement (placement.json): its own expert trained on the "
                   "placement's examples, the backbone without an expert (zero-shot), always the majority class."
                   + ("" if e.get("source") else " This placement did not record them: place the task again "
                                                 "(New task tab or `pitune task place`) to see them."))
    left, right = st.columns([1.2, 1])
    with left:
        top = study.top_k(sel["target"], sel["k"], sel["method"], sel["embedding"])
        st.plotly_chart(F.topk_figure(top, sel["target"]), key="topk_chart", config={"displaylogo": False})
    with right:
        topk_list(study, sel, "topk-list")
        gains = study.measured_gains(sel["target"])
        if gains:
            ranked = sorted(gains.items(), key=lambda kv: -kv[1])
            best, best_gain = ranked[0]
            # the verdict ranks the measured sources only, like the study's hit rate and the table below
            top_m = study.top_k_measured(sel["target"], sel["k"], sel["method"], sel["embedding"])
            predicted = [s.name for s in top_m]
            verdict = (":green[**in the predicted top-k**]" if best in predicted
                       else ":red[**not in the predicted top-k**]")
            unmeasured = [s.name for s in top if s.gain is None]
            if unmeasured:
                st.caption(f"Not measured: {', '.join(unmeasured)} (no transfer run to this target).")
            st.markdown(f"Top-{len(top_m)} predicted **among the {len(gains)} measured sources** (same "
                        f"{_md(EMBEDDING_LABELS.get(sel['embedding'], sel['embedding']))} similarity): "
                        + ", ".join(s.name for s in top_m))
            st.markdown(f"Best measured source: **{best}** ({best_gain:+.1f} points) — {verdict}.")
            st.caption(f"Measured gains: {study.measured_matrix()[3]}.")
            all_names, _ = study.similarity(sel["method"], sel["embedding"])
            full = study.top_k(sel["target"], len(all_names) - 1, sel["method"], sel["embedding"])
            rank = {s.name: i for i, s in enumerate(full, 1)}
            rows = [{"source": n, "measured gain (pts)": round(g, 2), "measured rank": i,
                     "predicted rank": rank.get(n)} for i, (n, g) in enumerate(ranked, 1)]
            st.dataframe(rows, hide_index=True, key="gains_table")
        else:
            mm = study.measured_matrix()
            st.info(f"`{sel['target']}` is not among the measured transfer targets"
                    + (f" ({mm[3]}: {', '.join(mm[0])})." if mm else " (this study has none)."))
    st.markdown("#### How well does each embedding predict transfer?")
    shown = _groundtruth_panel(study, sel)
    if not shown:
        _v1_quality(study, sel, shown)
    elif study.quality_table():  # the first measurement stays one click away
        with st.expander("First measurement (transfer/predict_quality.json, fisher / weights / data)"):
            _v1_quality(study, sel, shown)


def _groundtruth_panel(study: Study, sel: dict) -> bool:
    """Every predictor at the target data size the user picks, against the ground truth
    (groundtruth/PLAN/quality.json, reliability.json); False when the study has none to show."""
    from pitune_core.study.read.reader import GroundTruthError  # lazy: loads safetensors

    have, problems = {}, []
    for plan in study.groundtruth_plans():
        try:
            q = study.groundtruth_quality(plan)
        except GroundTruthError as e:
            problems.append(str(e))
            continue
        if q and q["sizes"]:
            have[plan] = q
    for p in problems:  # a bad file is named, as text; the rest of the page renders
        st.warning(f"Ground truth not shown: {_md(p)}")
    if not have:
        return False
    plans = list(have)
    _choice("gt_plan", plans, fullest_plan(have))
    plan = st.selectbox("Ground truth", plans, key="gt_plan") if len(plans) > 1 else plans[0]
    q = have[plan]
    _choice("gt_size", q["sizes"], q["sizes"][0])
    size = st.radio("Target data", q["sizes"], key="gt_size", horizontal=True,
                    format_func=lambda s: "full data" if s == "full" else f"{s.split('-')[0]} shots per class",
                    help="How much of the target's data each predictor had (the few-shot protocol: 4 or 16 "
                         "examples per class; full: the whole training split).")
    rel = None
    try:
        rel = study.groundtruth_reliability(plan)
    except GroundTruthError as e:
        st.warning(f"Reliability not shown: {_md(e)}")
    r = q["reliability"]
    mean = (rel or {}).get("mean") or r.get("mean") or {}
    n_seeds = (rel or {}).get("n_seeds") or r.get("n_seeds")

    def num(v, nd=2):
        return "–" if v is None else f"{v:.{nd}f}"

    st.markdown(f"**Noise ceiling** ({n_seeds or '?'} seeds): Spearman–Brown reliability of the seed-averaged "
                f"gains {num(mean.get('reliability'))} (mean split-half Spearman {num(mean.get('r_half'))}), "
                f"Spearman ceiling {num(mean.get('ceiling_spearman'))}.")
    per = ((rel or {}).get("per_target") or {}).get(sel["target"])
    if per:
        st.markdown(f"For `{sel['target']}`: split-half Spearman {num(per.get('r_half'))}, reliability "
                    f"{num(per.get('reliability'))}, Spearman ceiling {num(per.get('ceiling_spearman'))}.")
    elif rel is not None:
        st.caption(f"`{sel['target']}` is not a target of this ground truth (no split-half value).")
    best = F.best_predictor(q, size)
    if best:
        b = q["table"][size][best]
        s = b["summary"].get("spearman") or {}
        vs = b.get("vs_same_modality") or {}
        lo, hi = vs.get("ci") or (None, None)
        verdict = ("" if best == "same_modality" or not vs else
                   " — beats same-modality (CI above 0)" if lo is not None and lo > 0 else
                   " — worse than same-modality (CI below 0)" if hi is not None and hi < 0 else
                   " — not distinguishable from same-modality (CI covers 0)" if lo is not None else
                   " — vs same-modality: too few targets for a CI")
        st.markdown(f"Best at {_md(size)} by Spearman: **{_md(best)}** "
                    f"({_md(F.metric_cell(s, 'spearman'))}, {b['n_targets']} target{'s' * (b['n_targets'] != 1)})"
                    f"{verdict}.")
    chosen = predictor_of(sel["embedding"]) or sel["embedding"]  # "predictor-fisher" is the row "fisher"
    here = "" if chosen in q["table"][size] else \
        f" (the sidebar's {_md(EMBEDDING_LABELS.get(sel['embedding'], sel['embedding']))} is not a predictor here)"
    st.dataframe(F.predictor_quality_rows(q, size, selected=chosen, target=sel["target"],
                                          ceiling_targets=len((rel or {}).get("per_target") or {}) or None),
                 hide_index=True, key="gt_quality_table")
    st.caption(f"groundtruth/{_md(plan)}/quality.json: each metric's mean over targets with its bootstrap 95% CI, "
               "then as a fraction of the noise ceiling (regret: the excess over the split-half oracle's regret); "
               "cost = seconds per target on the machine that ran it; vs same-modality = paired Spearman "
               f"difference with its CI; beyond modality = Spearman over the target's own-modality sources only "
               f"(exploratory; same-modality is 0 there by construction); ◀ marks the sidebar's embedding{here}.")
    with st.expander("Chart"):
        metric = st.radio("Metric", q["metrics"], key="gt_metric", horizontal=True, format_func=F.metric_title)
        st.plotly_chart(F.predictor_quality_figure(q, size, metric, selected=chosen),
                        key="gt_quality_chart", config={"displaylogo": False})
    return True


def _v1_quality(study: Study, sel: dict, shown: bool) -> None:
    """The first measurement's table (transfer/predict_quality.json: fisher / weights / data)."""
    rows = study.quality_table()
    if rows:
        st.dataframe([{"embedding": r["embedding"], "Spearman (mean)": r.get("spearman_mean"),
                       "Spearman (std)": r.get("spearman_std"),
                       f"top-{r.get('top_k', 'k')} hit rate": r.get("hit_mean"),
                       "hit rate (std)": r.get("hit_std")} for r in rows], hide_index=True, key="quality_table")
        per = study.target_quality(sel["embedding"], sel["target"])
        if per:
            measured = sorted(study.measured_gains(sel["target"]))
            st.caption(f"For `{sel['target']}` with {_md(EMBEDDING_LABELS.get(sel['embedding']))} similarity, "
                       f"ranked over the {len(measured)} sources whose transfer to it was measured "
                       f"(transfer/predict_quality.json; the list above ranks all experts, so it may name "
                       f"sources that were not measured):")
            st.dataframe([{"seed": p["seed"], "Spearman": p.get("spearman"), "hit": p.get("hit"),
                           "best measured source": p.get("best_source"),
                           f"predicted top-{len(p.get('predicted') or [])} among measured sources":
                               ", ".join(p.get("predicted") or [])} for p in per], hide_index=True,
                         key="target_quality_table")
        st.caption("Spearman: rank correlation between predicted similarity and measured gain over the "
                   "sources of each target; hit rate: how often the best measured source is in the "
                   "predicted top-k.")
    elif not shown:
        st.info("Not measured in this study: no predictor ground truth (`groundtruth/<plan>/quality.json`) "
                "and no first measurement (`transfer/predict_quality.json`), so how well each embedding "
                "predicts transfer is unknown here. The similarities above are predictions only.")


def tab_launch(study: Study, sel: dict, db: Path) -> None:
    target, method = sel["target"], sel["method"]
    top = study.top_k(target, sel["k"], method, sel["embedding"])
    experts = [t for t in study.expert_tasks(method) if t != target]
    st.subheader(f"Interpolate and tune on `{target}`")
    c1, c2 = st.columns([1.1, 1])
    with c1:
        _init("src_mode", "shots")
        src_mode = st.radio("Sources", ["shots", "top-k", "hand"], key="src_mode", horizontal=True,
                            format_func=lambda m: {"shots": f"top-{sel['k']} from the run's examples",
                                                   "top-k": f"top-{sel['k']} of the graph",
                                                   "hand": "choose them"}[m],
                            help="From the run's examples (the protocol, the default): the run trains the "
                                 "target's own expert on its shots and ranks the study's experts with the "
                                 "sidebar's predictor on those examples alone. Of the graph: the list shown "
                                 "on the Graph tab, ranked from the target's data in the study (for a "
                                 "built-in target its full training split).")
        if src_mode == "shots":
            sources = None
        elif src_mode == "top-k":
            sources = [s.name for s in top]
        else:
            if not isinstance(st.session_state.get("src_pick"), list):
                st.session_state["src_pick"] = [s.name for s in top]
            st.session_state["src_pick"] = [s for s in st.session_state["src_pick"] if s in experts]
            sources = st.multiselect(f"Source experts ({METHOD_LABELS.get(method)})", experts, key="src_pick")
        n_tasks = len(study.similarity(method, sel["embedding"])[0])
        sims = {s.name: s.similarity for s in study.top_k(target, n_tasks - 1, method, sel["embedding"])}
        _init("weights_mode", "learn-uniform")
        wmode = st.radio("Mixing weights", list(WEIGHT_MODES), key="weights_mode",
                         format_func=WEIGHT_MODES.get)
        hand = []
        if wmode == "hand" and sources:
            st.caption("Relative weight of each source (normalised to sum to 1):")
            for s in sources:
                _init(f"hw_{s}", 1.0)
                hand.append(st.slider(s, 0.0, 1.0, key=f"hw_{s}", step=0.05))
        s1, s2, s3 = st.columns(3)
        _init("shots", TransferConfig.default_of("shots"))
        shots = s1.select_slider("Shots per class", SHOT_OPTIONS, key="shots",
                                 help="Training examples per class; 'full' uses all training data.")
        _init("seed", 0)
        seed = s2.number_input("Seed", min_value=TransferConfig.bounds("seed")[0], max_value=10_000, step=1, key="seed",
                               help=TransferConfig.help_of("seed"))
        _init("weights_only", False)
        weights_only = s3.checkbox("Tune weights only", key="weights_only", disabled=wmode == "hand",
                                   help="Learn the mixing weights but keep the experts frozen.")
    with c2:
        weights_spec = None
        problem = None
        if sources is None:  # the run ranks its own sources
            if wmode == "hand":
                problem = "Hand-set weights need named sources: choose them, or learn the weights."
            else:
                weights_spec = {"learn-uniform": "uniform", "learn-auto": "auto"}[wmode]
                n_other = len(experts)
                st.markdown(f"**Sources: the top {sel['k']} of {n_other} experts, chosen by the run**")
                st.caption(
                    (f"The run trains `{target}`'s own expert on its {shots}-shot sample (seed {int(seed)}), "
                     f"ranks the other {n_other} experts with "
                     f"{_md(EMBEDDING_LABELS.get(sel['embedding'], sel['embedding']))} computed on those examples "
                     "alone, and tunes the top "
                     f"{sel['k']} with its own expert. Nothing comes from `{target}`'s other examples, so "
                     "the sources may differ from the graph's list; the run's page shows the ones it chose.")
                    if shots != "full" else
                    (f"At full data the run has all of `{target}`'s training data: it takes the study's "
                     f"top {sel['k']} ({', '.join(s.name for s in top)}), as the graph shows."))
        elif not sources:
            problem = "Choose at least one source expert."
        else:
            try:
                spec = {"learn-uniform": "uniform", "learn-auto": "auto"}.get(wmode, hand)
                init = initial_weights(spec, [sims.get(s, 0.0) for s in sources])
                weights_spec = spec
                title = ("Weights as they will be used (fixed)" if wmode == "hand"
                         else "Starting weights (π-Tuning learns them while tuning)")
                st.plotly_chart(F.weights_bar_figure(sources, init, title=title), key="init_weights_chart",
                                config={"displaylogo": False})
                st.dataframe([{"source": s, "similarity": round(sims.get(s, float("nan")), 4),
                               "weight": round(w, 4)} for s, w in zip(sources, init)],
                             hide_index=True, key="weights_table")
                st.caption("Hand-set weights use exactly these sources." if wmode == "hand" else
                           "The paper's recipe: the target's own expert, trained first on the run's data alone "
                           "(half the step budget), joins these sources with a learned weight of its own.")
            except ValueError as e:
                problem = str(e)
        if problem:
            st.warning(problem)
        launch = st.button("Launch run", type="primary", disabled=problem is not None, key="launch",
                           icon=":material/rocket_launch:")
    if launch and weights_spec is not None:
        try:
            cfg = study.transfer_config(target, sources, method=method, embedding=sel["embedding"],
                                        weights=weights_spec, shots=shots, seed=int(seed),
                                        weights_only=bool(weights_only) and wmode != "hand",
                                        k=sel["k"] if sources is None else None)
        except ValueError as e:
            st.error(f"Cannot launch: {e}")
        else:
            reg = get_registry(str(db))
            if reg is None:
                return
            label = {"learn-uniform": "learned", "learn-auto": "learned from sims", "hand": "hand"}[wmode]
            chosen = f"top-{sel['k']} from its examples" if sources is None else str(len(sources))
            try:  # the kind's validator runs here: a run that would be refused is never queued
                run_id = reg.submit("transfer", cfg.to_dict(), name=f"{target} ← {chosen} {method} experts, {label}")
            except (ValueError, RuntimeError, OSError) as e:
                st.error(f"Cannot launch: {e}")
                return
            st.session_state["launched"] = run_id

            try:
                run_executor.ensure_scheduler(str(db))
            except (RuntimeError, OSError) as e:
                st.warning(f"Run {run_id} is queued, but the scheduler did not start ({e}). Start it with "
                           f"`pitune runs scheduler --db {db}`.")
            st.toast(f"Run {run_id} queued", icon=":material/rocket_launch:")
    if st.session_state.get("launched"):
        st.success(f"Launched run `{st.session_state['launched']}` — follow it below; results appear under "
                   "**Runs & compare**.")
    st.divider()
    live_runs(str(db))


def _clock(secs: float) -> str:
    secs = int(round(secs))
    return f"{secs // 60}:{secs % 60:02d}" if secs < 3600 else f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


def stage_progress_text(p: Mapping) -> str:
    """A run's stage as its bar says it: its count, and the time left at the stage's own rate so far
    (``stage_elapsed`` over the steps done; none before the first step)."""
    step, total, spent = p.get("step"), p.get("total"), p.get("stage_elapsed")
    text = f"{_md(p.get('stage') or 'train')}: {step}/{total}"
    if isinstance(spent, (int, float)) and isinstance(step, (int, float)) and step > 0 and total and step < total:
        text += f" · about {_clock(spent / step * (total - step))} left"
    return text


@st.fragment(run_every=2.0)
def live_runs(db: str) -> None:
    """Live progress of the dashboard's runs (re-renders on its own every 2 s)."""
    reg = get_registry(db)
    if reg is None:
        return
    try:
        reg.recover_interrupted()  # a run whose worker was killed shows as interrupted, not running
    except Exception:  # noqa: BLE001 - a read-only registry is still shown
        pass
    runs = filter_runs_for(reg.list_runs(kind="transfer", limit=50))
    active = [r for r in runs if r.status in ACTIVE]
    head, sched = st.columns([3, 1])
    head.markdown(f"#### Runs ({len(active)} active)")
    running = scheduler_running(db)
    sched.caption("scheduler: " + ("running" if running else "idle (starts with the next launch)"))
    if active and not running and any(r.status == QUEUED for r in active):
        if sched.button("Start scheduler", key="start_sched"):

            run_executor.ensure_scheduler(db)
    if not runs:
        st.caption("No runs yet.")
        return
    for r in active:
        p = r.progress or {}
        cols = st.columns([2.2, 1.4, 3, 1, 1, 0.9])
        cols[0].markdown(_md(r.id))  # registry values are data: escaped, never HTML
        cols[0].caption(f"{_md(r.config.get('target'))} · k={_md(r.config.get('k'))} · "
                        f"{_md(r.config.get('shots') or 'full')}-shot")
        cols[1].markdown(_status(r.status))
        cols[1].caption(f"stage: {_md(p.get('stage', '–'))}")
        step, total = p.get("step"), p.get("total")
        if step is not None and total:
            cols[2].progress(min(1.0, float(step) / float(total)), text=stage_progress_text(p))
        else:
            cols[2].progress(0.0, text="waiting" if r.status == QUEUED else (
                _md(p["stage"]) if p.get("stage") else
                "starting: the run names each stage here, with its count, as it reaches it"))
        cols[3].caption("loss")
        cols[3].markdown(f"**{p['loss']:.3f}**" if isinstance(p.get("loss"), (int, float)) else "–")
        cols[4].caption("elapsed")
        cols[4].markdown(f"**{_md(_elapsed(r))}**")
        if r.cancel_requested:
            cols[5].caption("cancelling…")
        else:  # the callback runs before the (fragment) rerun, so the new status shows at once
            cols[5].button("Cancel", key=f"cancel_{r.id}", on_click=reg.request_cancel, args=(r.id,))
    done = [r for r in runs if r.status not in ACTIVE][:8]
    if done:
        st.caption("Recently finished")
        st.dataframe([{"run": r.id, "status": r.status,
                       "target": r.config.get("target"), "k": r.config.get("k"),
                       "shots": r.config.get("shots") or "full",
                       "accuracy": (r.metrics or {}).get("accuracy"), "time": _elapsed(r),
                       "error": (r.error or "")[:120]} for r in done], hide_index=True, key="finished_runs")


def _protocol_cell(a: dict | None) -> str:
    """One approach × regime cell: mean ± std (ddof=1) over complete targets, n targets."""
    if a is None:
        return ""
    if not a["n_targets"]:
        return f"– (0 of {a['planned_targets']} targets complete)"
    sd = "–" if a["std"] != a["std"] else f"{a['std']:.1f}"
    more = "" if a["n_targets"] == a["planned_targets"] else f" of {a['planned_targets']}"
    return f"{a['mean']:.1f} ± {sd} (n={a['n_targets']}{more})"


def protocol_section(study: Study) -> bool:
    """The pre-registered comparison (``protocol/<plan>/results.csv``, :mod:`pitune_core.study.read.evidence`):
    progress, paired differences as a dot plot, the approach × regime table, a verdict and the
    recommendation per regime. Returns False (nothing shown) when the study has no protocol results."""
    plans = study.protocol_plans()
    if not plans:
        return False
    name = plans[0] if len(plans) == 1 else st.selectbox("Pre-registered plan", plans, index=len(plans) - 1,
                                                         key="protocol_plan")
    st.subheader(f"Pre-registered comparison ({_md(name)})")
    summary = study.protocol_summary(name)
    if summary["problem"]:
        st.error(_md(f"The protocol results cannot be read: {summary['problem']}. Rewrite them with "
                     f"`pitune study status --plan plans/{name}.json --study {study.root}`."))
        return True
    regimes = summary["regimes"]
    st.markdown(f"**{summary['done']} of {summary['planned']} planned runs done**"
                + (f" · {summary['failed']} failed" if summary["failed"] else "")
                + (f" · {summary['missing']} not run yet" if summary["missing"] else "")
                + ". Every planned run is listed; none is filtered.")
    incomplete = [g for g in regimes if not g["complete"]]
    if incomplete:
        st.warning("Incomplete: " + "; ".join(f"{g['regime']} ({g['done']} of {g['planned']} runs done)"
                                              for g in incomplete)
                   + ". Their numbers are provisional and cover only the targets whose every planned seed is "
                     "done for the approaches compared.")
    st.markdown("**Paired differences** (π-Tuning minus each approach, points; seed-averaged per target, "
                "bootstrap 95% CI over targets; green: CI above 0, red: below 0, open grey: spans 0)")
    st.plotly_chart(F.paired_diff_figure([d for g in regimes for d in g["diffs"]]), key="protocol_diffs",
                    config={"displaylogo": False})
    approaches = list(dict.fromkeys(a["approach"] for g in regimes for a in g["approaches"]))
    by = {(g["regime"], a["approach"]): a for g in regimes for a in g["approaches"]}
    labels = {a["approach"]: a["label"] for g in regimes for a in g["approaches"]}
    st.markdown("**Score by approach and regime** (points: mean ± std, ddof=1, over per-target means of "
                "targets with every planned seed done; n targets)")
    st.dataframe([{"approach": labels[a], **{g["regime"]: _protocol_cell(by.get((g["regime"], a))) for g in regimes}}
                  for a in approaches], hide_index=True, key="protocol_table")
    st.markdown("**What the evidence says**")
    for g in regimes:
        rec = g["recommendation"]
        shown = [d for d in g["diffs"] if d["b"] == "target-only" or d["b"] == g["best_other"]]
        st.markdown("\n".join(f"- {_md(d['verdict'])}" + (f" {_md(d['b'])} is the best other transfer approach here."
                                                          if d["b"] == g["best_other"] else "") for d in shown)
                    or f"- {_md(g['regime'])}: no π-Tuning comparison in this regime.")
        (st.success if rec["pi_tuning"] else st.info)(_md(rec["text"]))
    with st.expander("Every paired difference"):
        st.dataframe([{"regime": d["regime"], "comparison": d["label"], "n targets": d["n"],
                       "mean": d["mean"], "CI low": d["ci_low"], "CI high": d["ci_high"],
                       "percentile CI low": d.get("pct_low"), "percentile CI high": d.get("pct_high"),
                       "Wilcoxon p": d["p_wilcoxon"], "W/T/L": f"{d['wins']}/{d['ties']}/{d['losses']}"}
                      for g in regimes for d in g["diffs"]], hide_index=True, key="protocol_diffs_table")
    robustness_section(study, name)
    return True


NO_ROBUSTNESS = ("This study holds no robustness measurements: no tuned model of its pre-registered comparison was "
                 "scored on shifted test sets of its family or on corrupted copies of its test set (a plan that asks "
                 "for them records them in `protocol/<plan>/robustness.csv`).")


def _robust_cell(c: dict) -> str:
    """mean ± std (ddof=1) over targets, n targets; points."""
    if not c["n"]:
        return "–"
    sd = "–" if c["std"] != c["std"] else f"{c['std']:.1f}"
    return f"{c['mean']:.1f} ± {sd} (n={c['n']})"


def robustness_section(study: Study, name: str) -> None:
    """The robustness of the comparison's tuned models (:meth:`Study.protocol_robustness`): the scores
    per approach as a figure and a table, the paired gaps against π-Tuning; a plain sentence when the
    plan holds none."""
    st.markdown("**Robustness** (the tuned models scored, with no further training, on shifted test sets of their "
                "family with the same labels and on corrupted copies of their own test set)")
    rob = study.protocol_robustness(name)
    if rob["problem"]:
        st.error(_md(f"The robustness measurements cannot be read: {rob['problem']}."))
        return
    if not rob["runs_scored"]:
        st.info(NO_ROBUSTNESS)
        return
    regimes = rob["regimes"]
    st.plotly_chart(F.robustness_figure(regimes), key="robustness_chart", config={"displaylogo": False})
    st.caption(f"{rob['runs_scored']} runs scored. Points: mean ± std (ddof=1) over targets with every planned seed "
               "scored (each target the mean of its seeds), n targets; shifted only where the target has a shifted "
               "test set. The gaps (score minus in-distribution) are the effective robustness: closer to 0 is more "
               "robust.")
    st.dataframe([{"regime": g["regime"], "approach": a["label"],
                   "targets scored": f"{a['n_targets']} of {a['planned_targets']}",
                   **{MEASURE_LABELS[m]: _robust_cell(a[m]) for m in MEASURES}}
                  for g in regimes for a in g["approaches"]], hide_index=True, key="robustness_table")
    st.markdown("**Effective robustness, paired** (π-Tuning minus each approach, points, bootstrap 95% CI over "
                "targets; above 0: π-Tuning loses less off its own test set)")
    st.plotly_chart(F.robustness_diff_figure(regimes), key="robustness_diffs", config={"displaylogo": False})
    with st.expander("Every paired robustness difference"):
        st.dataframe([{"regime": d["regime"], "comparison": d["label"], "measure": MEASURE_LABELS[d["measure"]],
                       "n targets": d["n"], "mean": d["mean"], "CI low": d["ci_low"], "CI high": d["ci_high"],
                       "percentile CI low": d.get("pct_low"), "percentile CI high": d.get("pct_high"),
                       "Wilcoxon p": d["p_wilcoxon"], "W/T/L": f"{d['wins']}/{d['ties']}/{d['losses']}"}
                      for g in regimes for d in g["diffs"]], hide_index=True, key="robustness_diffs_table")


def _run_sources(r) -> str:
    """The sources a run used: named at launch, or chosen by the run from its own examples (then
    in its metrics once it has them)."""
    named = r.config.get("sources")
    if named:
        return ", ".join(str(n) for n in named)
    chosen = (r.metrics or {}).get("sources")
    picked = ", ".join(str(n) for n in chosen) if isinstance(chosen, list) and chosen else "not chosen yet"
    return f"{picked} (ranked from its examples)"


def _run_score(rec, metric: str) -> float | None:
    """A finished run's test score in the task's ``metric`` (what the study's numbers are), or None
    when the run did not record it (a macro-F1 task is never compared by accuracy)."""
    m = rec.metrics or {}
    test = m.get("test") if isinstance(m.get("test"), Mapping) else {}
    v = test.get(metric, m.get("accuracy") if metric == "accuracy" else None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _study_cell(a: dict) -> str:
    sd = "–" if a["std"] != a["std"] else f"{100 * a['std']:.1f}"
    return f"{100 * a['mean']:.1f} ± {sd} ({len(a['scores'])} seed{'s' * (len(a['scores']) != 1)})"


def tab_compare(study: Study, sel: dict, db: Path) -> None:
    from pitune_core.study.read.evidence import references, regime_of, run_flags  # lazy: loads numpy

    target = sel["target"]
    reg = get_registry(str(db))
    all_runs = filter_runs_for(reg.list_runs(kind="transfer", limit=500)) if reg is not None else []
    runs = [r for r in all_runs if r.config.get("target") == target]
    protocol = protocol_section(study)
    if protocol:
        st.divider()
    else:
        st.caption(NO_ROBUSTNESS)
    st.subheader(f"Runs and baselines for `{target}`")
    ev = study.target_evidence(target, sel["method"])
    measured, metric, zero = ev["regimes"], ev["metric"], ev["zero_shot"]
    if ev["provisional"]:
        st.warning(
            "Provisional evidence. These baselines were made before the leakage-free protocol "
            "(README, *Protocol*): approaches that pick sources ranked them with the target's full-data "
            "expert, evaluation splits still held sentences that are in other tasks' training data "
            "(e.g. 40 of rt_polarity's 480 test sentences are in movie_sentiment's), the projector was aligned "
            "on three of these targets, and there are 2 seeds. Do not read a π-Tuning advantage from them; "
            "the pre-registered study (`plans/few-shot-v2.json`) replaces them.")
    scored = [(r, regime_of(r.config.get("shots")), _run_score(r, metric)) for r in runs if r.status == SUCCEEDED]
    flags = {r.id: run_flags(s, g, measured, zero) for r, g, s in scored}
    options = sorted({*measured, *(g for _, g, _ in scored)},
                     key=lambda g: (g == "full", int(g.split("-")[0]) if g != "full" else 0))
    if options:
        newest = scored[0][1] if scored else None  # the registry lists the newest run first
        if st.session_state.get("_cmp_for") != (target, newest):  # a new target or a new run: show its regime
            st.session_state["_cmp_for"] = (target, newest)
            st.session_state["cmp_regime"] = newest or options[0]
        _choice("cmp_regime", options, newest or options[0])
        regime = st.radio("Regime", options, key="cmp_regime", horizontal=True,
                          format_func=lambda g: "full data" if g == "full" else g.replace("-shot", " shots"),
                          help="The study's approaches on this target with the same training data as the run.")
        refs = references(measured, regime, zero)
        run_rows = [{"label": f"your run {r.id[-6:]}", "score": s, "flagged": bool(flags[r.id])}
                    for r, g, s in scored if g == regime]
        st.plotly_chart(F.target_evidence_figure(measured.get(regime, []), run_rows, refs, metric),
                        key="compare_chart", config={"displaylogo": False})
        said = []
        if measured.get(regime):
            said.append(f"The study's approaches on `{target}` at {_md(regime)}: every seed (dots) and the mean ± std "
                        f"(ddof=1), from {_md(ev['source'])}")
        elif measured:
            said.append(f"The study measured `{target}` at {_md(', '.join(measured))}, not at {_md(regime)}: there the "
                        "only reference is zero-shot")
        if zero is not None:
            said.append(f"zero-shot from {_md(ev['zero_shot_source'])}")
        st.caption("; ".join(said) + f". Scores are the task's metric ({_md(metric)}) on its test split.")
    if not measured:
        others = study.compare_targets()
        st.info(f"The study measured no approach on `{target}`"
                + (f" (its compared targets: {', '.join(others)})." if others else " (it holds no comparison)."))
    for r, g, s in scored:
        if flags[r.id]:
            st.warning(f"Run `{r.id}` ({_md(g)}) is " + _md("; ".join(flags[r.id])) + ".")
    left, right = st.columns(2)
    with left:
        st.markdown("**Your runs**")
        if runs:
            st.dataframe([{"run": r.id, "status": r.status, "shots": r.config.get("shots") or "full",
                           "k": r.config.get("k"), "sources": _run_sources(r),
                           "weights": r.config.get("weights") if isinstance(r.config.get("weights"), str)
                           else "hand", "seed": r.config.get("seed"),
                           "accuracy": (r.metrics or {}).get("accuracy"),
                           "vs the study": "; ".join(flags.get(r.id) or []) or ("–" if r.id not in flags else "ok")}
                          for r in runs], hide_index=True, key="runs_table")
        else:
            st.caption("No runs for this target yet — launch one under **Tune & launch**.")
    with right:
        if measured:
            st.markdown(f"**The study's measurements** (`{_md(ev['source'])}`, test {_md(metric)}, %: mean ± std)")
            names = list(dict.fromkeys(a["label"] for rows in measured.values() for a in rows))
            by = {(g, a["label"]): a for g, rows in measured.items() for a in rows}
            st.dataframe([{"approach": n, **{g: _study_cell(by[(g, n)]) if (g, n) in by else "" for g in measured}}
                          for n in names], hide_index=True, key="baselines_table")
    st.divider()
    st.markdown(f"#### Open a run of `{target}`")
    if not runs:
        st.caption(f"No runs of `{target}` in the registry yet"
                   + (f" ({len(all_runs)} of other targets: choose one of those targets in the sidebar)."
                      if all_runs else "."))
        return
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    _choice("open_run", ids, ids[0])  # the newest run of this target when the target changes
    run_id = st.selectbox("Run", ids, key="open_run",
                          format_func=lambda i: f"{i} · {by_id[i].config.get('shots') or 'full'}-shot · {by_id[i].status}")
    for msg in flags.get(run_id) or []:
        st.warning(f"This run is {_md(msg)}.")
    render_run(reg, by_id[run_id])


def render_run(reg, rec) -> None:
    try:
        files = read_run_files(rec.run_dir, reg.runs_root)
    except ValueError as e:
        st.error(str(e))
        return
    st.markdown(f"{_status(rec.status)} · {rec.name or ''} · elapsed {_elapsed(rec)}")
    metrics = files.get("metrics") or rec.metrics
    if rec.status == FAILED:
        st.error(files.get("FAILED") or rec.error or "failed")
        if files.get("error.txt"):
            with st.expander("error details"):
                st.code(files["error.txt"])
    if metrics:
        a, b, c = st.columns(3)
        a.metric("Test accuracy", _pct(metrics.get("accuracy")))
        b.metric("Validation accuracy", _pct((metrics.get("val") or {}).get("accuracy")))
        c.metric("Steps", metrics.get("steps", "–"))
    w = files.get("weights")
    left, right = st.columns([1.4, 1])
    with left:
        if isinstance(w, dict) and w.get("history"):
            st.plotly_chart(F.weights_history_figure(w["history"], w.get("sources") or rec.config.get("sources", [])),
                            key="run_weights_chart", config={"displaylogo": False})
        elif rec.status in ACTIVE:
            st.caption("Weights over time appear when the run has finished.")
        else:
            st.caption("This run recorded no weights history.")
    with right:
        st.markdown("**Config**")
        st.json(files.get("config") or rec.config, expanded=False)
        if metrics:
            st.markdown("**Metrics**")
            st.json(metrics, expanded=False)
    if files.get("expert_dir"):
        expert_dir = files["expert_dir"]
        st.download_button("Download merged expert (.zip)", data=lambda: zip_directory(expert_dir),
                           file_name=f"pitune-expert-{rec.id}.zip", mime="application/zip",
                           key=f"download_{rec.id}", icon=":material/download:")
    if "log" in files:
        with st.expander("log"):
            st.code(files["log"] or "(empty)")


def tab_study(study: Study) -> None:
    man = study.manifest()
    logs = study.measurement_logs()
    a, b, c, d, e = st.columns(5)
    a.metric("Tasks", len(study.tasks()))
    b.metric("Experts", len(study.expert_summary()))
    c.metric("Ground-truth pairs", f"{sum(r['runs'] for r in logs if r['path'].startswith('groundtruth/')):,}",
             help="Measured transfer runs (target, source, seed) in groundtruth/<plan>/pairs.jsonl.")
    d.metric("Protocol runs", f"{sum(r['runs'] for r in logs if r['path'].startswith('protocol/')):,}",
             help="Done runs of the pre-registered comparison in protocol/<plan>/runs.jsonl.")
    e.metric("Files (checksummed)", len(man.get("files", {})))
    st.markdown(f"Built with {_md(man.get('command', '?'))} · backbone {_md((man.get('backbone') or {}).get('id', '?'))}"
                f" · {_md(str(man.get('started', '?'))[:19])} → {_md(str(man.get('finished', '?'))[:19])}")
    times = study.recorded_times()
    if times:  # the sum of what each run recorded, not the wall time of the last (resumed) invocation
        st.markdown("**Compute time by stage** (sum of the times each run recorded)")
        st.dataframe([{"stage": t["stage"], "recorded time": "not recorded" if t["seconds"] is None
                       else f"{t['seconds'] / 60:.1f} min", "runs": t["runs"], "recorded in": t["source"]}
                      for t in times], hide_index=True, key="stage_times")
    if man.get("stage_seconds"):
        st.caption("Wall time of the invocation that completed each stage (a resumed stage counts only its "
                   "last invocation): " + ", ".join(f"{_md(k)} {v:.0f} s" for k, v in man["stage_seconds"].items()
                                                    if isinstance(v, (int, float))))
    st.markdown("**Experts**")
    st.dataframe(study.expert_summary(), hide_index=True, key="experts_table")
    left, right = st.columns(2)
    with left:
        abl = study.ablation()
        if abl:
            st.markdown("**Ablation: vision-language experts with the images blanked**")
            st.dataframe(abl, hide_index=True, key="ablation_table")
    with right:
        stab = study.fisher_stability("lora") if "lora" in study.methods() else None
        if stab:
            st.markdown("**Fisher stability** (N vs 2N samples)")
            st.markdown(f"top-{stab.get('k')} overlap {stab.get('mean_topk_overlap', 0):.2f}, "
                        f"Spearman over all pairs {stab.get('spearman_all_pairs', 0):.2f}")
    with st.expander("tasks.json"):
        st.dataframe([{k: v for k, v in t.items() if k not in ("labels", "verbalizers")} for t in study.tasks()],
                     hide_index=True, key="tasks_table")


# ----------------------------------------------------------------------------- main

def _library_selector() -> str | None:
    """The sidebar's study/library selector (shown only when libraries are imported): ``None`` for the
    study, else the imported library's name."""
    names = library_names()
    if not names:
        return None
    _choice("library_view", ["study", *names], "study")
    st.sidebar.selectbox("Expert library", ["study", *names], key="library_view",
                         format_func=lambda n: "the study's experts" if n == "study" else f"library: {n}",
                         help="Imported libraries (`pitune library import`) have their own graph and launch form.")
    return None if st.session_state["library_view"] == "study" else st.session_state["library_view"]


def main() -> None:
    for key in KEEP:  # keep the state of widgets on tabs that are not rendered this run
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("hw_")]:
        st.session_state[key] = st.session_state[key]
    root, db = study_path(), runs_db_path()
    stamp = hash((_stamp(root), NT.placed_stamp(root)))  # a newly placed user task is a new view
    try:
        study = load_study(str(root), stamp)
    except StudyError as e:
        render_missing(root, e.problems)
        return
    NT.apply_pending_switch()
    if _library_selector() is not None:  # an imported expert library: its own page (dashboard/library.py)
        LIB.render(st.session_state["library_view"], str(db), get_registry)
        return
    sel = selection(study)
    if sel is None:
        render_sidebar(study, root, db, sel)
        return
    st.title("π-Tuning dashboard")
    tabs = st.tabs(TABS, key="view", bind="query-params")
    renderers = {
        "Graph": lambda: tab_graph(study, root, stamp, sel),
        "Map": lambda: tab_map(study, root, stamp, sel),
        "Target": lambda: tab_target(study, sel),
        "Tune & launch": lambda: tab_launch(study, sel, db),
        "Runs & compare": lambda: tab_compare(study, sel, db),
        "Study": lambda: tab_study(study),
        "New task": lambda: NT.render(study, root, db, get_registry),
    }
    try:
        for name, tab in zip(TABS, tabs):
            if tab.open is False:
                continue
            with tab:
                try:
                    renderers[name]()
                except OSError as e:  # a full disk, a read-only or vanished file: one line, no traceback
                    where = f": {e.filename}" if getattr(e, "filename", None) else ""
                    st.error(_md(f"{name}: {e.strerror or e}{where}. Check that the path exists and is readable "
                                 "and writable, and that the disk has space, then reload the page."))
    finally:  # the sidebar last, so the first view's chart is on its way to the browser before it
        render_sidebar(study, root, db, sel)


main()
