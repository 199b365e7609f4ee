"""Benchmark: the dashboard in headless Chromium — page open → graph drawn, and a hub's search.

Run as ``python bench/bench_dashboard.py [--study DIR ...] [--search DIR]`` (default: the shipped
``precomputed/`` study). For every study a fresh ``streamlit run dashboard/app.py`` serves it on
127.0.0.1 and Debian's Chromium (``apt-get install -y chromium``; playwright drives it, no
``playwright install``) opens the page ``--loads`` times, each in a new browser page (a new
Streamlit session). Timed from ``page.goto`` until the Graph tab's figure is drawn (the Vega-Lite
graph's marks in its SVG or canvas; a plotly figure's traces for an older app given with
``--baseline-app``) *and* its top-k list is filled in. The first load of a server also opens and
verifies the study (checksums), later loads find it in Streamlit's cache: both are reported
(``cold`` = the first, ``warm`` = the median of the others). The first row is the floor: a trivial
Streamlit page with one small Vega-Lite chart (the kind the Graph tab draws), timed the same way in
the same run, i.e. what Streamlit and Chromium alone cost on this machine at this moment;
``--floors`` adds the same page without a chart, with one small plotly figure instead (what plotly
alone costs: the reason the graph is not a plotly figure), and with one widget of each kind the
dashboard's first view has (what each kind costs to load).

``--search DIR`` (e.g. a 10,000-task hub from ``pitune hub synth``) then checks that the page is
usable at that size: type part of a task name in the search box, pick the match, make it the target,
and wait until the top-k list names the new target's neighbours; each step is timed.

WebGL in headless Chromium uses SwiftShader (``--enable-unsafe-swiftshader``); the timings are of
this machine's CPUs, which other processes share (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PITUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]

#: the Graph tab's figure is drawn: a Vega-Lite chart (today's dashboard) whose canvas or SVG holds
#: marks, or a plotly figure with data and traces (the floor, and older dashboards via --baseline-app)
DRAWN_JS = """() => {
  const vg = document.querySelector('.st-key-graph_chart [data-testid="stVegaLiteChart"], .st-key-graph_chart');
  if (vg) {
    const c = vg.querySelector('canvas');
    if (c && c.width > 0 && c.height > 0) return true;
    if (vg.querySelector('svg .mark-symbol path, svg .mark-rule line')) return true;
  }
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  if (!gd || !gd._fullData || gd._fullData.length === 0) return false;
  return !!gd.querySelector('.scatterlayer .trace, canvas.gl-canvas-context, canvas');
}"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: the floors: trivial Streamlit pages, nothing of pitune, each with the one-line list the dashboard
#: bench waits for: one small plotly figure (what the Graph tab drew with before), no chart, and one
#: chart of Streamlit's built-in Vega-Lite kind (what the Graph tab draws with: :data:`FLOOR`)
FLOORS = {
    "streamlit + one plotly figure": ("""
import plotly.graph_objects as go
import streamlit as st
st.set_page_config(layout="wide")
st.plotly_chart(go.Figure(go.Scatter(x=[0, 1, 2], y=[0, 1, 0], mode="markers")))
st.container(key="topk-graph").markdown("1. a source")
""", DRAWN_JS),
    "streamlit, no chart": ("""
import streamlit as st
st.set_page_config(layout="wide")
st.container(key="topk-graph").markdown("1. a source")
""", None),
}
_VEGA_FLOOR = """
import streamlit as st
st.set_page_config(layout="wide")
st.scatter_chart({"x": [0, 1, 2], "y": [0, 1, 0]}, x="x", y="y")
st.container(key="topk-graph").markdown("1. a source")
"""
_VEGA_DRAWN = ("() => !!document.querySelector('[data-testid=\"stVegaLiteChart\"] canvas, "
               "[data-testid=\"stVegaLiteChart\"] svg.marks')")
FLOOR = "streamlit + one Vega-Lite chart"
FLOORS[FLOOR] = (_VEGA_FLOOR, _VEGA_DRAWN)
#: the Vega-Lite floor plus one widget of each kind the dashboard's first view has: what each kind
#: costs to load in the browser (``--floors``)
for _what, _line in {"a select box": 'st.selectbox("a", ["x", "y"])', "a slider": 'st.slider("a", 1, 9, 3)',
                     "a radio": 'st.radio("a", ["x", "y"], horizontal=True)', "a text box": 'st.text_input("a")'}.items():
    FLOORS[f"{FLOOR} + {_what}"] = (_VEGA_FLOOR + _line + "\n", _VEGA_DRAWN)


class Server:
    """``streamlit run dashboard/app.py`` on a study, in its own process group
    (:class:`pitune_core.cli.dashboard.DashboardServer`, the one owner of that recipe)."""

    def __init__(self, study: Path, tmp: Path, app: Path = REPO / "dashboard" / "app.py"):
        from pitune_core.cli.dashboard import DashboardServer

        port = _free_port()
        env = dict(os.environ, PITUNE_STUDY=str(study), PITUNE_RUNS_DB=str(tmp / "registry.sqlite"),
                   PITUNE_QUIET="1", OMP_WAIT_POLICY="PASSIVE")
        self._server = DashboardServer(env, port, tmp / f"streamlit-{port}.log", app=app, timeout=90)
        self.url = self._server.__enter__()

    def close(self) -> None:
        self._server.__exit__(None, None, None)


def _open_graph(browser, url: str, timeout_ms: int, drawn_js: str | None = DRAWN_JS):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded")
    if drawn_js is not None:
        page.wait_for_function(drawn_js, timeout=timeout_ms)
    page.wait_for_selector(".st-key-topk-graph li", timeout=timeout_ms)
    dt = time.perf_counter() - t0
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError("the app raised an exception: " + page.locator('[data-testid="stException"]').first.inner_text()[:500])
    if errors:
        raise RuntimeError(f"JavaScript errors: {errors[:3]}")
    return page, dt


def _n_tasks(study: Path) -> int:
    import json

    return len(json.loads((study / "tasks.json").read_text(encoding="utf-8")))


def bench_open(p, study: Path | None, loads: int, timeout_ms: int, shot_dir: Path | None,
               app: Path | None = None, floor: str = FLOOR) -> dict:
    """``study=None``: the floor app ``floor`` of :data:`FLOORS` instead of the dashboard; ``app``:
    another dashboard app file (e.g. an older commit's, checked out with ``git worktree add``)."""
    drawn_js = FLOORS[floor][1] if study is None else DRAWN_JS
    with tempfile.TemporaryDirectory(prefix="pitune-bench-dash-") as tmp:
        if study is None:
            (Path(tmp) / "floor.py").write_text(FLOORS[floor][0], encoding="utf-8")
            server = Server(REPO / "precomputed", Path(tmp), app=Path(tmp) / "floor.py")
        else:
            server = Server(study, Path(tmp), app=app) if app else Server(study, Path(tmp))
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                times = []
                for i in range(loads):
                    page, dt = _open_graph(browser, server.url, timeout_ms, drawn_js)
                    times.append(dt)
                    if i == loads - 1 and shot_dir is not None:
                        time.sleep(0.5)
                        page.screenshot(path=str(shot_dir / f"graph-{study.name if study else 'floor-' + str(list(FLOORS).index(floor))}.png"),
                                        full_page=True)
                    page.close()
            finally:
                browser.close()
        finally:
            server.close()
    warm = statistics.median(times[1:]) if len(times) > 1 else float("nan")
    return {"study": str(study), "n": _n_tasks(study) if study else 0, "cold": times[0], "warm": warm, "all": times}


def bench_search(p, study: Path, timeout_ms: int, shot_dir: Path | None) -> dict:
    """Search a task by name, make it the target, see its top-k: the hub is usable."""
    import json

    names = [t["name"] for t in json.loads((study / "tasks.json").read_text(encoding="utf-8"))]
    query = names[-1]  # the last task of the hub: far from the default target
    out = {"study": str(study), "n": len(names), "query": query}
    with tempfile.TemporaryDirectory(prefix="pitune-bench-dash-") as tmp:
        server = Server(study, Path(tmp))
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page, out["open_s"] = _open_graph(browser, server.url, timeout_ms)
                t0 = time.perf_counter()
                box = page.locator(".st-key-graph_search input")
                box.fill(query)
                box.press("Enter")
                page.locator(".st-key-graph_search_go button").wait_for(timeout=timeout_ms)
                out["search_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                page.locator(".st-key-graph_search_go button").click()
                page.wait_for_function(
                    "name => Array.from(document.querySelectorAll('.st-key-topk-graph p, .st-key-topk-graph strong'))"
                    ".some(e => e.textContent.includes(name))", arg=query,
                    timeout=timeout_ms)
                deadline = time.time() + timeout_ms / 1000
                while page.locator('[data-stale="true"]').count() and time.time() < deadline:
                    time.sleep(0.1)
                page.wait_for_function(DRAWN_JS, timeout=timeout_ms)
                out["pick_target_s"] = time.perf_counter() - t0
                out["topk"] = page.locator(".st-key-topk-graph li").all_inner_texts()
                if shot_dir is not None:
                    page.screenshot(path=str(shot_dir / f"search-{study.name}.png"), full_page=True)
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError("the app raised an exception")
            finally:
                browser.close()
        finally:
            server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", nargs="*", default=[str(REPO / "precomputed")], help="studies to open")
    ap.add_argument("--loads", type=int, default=4, help="page loads per study (the first is cold)")
    ap.add_argument("--search", nargs="*", default=[], help="studies to search in (e.g. a 10,000-task hub)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for a page")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor (a trivial Streamlit page)")
    ap.add_argument("--floors", action="store_true",
                    help="time every floor of FLOORS (no chart, one plotly figure, one Vega-Lite chart, and that "
                         "chart plus one widget of each kind), not only the Vega-Lite one: what each chart "
                         "library and each kind of widget alone costs here")
    ap.add_argument("--screenshots", default=None, help="directory for screenshots (default: none)")
    ap.add_argument("--baseline-app", default=None,
                    help="another dashboard/app.py (e.g. `git worktree add /tmp/old REV`, then "
                         "/tmp/old/dashboard/app.py) timed on the same studies in the same run")
    args = ap.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    ms = int(args.timeout * 1000)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"dashboard in headless Chromium ({CHROMIUM}), {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'study':<58} {'tasks':>6} {'cold_s':>7} {'warm_s':>7}  all loads (s)")
    with sync_playwright() as p:
        for floor in (FLOORS if args.floors else [] if args.no_floor else [FLOOR]):
            r = bench_open(p, None, args.loads, ms, shots, floor=floor)
            print(f"{'(floor: ' + floor + ')':<58} {'-':>6} {r['cold']:>7.2f} {r['warm']:>7.2f}  "
                  + " ".join(f"{t:.2f}" for t in r["all"]), flush=True)
        for s in args.study:
            if args.baseline_app:
                r = bench_open(p, Path(s).resolve(), args.loads, ms, None, app=Path(args.baseline_app).resolve())
                print(f"{Path(s).name + ' (baseline app)':<58} {r['n']:>6} {r['cold']:>7.2f} {r['warm']:>7.2f}  "
                      + " ".join(f"{t:.2f}" for t in r["all"]), flush=True)
            r = bench_open(p, Path(s).resolve(), args.loads, ms, shots)
            print(f"{Path(s).name:<58} {r['n']:>6} {r['cold']:>7.2f} {r['warm']:>7.2f}  "
                  + " ".join(f"{t:.2f}" for t in r["all"]), flush=True)
        for s in args.search:
            r = bench_search(p, Path(s).resolve(), ms, shots)
            print(f"search in {Path(s).name} ({r['n']} tasks): open {r['open_s']:.2f} s, search '{r['query']}' "
                  f"{r['search_s']:.2f} s, make it the target and redraw {r['pick_target_s']:.2f} s; "
                  f"its top-{len(r['topk'])}: {'; '.join(x.split(' — ')[0] for x in r['topk'][:3])} …", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
