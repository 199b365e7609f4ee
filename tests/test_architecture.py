"""The layout's rules, checked: import-linter's contracts and a torch-free first page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """`lint-imports` (contracts in .importlinter): layers spec < common/paths < data < model < predict <
    tune < study < jobs < cli/dashboard; spec/ imports nothing else of pitune, no torch and no numpy;
    runs/ imports nothing of the ML side; dashboard/ imports no torch itself."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    res = subprocess.run([exe, "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and "0 broken" in res.stdout


def _lint_a_copy(tmp_path, module: str, line: str) -> subprocess.CompletedProcess:
    """`lint-imports` on a copy of the package in which ``line`` is appended to ``pitune_core/<module>``."""
    pkg = tmp_path / "src"
    shutil.copytree(REPO / "pitune_core", pkg / "pitune_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "dashboard", pkg / "dashboard", ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "pitune_core" / module, "a") as f:
        f.write("\n" + line)
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe, "--config", str(REPO / ".importlinter")], cwd=pkg, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(pkg)}, timeout=300)


def test_a_layer_violation_is_caught(tmp_path):
    """The contract is not vacuous: a copy of the package with model importing study breaks it."""
    res = _lint_a_copy(tmp_path, "model/metrics.py",
                       "import pitune_core.study.read.reader  # a lower layer importing a higher one\n")
    assert res.returncode != 0
    assert "pitune_core.model.metrics -> pitune_core.study.read.reader" in res.stdout


@pytest.mark.skipif(not (REPO / "precomputed" / "manifest.json").is_file(), reason="no shipped study")
def test_the_first_page_renders_without_torch():
    """The dashboard's first full render (Graph tab on the shipped study) never imports torch,
    transformers or peft: they load only when a run is launched (in a worker process)."""
    script = textwrap.dedent(f"""
        import sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({str(REPO / "dashboard" / "app.py")!r}, default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    env = {**os.environ, "PITUNE_STUDY": str(REPO / "precomputed"), "PITUNE_QUIET": "1"}
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "HEAVY=\n" in res.stdout or res.stdout.rstrip().endswith("HEAVY="), res.stdout[-500:]


@pytest.mark.parametrize("line, arrow", [
    ("import numpy  # the floor importing numpy\n", "pitune_core.spec.vocab -> numpy"),
    ("import pitune_core.common  # the floor importing the layer above it\n",
     "pitune_core.spec.vocab -> pitune_core.common"),
])
def test_the_spec_floor_contract_is_not_vacuous(tmp_path, line, arrow):
    """A copy of the package whose spec imports numpy, or another part of pitune, breaks the contract."""
    res = _lint_a_copy(tmp_path, "spec/vocab.py", line)
    assert res.returncode != 0
    assert arrow in res.stdout and "spec/ is the torch-free floor" in res.stdout, res.stdout[-3000:]


#: the one circle left (issue 30): the suite's loader (data.tasks) applies the dedup table, which is
#: computed from the whole suite (TASKS), and finds user tasks, which build on TaskSpec. Breaking it
#: means moving the task types or the catalogue (get_task / list_tasks) out of data/tasks.py.
KNOWN_CIRCLES = [{"pitune_core.data.dedup", "pitune_core.data.tasks", "pitune_core.data.user_tasks"}]


def import_circles(graph) -> list[set[str]]:
    """Every set of modules that import each other round a circle (strongly connected, 2+ modules),
    counting imports inside functions (grimp sees them) but not those under ``if TYPE_CHECKING``."""
    import networkx as nx

    g = nx.DiGraph()
    for m in graph.modules:
        g.add_node(m)
        g.add_edges_from((m, i) for i in graph.find_modules_directly_imported_by(m))
    return sorted((c for c in nx.strongly_connected_components(g) if len(c) > 1), key=sorted)


def test_no_import_circles():
    """No two modules of pitune_core or dashboard import each other, directly or round a circle, even
    from inside a function: each shared fact lives in the lower module (the four circles of issue 30:
    data, model experts <-> expert_schema, runs jobs <-> registry, study reader <-> place <-> sources
    <-> protocol <-> evidence; and cli transfer <-> library)."""
    import grimp

    graph = grimp.build_graph("pitune_core", "dashboard", include_external_packages=False,
                              exclude_type_checking_imports=True, cache_dir=None)
    assert import_circles(graph) == KNOWN_CIRCLES


def test_an_import_circle_is_caught():
    """The check is not vacuous: a function-level import back up a chain makes a circle it reports."""
    import grimp

    graph = grimp.ImportGraph()
    for a, b in [("p.low", "p.mid"), ("p.mid", "p.top"), ("p.top", "p.other")]:
        graph.add_import(importer=b, imported=a, line_number=1, line_contents=f"import {a}")
    assert import_circles(graph) == []
    graph.add_import(importer="p.low", imported="p.top", line_number=9, line_contents="    import p.top")
    assert import_circles(graph) == [{"p.low", "p.mid", "p.top"}]


@pytest.mark.parametrize("line, arrow", [
    ("import pitune_core.study.place  # the read side importing the writer\n",
     "pitune_core.study.read.stats -> pitune_core.study.place"),
    ("import torch  # the read side importing torch\n", "pitune_core.study.read.stats -> torch"),
])
def test_the_study_read_contracts_are_not_vacuous(tmp_path, line, arrow):
    """A copy of the package whose study/read/ imports the side that writes a study, or torch, breaks a
    contract: the dashboard's view of a study stays apart from what trains and writes one."""
    res = _lint_a_copy(tmp_path, "study/read/stats.py", line)
    assert res.returncode != 0
    assert arrow in res.stdout and "study/read/" in res.stdout, res.stdout[-3000:]
