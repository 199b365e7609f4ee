"""The dashboard in a real browser: ``streamlit run`` on 127.0.0.1 + headless Debian Chromium.

Needs ``apt-get install chromium`` and the ``playwright`` Python package (never ``playwright
install``: the system Chromium is used). Skipped with a reason when either is missing or when there
is no study to show (``precomputed/manifest.json``, or ``$PITUNE_TEST_STUDY``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from pitune_core.cli.dashboard import DashboardServer

pytestmark = pytest.mark.browser

#: the task graph's nodes, drawn (Vega-Lite's SVG symbols; each names its task in its aria-label)
GRAPH_NODES = ".st-key-graph_chart g.mark-symbol path"


def _check_screenshot(shot: Path, page, width: int, min_height: int) -> None:
    """The screenshot is a PNG of the whole page, and the graph chart in it is drawn: many colours
    inside the chart's box (a blank or half-rendered chart is one or two), node marks among them."""
    from PIL import Image

    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width == width and img.height >= min_height, (img.format, img.size)
        box = page.locator(".st-key-graph_chart").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, box
        scroll = page.evaluate("window.scrollY")
        top = box["y"] + scroll
        chart = img.convert("RGB").crop((int(box["x"]), int(top), int(box["x"] + box["width"]),
                                         int(top + box["height"])))
        colours = chart.getcolors(maxcolors=1 << 20) or []
        assert len(colours) >= 20, f"the graph chart in the screenshot has {len(colours)} colours: not drawn"
        background = max(colours)[0] / (chart.width * chart.height)
        assert background < 0.995, f"{background:.1%} of the chart's box is one colour"

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PITUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
#: copy the screenshot here too when set (for a person to look at); the test itself writes only in tmp_path
SCREENSHOT_COPY = os.environ.get("PITUNE_SCREENSHOT")


def _study() -> Path:
    env = os.environ.get("PITUNE_TEST_STUDY")
    if env:
        p = Path(env)
        if not (p / "manifest.json").is_file():
            pytest.skip(f"PITUNE_TEST_STUDY={env} has no manifest.json")
        return p.resolve()
    p = REPO / "precomputed"
    if not (p / "manifest.json").is_file():
        pytest.skip("no study to show: precomputed/manifest.json is missing (build it with "
                    "`pitune precompute --out precomputed`, or set PITUNE_TEST_STUDY to a study directory)")
    return p


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_playwright():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -r requirements-test.txt)")
    return sp


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    env = dict(os.environ, PITUNE_STUDY=str(_study()), PITUNE_RUNS_DB=str(tmp / "registry.sqlite"),
               PITUNE_QUIET="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("PITUNE_TEST_STUDY", None)
    with DashboardServer(env, _free_port(), tmp / "streamlit.log", timeout=60) as url:
        yield url, tmp


def _topk_items(page, container: str) -> list[str]:
    return page.locator(f".st-key-{container} li").all_inner_texts()


def _wait_topk_count(page, container: str, n: int, timeout: float = 20.0) -> list[str]:
    deadline = time.time() + timeout
    items: list[str] = []
    while time.time() < deadline:
        items = _topk_items(page, container)
        if len(items) == n:
            return items
        time.sleep(0.2)
    raise AssertionError(f"expected {n} top-k items in {container}, got {items}")


def test_dashboard_in_chromium(server, sync_playwright, tmp_path):
    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(url, wait_until="domcontentloaded")
            # first full render: the graph drawn (its nodes) and the top-k list filled in
            page.wait_for_selector(GRAPH_NODES, timeout=90_000)
            page.wait_for_selector(".st-key-topk-graph li", timeout=90_000)
            first_render = time.perf_counter() - t0
            print(f"\ntime to first full render: {first_render:.2f} s")
            assert not page.locator('[data-testid="stException"]').count(), "the app raised an exception"

            sidebar = page.locator('[data-testid="stSidebar"]')
            # the k slider decides how many sources are listed
            k_slider = sidebar.locator('.st-key-k input[type="range"]')
            k0 = int(k_slider.input_value())
            items = _wait_topk_count(page, "topk-graph", k0)
            kmax = int(k_slider.get_attribute("max"))
            assert kmax > 1, "the study needs at least 3 tasks"
            k_slider.focus()
            key = "ArrowLeft" if k0 > 1 else "ArrowRight"
            k1 = k0 - 1 if k0 > 1 else k0 + 1
            page.keyboard.press(key)
            items = _wait_topk_count(page, "topk-graph", k1)

            # pick another target in the sidebar's selectbox; the list follows it
            target_box = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Target task")
            current = target_box.locator("input").input_value()  # the value is the input's, not its text
            target_box.locator("input").click()
            options = page.locator('[role="option"]')
            options.first.wait_for(timeout=10_000)
            names = options.all_inner_texts()
            new = next(o for o in names if o.split(" (")[0] != current.split(" (")[0])
            options.filter(has_text=new).first.click()
            new_name = new.split(" (")[0]
            page.wait_for_function(  # the list's heading names the target in a code span
                "name => Array.from(document.querySelectorAll('.st-key-topk-graph code'))"
                ".some(e => e.textContent.trim() === name)", arg=new_name, timeout=20_000)
            deadline = time.time() + 20  # the list is re-rendered for the new target: k1 sources, not itself
            while True:
                items = _topk_items(page, "topk-graph")
                fresh = len(items) == k1 and not any(i.split(" (")[0].strip() == new_name for i in items)
                if fresh and not page.locator('[data-stale="true"]').count():
                    break
                assert time.time() < deadline, f"top-k list did not follow the new target {new_name}: {items}"
                time.sleep(0.2)
            assert page.locator(GRAPH_NODES).count() > 0

            # a click on a node of the graph makes that task the target (the chart's point selection)
            source = items[0].split(" (")[0].strip()
            page.locator(f'{GRAPH_NODES}[aria-label*="task: {source};"]').first.click()
            page.wait_for_function(
                "name => Array.from(document.querySelectorAll('.st-key-topk-graph code'))"
                ".some(e => e.textContent.trim() === name)", arg=source, timeout=20_000)
            box = target_box.locator("input")  # the sidebar follows the click (it is drawn after the graph)
            deadline = time.time() + 20
            while box.input_value().split(" (")[0] != source:
                assert time.time() < deadline, f"the sidebar's target is {box.input_value()!r}, not {source!r}"
                time.sleep(0.2)

            # the Target tab: similarity / measured-gain bars next to the list
            page.get_by_role("tab", name="Target").click()
            page.wait_for_selector(".st-key-topk-list li", timeout=30_000)
            assert len(_topk_items(page, "topk-list")) == k1
            page.wait_for_selector('[data-testid="stPlotlyChart"] .barlayer', timeout=30_000)
            assert not errors, f"JavaScript errors: {errors}"
            assert not page.locator('[data-testid="stException"]').count()

            page.get_by_role("tab", name="Graph").click()
            page.wait_for_selector(".st-key-topk-graph li", timeout=30_000)
            page.wait_for_selector(GRAPH_NODES, timeout=30_000)
            time.sleep(0.5)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            _check_screenshot(shot, page, width=1500, min_height=1000)
            if SCREENSHOT_COPY:
                shutil.copyfile(shot, SCREENSHOT_COPY)
            print(f"screenshot: {shot}" + (f" (copied to {SCREENSHOT_COPY})" if SCREENSHOT_COPY else ""))
        finally:
            browser.close()


# ----------------------------------------------------------------------------- bring your own task

@contextlib.contextmanager
def _dashboard_with_scheduler(tmp: Path, **env_extra: str):
    """The dashboard with an empty user task store and run registry of its own under ``tmp`` (plus
    ``env_extra``); the background scheduler the page starts is stopped afterwards (it would also stop
    by itself when idle)."""
    env = dict(os.environ, PITUNE_STUDY=str(_study()), PITUNE_RUNS_DB=str(tmp / "registry.sqlite"),
               PITUNE_TASKS=str(tmp / "tasks"), PITUNE_QUIET="1", OMP_WAIT_POLICY="PASSIVE", **env_extra)
    env.pop("PITUNE_TEST_STUDY", None)
    try:
        with DashboardServer(env, _free_port(), tmp / "streamlit.log", timeout=60) as url:
            yield url
    finally:
        try:
            from pitune_core.runs.registry import RunRegistry

            info = RunRegistry(tmp / "registry.sqlite").scheduler_info("local") or {}
            if info.get("pid"):
                os.kill(int(info["pid"]), signal.SIGTERM)
        except (OSError, ValueError, ImportError):
            pass


@contextlib.contextmanager
def _dashboard_page(sync_playwright, url: str, width: int = 1500, height: int = 1100):
    """A Chromium page on the dashboard at ``url`` with its task graph drawn; yields ``(page, errors)``,
    ``errors`` collecting the page's JavaScript errors."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector(GRAPH_NODES, timeout=90_000)
            yield page, errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def byo_server(tmp_path_factory):
    """The dashboard with an empty user task store and run registry of its own (real scheduler)."""
    tmp = tmp_path_factory.mktemp("byo")
    with _dashboard_with_scheduler(tmp) as url:
        yield url, tmp


def test_upload_a_csv_and_see_the_new_node(byo_server, sync_playwright, tmp_path):
    """New task tab: upload a small CSV (not from the suite), add it, place it as a background run,
    then see the new node on the Graph tab."""
    url, tmp = byo_server
    rows = ["text,label"] + [f"{t},sunny" for t in ("bright sunshine all day", "clear blue skies",
                                                  "a warm dry afternoon", "not a cloud in sight",
                                                  "hot sun over the beach", "sunglasses weather")] + \
           [f"{t},rainy" for t in ("heavy showers tonight", "drizzle and grey clouds", "umbrellas needed",
                                   "downpours flood the streets", "steady rain until dusk", "wet and stormy")]
    csv_path = tmp_path / "weather.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with _dashboard_page(sync_playwright, url) as (page, errors):
        page.get_by_role("tab", name="New task").click()
        page.wait_for_selector(".st-key-nt_name input", timeout=30_000)
        assert page.get_by_text("Limits:").count() > 0  # the size limits are stated on the page
        t0 = time.perf_counter()
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(csv_path))
        page.locator(".st-key-nt_name input").fill("my_weather")
        page.locator(".st-key-nt_name input").press("Enter")
        page.wait_for_selector(".st-key-nt_place button", timeout=60_000)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)  # the preview
        page.locator(".st-key-nt_place button").click()
        page.wait_for_selector(".st-key-nt_placed", timeout=600_000)  # the background run finished
        placed = time.perf_counter() - t0
        print(f"\nupload -> placed on the graph: {placed:.1f} s")
        assert not page.locator('[data-testid="stException"]').count()
        page.get_by_role("tab", name="Graph").click()
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.st-key-graph_chart text'))"
            ".some(e => e.textContent.trim() === 'my_weather')", timeout=60_000)
        assert page.get_by_text("your task").count() > 0  # the highlight's legend entry
        assert not errors, f"JavaScript errors: {errors}"
        shot = tmp_path / "new_task.png"
        page.screenshot(path=str(shot), full_page=True)
        try:
            shutil.copyfile(shot, "/tmp/dashboard_new_task.png")
        except OSError:
            pass


@contextlib.contextmanager
def _chart_page(sync_playwright, tmp_path: Path, spec: dict, width: int):
    """A Chromium page (``width`` pixels wide) on a one-chart Streamlit app that draws ``spec`` as the
    dashboard draws its graph (key ``graph_chart``, point selection ``pick``)."""
    import json

    (tmp_path / "spec.json").write_text(json.dumps(spec))
    app = tmp_path / "app.py"
    app.write_text("import json, streamlit as st\n"
                   f"spec = json.load(open({str(tmp_path / 'spec.json')!r}))\n"
                   "st.vega_lite_chart(spec=spec, key='graph_chart', theme=None, width='stretch', on_select='rerun', "
                   "selection_mode=['pick'])\n")
    env = dict(os.environ, PITUNE_QUIET="1", OMP_WAIT_POLICY="PASSIVE")
    with DashboardServer(env, _free_port(), tmp_path / "streamlit.log", app=app, timeout=60) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def test_graph_tooltips_show_markup_as_text(sync_playwright, tmp_path):
    """A task's description (an uploaded task's is the user's text) reaches the graph's hover as text:
    Vega's tooltip handler escapes it, so markup is neither rendered nor run."""

    import networkx as nx

    from dashboard import figures as F

    G = nx.Graph()
    G.add_node("a", modality="language", accuracy=0.9,
               description="<img src=x onerror=window.__pwned=1><b>bold</b>")
    G.add_node("b", modality="vision", accuracy=0.5)
    G.add_edge("a", "b", weight=0.5)
    with _chart_page(sync_playwright, tmp_path, F.graph_figure(G, pos={"a": (0.0, 0.0), "b": (1.0, 1.0)}),
                     1200) as page:
        page.locator(f'{GRAPH_NODES}[aria-label*="task: a;"]').first.hover(timeout=60_000)
        tip = page.locator("#vg-tooltip-element")
        tip.wait_for(state="visible", timeout=20_000)
        assert "<img src=x onerror=window.__pwned=1><b>bold</b>" in tip.inner_text()  # shown as text
        assert tip.locator("img, b").count() == 0
        assert page.evaluate("() => window.__pwned") is None


@pytest.mark.parametrize("viewport_width,n_tasks", [(760, 40), (1400, 40), (1400, 100)])
def test_graph_labels_in_a_tight_cluster_do_not_overlap_in_chromium(sync_playwright, tmp_path, viewport_width,
                                                                     n_tasks):
    """The boxes :func:`dashboard.figures.place_labels` estimates hold in a real browser: six labelled
    nodes within ~1 % of the layout (a target, its sources and a search match, as on a hub) are
    drawn with no two of their labels' rendered boxes intersecting, in a narrow and a wide window.
    On a graph of up to ``NAME_ALL_N`` tasks every other task is named too (issue 32, point 11); on
    a larger one only the six are."""

    import graphspec as GS
    from dashboard import figures as F

    G, pos, cluster = GS.tight_cluster(n_tasks)
    spec = F.graph_figure(G, pos=pos, target=cluster[0], sources=cluster[1:5], highlight=cluster[5:])
    with _chart_page(sync_playwright, tmp_path, spec, viewport_width) as page:
        page.wait_for_selector(GRAPH_NODES, timeout=60_000)
        boxes = page.evaluate("""() => Array.from(document.querySelectorAll(
            '.st-key-graph_chart g.mark-text.role-mark text')).map(e => {
              const r = e.getBoundingClientRect();
              return [e.textContent, r.left, r.top, r.right, r.bottom]; })""")
    named = sorted(G) if n_tasks <= F.NAME_ALL_N else sorted(cluster)
    assert sorted(b[0] for b in boxes) == named, boxes
    focus = [b for b in boxes if b[0] in cluster]
    assert len(focus) == len(cluster)
    for i, (a, *p) in enumerate(focus):
        for b, *q in focus[i + 1:]:
            assert not (p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]), (a, p, b, q)


# ----------------------------------------------------------------------------- first use

def _wait_value(locator, want: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while locator.input_value() != want:
        assert time.time() < deadline, f"slider value {locator.input_value()!r}, not {want!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cold_server(tmp_path_factory):
    """The dashboard on a cold cache (issue 32): ``PITUNE_CACHE`` holds only the data archives (copied
    from this machine's cache when it has them; otherwise the run downloads its task's archive, as a
    new user's first run does), an empty run registry and the real background scheduler."""
    from pitune_core.paths import cache_dir

    tmp = tmp_path_factory.mktemp("cold")
    cache = tmp / "cache"
    cache.mkdir()
    archives = cache_dir() / "archives"
    if archives.is_dir():
        shutil.copytree(archives, cache / "archives")
    with _dashboard_with_scheduler(tmp, PITUNE_CACHE=str(cache)) as url:
        yield url, tmp


def test_first_run_from_a_cold_cache_shows_its_stages_and_lands_beside_the_study(cold_server, sync_playwright):
    """Issue 32: the whole first-use path in a real browser. On a cold cache, launch the smallest run the
    page offers (k = 1, 1 shot per class) from Tune & launch, see the run name its stages as it reaches
    them (more than one), see it finish, and find it on Runs & compare drawn beside the study's
    references for that target. Prints the time from the click to the finished run."""
    url, tmp = cold_server
    with _dashboard_page(sync_playwright, url) as (page, errors):
        sidebar = page.locator('[data-testid="stSidebar"]')
        target = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Target task") \
            .locator("input").input_value().split(" (")[0]
        k_slider = sidebar.locator('.st-key-k input[type="range"]')
        k_slider.focus()
        page.keyboard.press("Home")  # the smallest k the slider offers: 1
        _wait_value(k_slider, "1")
        page.get_by_role("tab", name="Tune & launch").click()
        shots = page.locator('.st-key-shots input[type="range"]')
        shots.wait_for(timeout=30_000)
        shots.focus()
        page.keyboard.press("Home")  # the first option (index 0): 1 shot per class
        _wait_value(shots, "0")
        time.sleep(1.0)  # let the rerun that the slider started settle before the click
        t0 = time.perf_counter()
        page.locator(".st-key-launch button").click()
        page.wait_for_selector('[data-testid="stAlertContentSuccess"]', timeout=60_000)  # "Launched run …"
        stages: list[str] = []
        deadline = time.time() + 900
        while True:
            for text in page.get_by_text("stage: ").all_inner_texts():
                s = text.split("stage: ", 1)[1].strip()
                if s and s != "–" and (not stages or stages[-1] != s):
                    stages.append(s)
            if page.get_by_text("Recently finished").count():
                break
            assert time.time() < deadline, f"the run did not finish; stages seen: {stages}"
            time.sleep(0.3)
        took = time.perf_counter() - t0
        print(f"\nfirst run from a cold cache (click -> finished): {took:.1f} s; stages seen: {stages}")
        assert len(set(stages)) >= 2, stages
        from pitune_core.runs.registry import RunRegistry

        runs = RunRegistry(tmp / "registry.sqlite").list_runs(kind="transfer")
        assert [(r.status, r.config.get("target"), r.config.get("k"), r.config.get("shots")) for r in runs] == \
            [("succeeded", target, 1, 1)], [(r.status, r.error) for r in runs]
        # the live runs panel reruns every 2 s: a click that lands during a rerun is tried again
        tab = page.get_by_role("tab", name="Runs & compare")
        deadline = time.time() + 120
        while not page.locator(".st-key-compare_chart .plot-container").count():
            shown = page.locator('[data-testid="stException"]')
            if shown.count() or time.time() >= deadline:  # say what the tab shows instead, and the server log
                log = (tmp / "streamlit.log").read_text(errors="replace")[-1500:]
                raise AssertionError(f"Runs & compare drew no comparison chart for the run; tab selected: "
                                     f"{tab.get_attribute('aria-selected')}; exception on the page: "
                                     f"{shown.all_inner_texts()[:1]}; server log ends: {log}")
            if tab.get_attribute("aria-selected") != "true":
                tab.click()
            time.sleep(0.5)
        legend = page.locator(".st-key-compare_chart").inner_text()
        assert "your runs" in legend, legend
        assert page.get_by_text("zero-shot from").count() > 0  # the study's reference for this target
        assert page.get_by_text(f"No runs of `{target}`").count() == 0
        assert not page.locator('[data-testid="stException"]').count()
        assert not errors, f"JavaScript errors: {errors}"
