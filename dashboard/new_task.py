"""The dashboard's "New task" tab: upload your own data, preview it, place it on the graph.

Why a separate module: app.py only renders the study; this page owns the upload flow. The upload is
validated in the page (:mod:`pitune_core.data.user_tasks`: sizes, UTF-8, columns, classes, images,
zip-slip and zip bombs) and any problem is shown as one line on the page. Placing the task (training
its own small expert, its Fisher embedding, similarities, map position) is a *background run* of
kind ``place-task`` in the run registry, never work in the Streamlit process; the page follows its
progress. Once placed, the task is merged into what the study reader returns, so it shows up
highlighted on the Graph and Map tabs, in the target list, and the launch tab runs π-Tuning on it.

No torch here: everything imported at module level is numpy / Pillow / plotly at most.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import streamlit as st

from dashboard.figures import USER_COLOR
from dashboard.text import md as _md
from pitune_core.common import printable
from pitune_core.data import user_tasks as U
from pitune_core.spec.configs import PlaceConfig
from pitune_core.spec.vocab import ACTIVE_STATUSES, SHOT_CHOICES, SUCCEEDED
from pitune_core.study.read.placed import PLACEABLE, placed_on, placed_stamp  # noqa: F401 - re-exported for app.py
from pitune_core.runs import executor
from pitune_core.study.read.reader import EMBEDDING_LABELS
import pitune_core.jobs  # noqa: F401 - registers the job kinds (no torch at import)

KINDS = {"text": "Texts with labels (CSV / JSONL)", "images": "Images in class folders (zip)",
         "pairs": "Image-text pairs (zip with one .jsonl + images)"}
TYPES = {"text": ["csv", "tsv", "jsonl", "json", "txt"], "images": ["zip"], "pairs": ["zip"]}


def highlight(fig, names: Sequence[str], xy: Mapping[str, Sequence[float]]) -> None:
    """Ring the user's own tasks on the map (a plotly figure), named in the legend; the graph rings
    them itself (:func:`dashboard.figures.graph_figure`'s ``rings``)."""
    import plotly.graph_objects as go

    names = [n for n in names if n in xy]
    if not names:
        return
    fig.add_trace(go.Scatter(x=[float(xy[n][0]) for n in names], y=[float(xy[n][1]) for n in names],
                             mode="markers", name="your task" + ("s" if len(names) > 1 else ""),
                             marker=dict(size=34, symbol="circle-open", color=USER_COLOR, line=dict(width=4)),
                             hovertext=[f"your task: {n}" for n in names], hoverinfo="text"))


def _limit_for(kind: str) -> int:
    return U.LIMITS.upload_bytes(kind)


def _draft(kind: str, name: str, data: bytes, filename: str, text_col: str, label_col: str) -> U.Draft:
    if len(data) > _limit_for(kind):
        raise U.UserTaskError(f"{filename} is {len(data) / 2**20:.1f} MB, over the "
                              f"{_limit_for(kind) / 2**20:.0f} MB limit for this kind of upload")
    if kind == "text":
        return U.draft_text_task(name, data, filename, text_column=text_col, label_column=label_col)
    if kind == "images":
        return U.draft_image_task(name, (data, filename))
    return U.draft_pairs_task(name, (data, filename), text_column=text_col, label_column=label_col)


def _cached_draft(kind, name, up, text_col, label_col) -> U.Draft:
    data = up.getvalue()
    key = (kind, name, hashlib.sha256(data).hexdigest(), up.name, text_col, label_col)
    cache = st.session_state.setdefault("_nt_drafts", {})
    if key not in cache:
        cache.clear()
        try:
            cache[key] = _draft(kind, name, data, up.name, text_col, label_col)
        except U.UserTaskError as e:
            cache[key] = e
        except Exception as e:  # noqa: BLE001 - a bug met by an upload: one line, no traceback or server path
            cache[key] = U.UserTaskError(f"{up.name} could not be read (unexpected {type(e).__name__}); "
                                         f"please report it with the file")
    out = cache[key]
    if isinstance(out, Exception):
        raise out
    return out


def render(study, root: Path, db: Path, get_registry: Callable) -> None:
    st.subheader("Bring your own task")
    st.markdown("Upload a task of your own; pitune places it on the task graph (its own small expert, "
                "its Fisher embedding, its similarity to every expert) and you can then π-tune it from the "
                "experts it is closest to.")
    st.caption(f"Limits: {U.LIMITS.describe()}. The task is stored in `{U.task_store()}` "
               "(environment variable `PITUNE_TASKS`).")
    kind = st.radio("What do you have?", list(KINDS), format_func=KINDS.get, key="nt_kind", horizontal=True)
    up = st.file_uploader(f"Upload ({', '.join(TYPES[kind])})", type=TYPES[kind], key=f"nt_file_{kind}",
                          max_upload_size=U.LIMITS.upload_mb(kind))  # the browser refuses a larger file
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("Task name", key="nt_name", placeholder="e.g. my_reviews",
                         help="Lower-case letters, digits and underscores; not the name of a built-in task.")
    text_col, label_col = "text", "label"
    if kind != "images":
        text_col = c2.text_input("Text column", value="text", key="nt_text_col")
        label_col = c3.text_input("Label column", value="label", key="nt_label_col")
    if kind == "images":
        c2.caption("One sub-folder per class, e.g. `cats/1.png`, `dogs/7.jpg` (a zipped folder works too).")
    elif kind == "pairs":
        st.caption('Each line of the .jsonl: `{"image": "img/1.png", "text": "...", "label": "yes"}`, image '
                   "paths relative to the zip's top level.")
    if up is None or not name:
        st.info("Choose a file and a task name to see a preview.")
        _follow(root, db, get_registry)  # a placement under way stays in view when the upload is cleared
        _your_tasks(study, root)
        return
    try:
        draft = _cached_draft(kind, name.strip(), up, text_col.strip(), label_col.strip())
    except U.UserTaskError as e:
        st.error(_md(e), icon="🚫")
        return
    counts = draft.counts()
    st.markdown(f"**{draft.name}** · {draft.modality} task (inferred from the upload) · {len(draft.labels)} classes · "
                f"{len(draft.examples)} examples (seeded split: ~20% test, ~10% validation per class)")
    left, right = st.columns([1.4, 1])
    with left:
        st.markdown("**Preview**")
        st.dataframe(draft.preview(10), hide_index=True, key="nt_preview")
        if draft.thumbnails:
            by: dict = {}
            for lab, arr in draft.thumbnails:
                by.setdefault(lab, []).append(arr)
            thumbs = [(lab, by[lab][i]) for i in range(12) for lab in by if i < len(by[lab])][:12]  # classes in turn
            st.image([a for _, a in thumbs], caption=[printable(lab) for lab, _ in thumbs], width=72)
    with right:
        st.markdown("**Classes and how they are said** (edit the verbalisations)")
        verbal = {}
        for i, (lab, v) in enumerate(zip(draft.labels, draft.verbalizers)):
            # the class as plain text (st.text: no markdown, so a web address is no link and no escape shows)
            st.text(f"{printable(lab)} · {counts['train'][lab]} train / {counts['val'][lab]} val / "
                    f"{counts['test'][lab]} test")
            verbal[lab] = st.text_input(f"verbalisation of class {i + 1}", value=v, label_visibility="collapsed",
                                        key=f"nt_verbal_{draft.name}_{lab}")
    max_shots = draft.max_shots()
    options = ["all"] + [s for s in SHOT_CHOICES if s <= max_shots]
    s1, s2 = st.columns([1, 2])
    shots = s1.selectbox("Shots per class for its own expert", options, index=0, key="nt_shots",
                         help=f"The task's own expert (which gives its embedding) sees this many training examples "
                              f"per class; the smallest class has {max_shots}.")
    if s2.button("Add and place on the graph", type="primary", key="nt_place", icon=":material/add_circle:"):
        _add_and_place(draft, verbal, None if shots == "all" else int(shots), study, root, db, get_registry)
    _follow(root, db, get_registry)
    _your_tasks(study, root)


def _add_and_place(draft: U.Draft, verbal: dict, shots: int | None, study, root: Path, db: Path,
                   get_registry: Callable) -> None:
    try:
        draft = U.with_verbalizers(draft, verbal)
        if shots is not None and shots > draft.max_shots():
            raise U.UserTaskError(f"shots={shots} is more than the smallest class has ({draft.max_shots()})")
        U.save_task(draft)
    except U.UserTaskError as e:
        st.error(_md(e), icon="🚫")
        return
    reg = get_registry(str(db))
    if reg is None:
        return

    method = st.session_state.get("method", "lora")
    try:
        run_id = reg.submit("place-task", {"task": draft.name, "study": str(root), "method": method,
                                           "embedding": PlaceConfig.default_of("embedding"), "shots": shots,
                                           "seed": PlaceConfig.default_of("seed"), "k": PlaceConfig.default_of("k"),
                                           "store": str(U.task_store())}, name=f"place {draft.name}")
    except ValueError as e:
        st.error(f"Cannot start placing: {_md(e)}", icon="🚫")
        return
    st.session_state["nt_run"] = run_id
    st.session_state["nt_task"] = draft.name

    try:
        executor.ensure_scheduler(str(db))
    except (RuntimeError, OSError) as e:
        st.warning(f"Run {run_id} is queued, but the scheduler did not start ({e}). Start it with "
                   f"`pitune runs scheduler --db {db}`.")


@st.fragment(run_every=2.0)
def _follow(root: Path, db: Path, get_registry: Callable) -> None:
    run_id = st.session_state.get("nt_run")
    if not run_id:
        return
    reg = get_registry(str(db))
    if reg is None:
        return
    rec = reg.get(run_id)
    task = st.session_state.get("nt_task")
    p = rec.progress or {}
    if rec.status in ACTIVE_STATUSES:
        step, total = p.get("step"), p.get("total")
        frac = min(1.0, float(step) / float(total)) if step and total else 0.0
        st.progress(frac, text=f"placing `{task}` on the graph: {rec.status}, stage {p.get('stage', 'starting')}"
                    + (f", step {step}/{total}" if step and total else ""))
    elif rec.status == SUCCEEDED:
        m = rec.metrics or {}
        lists = source_lists(m)
        shown = st.session_state.get("embedding")
        method = rec.config.get("method") or st.session_state.get("method", "lora")
        on = placed_on(root, task, method) if task else []
        # the sidebar's graph stays unless the task is not drawn on it (e.g. a predictor's graph it was not
        # placed on); the study's default graph is one it is placed on (pitune_core.study.place)
        switch = shown is not None and shown not in on and PLACEABLE[0] in on
        with st.container(key="nt_placed"):
            st.success(f"`{task}` is placed on the graph ({m.get('time_s', '?')} s). Top sources: "
                       + "; ".join(f"by {_md(g)}: {_md(top)}" for g, top in lists)
                       + (". The lists differ because each graph ranks by its own measure (Fisher: cosine "
                          "similarity; a predictor's graph: percentiles of that predictor's scores); the "
                          "Graph and Target tabs show the list of the graph chosen in the sidebar. "
                          if len({t for _, t in lists}) > 1 else ". ")
                       + "It is highlighted on the Graph and Map tabs and selectable as the target."
                       + (f" It is drawn on {', '.join(on)}, not on {shown}, so the sidebar switches to "
                          f"{PLACEABLE[0]}." if switch else ""))
        if st.button("Make it the target", key="nt_make_target"):
            st.session_state["target"] = task
            st.rerun()
        if not st.session_state.get("_nt_refreshed") == run_id:
            st.session_state["_nt_refreshed"] = run_id
            if switch:  # applied by the next full run before the sidebar exists (app.apply_pending_switch):
                # set here, the widget's value could be overwritten by the browser's stale copy of it when
                # a click (e.g. on the Graph tab) reruns the app at the same moment
                st.session_state[SWITCH_KEY] = (PLACEABLE[0], shown)
            st.rerun(scope="app")  # the study view now includes the task
    else:
        lines = (rec.error or "").strip().splitlines()
        st.error(f"Placing `{task}` {rec.status}: {_md(lines[-1] if lines else 'no message')}"[:400], icon="🚫")


def source_lists(metrics: Mapping) -> list[tuple[str, str]]:
    """``[(graph label, "a (0.912), b (0.871)")]``: a placement's top sources on every graph it was
    placed on (Fisher first, then the predictor graphs), from its run's metrics."""
    def fmt(top) -> str:
        return ", ".join(f"{n} ({float(s):.3f})" for n, s in top or [] if isinstance(n, str)
                         and isinstance(s, (int, float)))

    emb = metrics.get("embedding") or PLACEABLE[0]
    out = [(EMBEDDING_LABELS.get(emb, emb), fmt(metrics.get("top_k")))]
    also = metrics.get("also_placed_on")
    for g, top in (also.items() if isinstance(also, Mapping) else []):
        out.append((EMBEDDING_LABELS.get(g, str(g)), fmt(top)))
    return out


#: session key of an embedding switch requested by a placement, applied at the start of the next full run
SWITCH_KEY = "_nt_switch_to"


def apply_pending_switch() -> None:
    """Before the sidebar is drawn: make the embedding a placement asked for the sidebar's value.

    The request ``(wanted, shown before)`` stays until a run arrives with the browser holding the new
    value (or another one the user picked): a click sent before the browser saw the switch carries
    the old value with it, and is corrected here instead of undoing the switch."""
    pending = st.session_state.get(SWITCH_KEY)
    if not pending:
        return
    want, before = pending
    if st.session_state.get("embedding") == before:
        st.session_state["embedding"] = want
    else:
        st.session_state.pop(SWITCH_KEY, None)


def _your_tasks(study, root: Path) -> None:
    names = U.user_task_names()
    if not names:
        return
    placed = {t["name"] for t in study.tasks() if t.get("user_task")}
    st.markdown("**Your tasks**")
    st.dataframe([{"task": n, "on this study's graph": "yes" if n in placed else "not placed"} for n in names],
                 hide_index=True, key="nt_yours")
