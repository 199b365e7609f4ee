"""The ground truth on the dashboard: the reader of groundtruth/PLAN/ (quality.json, reliability.json,
pairs.jsonl), the Target tab's predictor x metric panel, and the Graph tab's cross-modal finding.

The ground-truth folder is made by the REAL :func:`pitune_core.study.transfer.quality_table` from a
synthetic pairs log and predictor log (no training: the gains and predictor rows are drawn from a
known model, same-modality sources gain ~6 points, cross-modality ~0), inside a copy of the first
study (studies/v1/, never modified) in a temporary directory. A second plan is a pilot with one
target, so its CIs are undefined (NaN in the file) -- what a partial study looks like.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pitune_core.study.read import groundtruth_files as GTF, reader as R
from pitune_core.study.read.crossmodal import finding_sentence, modality_gains
from pitune_core.study.read.reader import GroundTruthError, Study

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
#: the first study (v1): no ground truth of its own, and the transfer/ matrix its Target tab shows as
#: the "first measurement"; the reader still opens such studies (precomputed/ now has its own ground truth)
SHIPPED = REPO / "studies" / "v1"
TASKS = ["movie_sentiment", "amazon_sentiment", "rt_polarity", "mnist", "sklearn_digits", "opencv_digits",
         "tux_caption_match", "emoji_group_question"]
PREDS = ["fisher", "same_modality", "random"]
SEEDS = (0, 1, 2, 3)

needs_shipped = pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(), reason="no v1 study in studies/v1/")


def _modalities() -> dict[str, str]:
    return {t["name"]: t["modality"] for t in json.loads((SHIPPED / "tasks.json").read_text())}


def _true_gain(mod: dict[str, str], rng) -> np.ndarray:
    """Expected gain (points): +6 for a same-modality source, 0 across, plus a fixed per-pair part."""
    n = len(TASKS)
    G = np.array([[6.0 if mod[t] == mod[s] else 0.0 for s in TASKS] for t in TASKS]) + rng.normal(0, 2, (n, n))
    np.fill_diagonal(G, np.nan)
    return G


def _write_groundtruth(out: Path, name: str, targets: list[str], seed: int = 0) -> dict:
    """pairs.jsonl + predictors.jsonl from a known model, then the real quality_table."""
    from pitune_core.study.transfer import TransferPlan, quality_table

    mod = _modalities()
    rng = np.random.default_rng(seed)
    truth = _true_gain(mod, rng)
    plan = TransferPlan(name=name, tasks=list(TASKS), seeds=SEEDS, predictors=list(PREDS), target_shots=[4, None],
                        predictor_seeds=(0, 1), shots=8, steps=25, eval_limit=None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.jsonl", "w") as f:
        for sd in SEEDS:
            for t in targets:
                i = TASKS.index(t)
                base = 0.5 + rng.normal(0, 0.005)
                f.write(json.dumps({"target": t, "source": "scratch", "seed": sd, "score": base, "key": plan.key()}) + "\n")
                for j, s in enumerate(TASKS):
                    if s != t:
                        score = base + (truth[i, j] + rng.normal(0, 1.0)) / 100
                        f.write(json.dumps({"target": t, "source": s, "seed": sd, "score": score, "key": plan.key()}) + "\n")
    with open(out / "predictors.jsonl", "w") as f:
        for t in targets:
            i = TASKS.index(t)
            sources = [s for s in TASKS if s != t]
            for shots, seeds in ((4, (0, 1)), (None, (0,))):
                for sd in seeds:
                    rows = {"fisher": [truth[i, TASKS.index(s)] + rng.normal(0, 0.5 if shots is None else 2.0)
                                       for s in sources],
                            "same_modality": [float(mod[s] == mod[t]) for s in sources],
                            "random": rng.normal(size=len(sources)).tolist()}
                    for p in PREDS:
                        f.write(json.dumps({"predictor": p, "target": t, "shots": shots, "seed": sd, "key": "k0",
                                            "sources": sources, "row": [float(x) for x in rows[p]],
                                            "seconds": {"fisher": 6.5, "same_modality": 0.0, "random": 0.001}[p]})
                                + "\n")
    quality_table(plan, out)
    return {"truth": truth, "plan": plan}


def _list_in_manifest(root: Path) -> None:
    """A study's files are checked against its manifest; list the ground truth written into it."""
    man = json.loads((root / "manifest.json").read_text())
    for p in sorted((root / "groundtruth").rglob("*")):
        if p.is_file():
            man["files"][p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(man, indent=2))


@pytest.fixture(scope="module")
def gt_study(tmp_path_factory):
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip("no v1 study in studies/v1/")
    root = tmp_path_factory.mktemp("gt") / "study"
    shutil.copytree(SHIPPED, root)
    made = _write_groundtruth(root / "groundtruth" / "gt-test", "gt-test", TASKS)
    _write_groundtruth(root / "groundtruth" / "gt-pilot", "gt-pilot", ["mnist"], seed=1)
    _list_in_manifest(root)
    assert not Study(root).problems()
    return {"root": root, **made}


def _walk_numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk_numbers(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _walk_numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


# ----------------------------------------------------------------------------- reader

def test_reader_reads_what_quality_table_writes(gt_study):
    s = Study(gt_study["root"])
    assert s.groundtruth_plans() == ["gt-pilot", "gt-test"]
    q = s.groundtruth_quality("gt-test")
    raw = json.loads((gt_study["root"] / "groundtruth" / "gt-test" / "quality.json").read_text())
    assert q["sizes"] == ["4-shot", "full"]
    assert q["metrics"] == ["spearman", "top1_hit", "top3_hit", "ndcg3", "regret"]
    assert set(q["table"]["4-shot"]) == set(PREDS) == set(raw["table"]["4-shot"])
    assert all(math.isfinite(v) for v in _walk_numbers(q))
    for size in q["sizes"]:
        for p in PREDS:
            got, want = q["table"][size][p], raw["table"][size][p]
            assert got["n_targets"] == want["n_targets"] == len(TASKS)
            for m, sm in want["summary"].items():
                assert got["summary"][m]["mean"] == pytest.approx(sm["mean"], nan_ok=True) or math.isnan(sm["mean"])
                assert got["summary"][m]["ci"] == tuple(None if math.isnan(c) else c for c in sm["ci"])
            assert got["per_target"].keys() == want["per_target"].keys()
            assert got["seconds_per_target"] == pytest.approx(want["seconds_per_target"])
    # the known model: the informed predictor beats the trivial rule and chance
    sp = {p: q["table"]["full"][p]["summary"]["spearman"]["mean"] for p in PREDS}
    assert sp["fisher"] > sp["same_modality"] > sp["random"]
    vs = q["table"]["full"]["fisher"]["vs_same_modality"]
    assert vs["metric"] == "spearman" and vs["n_targets"] == len(TASKS) and vs["ci"][0] > 0
    rel = s.groundtruth_reliability("gt-test")
    assert set(rel["per_target"]) == set(TASKS) and rel["n_seeds"] == len(SEEDS)
    raw_rel = json.loads((gt_study["root"] / "groundtruth" / "gt-test" / "reliability.json").read_text())
    assert rel["per_target"]["mnist"]["r_half"] == pytest.approx(raw_rel["per_target"]["mnist"]["r_half"])
    assert 0 < rel["mean"]["ceiling_spearman"] <= 1


def test_partial_study_undefined_numbers_are_none(gt_study):
    """One target: no CI can be computed -- the file holds NaN, the reader gives None, never NaN."""
    s = Study(gt_study["root"])
    text = (gt_study["root"] / "groundtruth" / "gt-pilot" / "quality.json").read_text()
    assert "NaN" in text  # what quality_table writes for an undefined CI
    q = s.groundtruth_quality("gt-pilot")
    f = q["table"]["4-shot"]["fisher"]
    assert f["n_targets"] == 1 and f["summary"]["spearman"]["ci"] == (None, None)
    assert f["vs_same_modality"]["ci"] == (None, None)
    assert all(math.isfinite(v) for v in _walk_numbers(q))
    from dashboard import figures as F

    rows = F.predictor_quality_rows(q, "4-shot", selected="fisher", target="mnist")
    assert rows[0]["predictor"] == "noise ceiling"
    assert "[" not in next(r for r in rows if r["predictor"] == "fisher")["Spearman"].split("·")[0]  # no CI shown


def _bad_root(tmp_path: Path, quality) -> Study:
    d = tmp_path / "s" / "groundtruth" / "bad"
    d.mkdir(parents=True)
    (d / "quality.json").write_text(quality if isinstance(quality, str) else json.dumps(quality))
    return Study(tmp_path / "s")


def _good_quality() -> dict:
    s = {"mean": 0.4, "ci": [0.3, 0.5], "ceiling": 0.8, "fraction_of_ceiling": 0.5, "fraction_ci": [0.4, 0.6]}
    return {"plan": "bad", "key": "abc123", "reliability": {"mean": {"r_half": 0.6}, "reliability_of_mean_r": 0.75,
                                                            "n_seeds": 4},
            "table": {"4-shot": {"fisher": {"n_targets": 2, "summary": {"spearman": s},
                                            "per_target": {"mnist": {"spearman": 0.4, "seconds": 1.0}},
                                            "seconds_per_target": 1.0, "vs_same_modality": None}}}}


def test_a_hand_made_file_of_the_same_shape_is_read(tmp_path):
    q = _bad_root(tmp_path, _good_quality()).groundtruth_quality("bad")
    assert q["table"]["4-shot"]["fisher"]["summary"]["spearman"]["fraction_ci"] == (0.4, 0.6)


@pytest.mark.parametrize("case", ["unknown predictor", "html predictor", "string number", "nan count", "bad task",
                                  "bad size", "bad metric", "not json", "not an object", "list table", "huge int"])
def test_bad_quality_files_are_problems(tmp_path, case):
    q = _good_quality()
    entry = q["table"]["4-shot"]["fisher"]
    if case == "unknown predictor":
        q["table"]["4-shot"]["fisher_magic"] = q["table"]["4-shot"].pop("fisher")
    elif case == "html predictor":
        q["table"]["4-shot"]["<img src=x onerror=alert(1)>"] = q["table"]["4-shot"].pop("fisher")
    elif case == "string number":
        entry["summary"]["spearman"]["mean"] = "0.4"
    elif case == "nan count":
        entry["n_targets"] = float("nan")
    elif case == "bad task":
        entry["per_target"]["../etc"] = entry["per_target"].pop("mnist")
    elif case == "bad size":
        q["table"]["<b>4</b>"] = q["table"].pop("4-shot")
    elif case == "bad metric":
        entry["summary"]["__class__"] = entry["summary"]["spearman"]
    elif case == "list table":
        q["table"] = [1, 2]
    raw = {"not json": "{not json", "not an object": "[1, 2]",
           "huge int": json.dumps(q).replace('"n_targets": 2', '"n_targets": ' + "9" * 5000)}.get(case, q)
    s = _bad_root(tmp_path, raw)
    with pytest.raises(GroundTruthError) as e:
        s.groundtruth_quality("bad")
    assert "groundtruth/bad/quality.json" in str(e.value) or "quality.json" in str(e.value)
    assert "\n" not in str(e.value)


def test_nan_and_inf_numbers_become_none(tmp_path):
    q = json.dumps(_good_quality()).replace('"mean": 0.4', '"mean": NaN').replace('"ceiling": 0.8', '"ceiling": Infinity')
    got = _bad_root(tmp_path, q).groundtruth_quality("bad")["table"]["4-shot"]["fisher"]["summary"]["spearman"]
    assert got["mean"] is None and got["ceiling"] is None and got["ci"] == (0.3, 0.5)


def test_oversize_symlink_and_odd_folders(tmp_path, monkeypatch):
    s = _bad_root(tmp_path, _good_quality())
    monkeypatch.setattr(GTF, "GT_MAX_JSON_BYTES", 100)
    with pytest.raises(GroundTruthError, match="over the limit"):
        s.groundtruth_quality("bad")
    monkeypatch.undo()
    base = tmp_path / "s" / "groundtruth"
    (base / "linked").mkdir()
    (base / "linked" / "quality.json").symlink_to(base / "bad" / "quality.json")
    (base / "Not A Plan").mkdir()
    (base / "Not A Plan" / "quality.json").write_text("{}")
    (base / "alias").symlink_to(base / "bad", target_is_directory=True)
    s = Study(tmp_path / "s")
    assert s.groundtruth_plans() == ["bad", "linked"]
    with pytest.raises(GroundTruthError, match="symbolic links"):
        s.groundtruth_quality("linked")
    for name in ("../s", "Not A Plan", "alias", "nothing"):
        with pytest.raises(GroundTruthError, match="no ground truth named"):
            s.groundtruth_quality(name)
    assert s.groundtruth_reliability("bad") is None  # absent: None, not a problem


def test_bad_reliability_file(tmp_path):
    s = _bad_root(tmp_path, _good_quality())
    (tmp_path / "s" / "groundtruth" / "bad" / "reliability.json").write_text(
        json.dumps({"n_seeds": 4, "per_target": {"mnist": {"r_half": "high"}}, "mean": {}}))
    with pytest.raises(GroundTruthError, match="not a number"):
        s.groundtruth_reliability("bad")


# ----------------------------------------------------------------------------- cross-modal finding

def test_cross_modal_on_a_known_matrix():
    names = ["a1", "a2", "a3", "b1", "b2"]
    mod = {"a1": "x", "a2": "x", "a3": "x", "b1": "y", "b2": "y"}
    nan = float("nan")
    M = np.array([[nan, 4, 6, 1, -1],     # a1: same mean 5, cross mean 0
                  [8, nan, 6, 0, 2],      # a2: same 7, cross 1
                  [5, 5, nan, -2, nan],   # a3: same 5, cross -2 (one pair not measured)
                  [0, 0, 3, nan, 9],      # b1: same 9, cross 1
                  [1, -1, 0, 7, nan]])    # b2: same 7, cross 0
    res = modality_gains(names, names, M, mod)
    assert res["same"]["mean"] == pytest.approx(np.mean([5, 7, 5, 9, 7]))
    assert res["cross"]["mean"] == pytest.approx(np.mean([0, 1, -2, 1, 0]))
    assert res["same"]["n_pairs"] == 3 * 2 + 2 * 1 and res["cross"]["n_pairs"] == 3 * 2 - 1 + 2 * 3
    assert res["same"]["n_targets"] == res["cross"]["n_targets"] == res["difference"]["n_targets"] == 5
    assert res["difference"]["mean"] == pytest.approx(np.mean([5, 6, 7, 8, 7]))
    lo, hi = res["cross"]["ci"]
    assert lo < 0 < hi
    lo, hi = res["same"]["ci"]
    assert 0 < lo <= res["same"]["mean"] <= hi
    text = finding_sentence(res)
    assert text.startswith("cross-modality sources gain +0.0 points [")
    assert "(5 targets, 11 pairs): no measurable help" in text
    assert "same-modality sources gain +6.6 points" in text and "they help" in text
    # a matrix where crossing modality hurts, and one with a single target (no CI)
    hurt = modality_gains(names, names, np.where(np.isnan(M), nan, np.where(
        np.array([[mod[t] != mod[s] for s in names] for t in names]), -5 - np.arange(25).reshape(5, 5) % 3, M)), mod)
    assert hurt["cross"]["ci"][1] < 0 and "they hurt" in finding_sentence(hurt)
    one = modality_gains(names[:1], names, M[:1], mod)
    assert "too few targets" in finding_sentence(one)
    with pytest.raises(ValueError):
        modality_gains(names, names, M[:2], mod)


def test_within_modality_spearman_on_a_known_row():
    """What a predictor knows beyond modality: Spearman over the target's own-modality sources only."""
    from pitune_core.predict.quality import summarise_within, within_group_spearman

    groups = ["x", "x", "x", "x", "y", "y"]
    gain = np.array([1.0, 2.0, 3.0, 4.0, -5.0, -6.0])
    # right order within x, and the cross-modality sources ranked anywhere: +1
    assert within_group_spearman(np.array([0.1, 0.2, 0.3, 0.4, 9.0, -9.0]), gain, groups, "x") == pytest.approx(1.0)
    # the trivial rule (1 within, 0 across) is constant within the modality: 0, however good it is across
    assert within_group_spearman(np.array([1, 1, 1, 1, 0, 0.0]), gain, groups, "x") == 0.0
    assert within_group_spearman(np.array([4, 3, 2, 1, 0, 0.0]), gain, groups, "x") == pytest.approx(-1.0)
    # fewer than 3 measured sources in the group: undefined
    assert math.isnan(within_group_spearman(np.arange(6.0), gain, groups, "y"))
    assert math.isnan(within_group_spearman(np.arange(6.0), np.array([1, np.nan, np.nan, 4, 0, 0]), groups, "x"))
    with pytest.raises(ValueError):
        within_group_spearman(np.arange(5.0), gain, groups, "x")
    s = summarise_within({"a": 0.5, "b": 1.0, "c": float("nan"), "d": None})
    assert s["mean"] == pytest.approx(0.75) and s["n_targets"] == 2 and s["ci"][0] <= 0.75 <= s["ci"][1]
    assert summarise_within({"a": float("nan")}) == {"mean": None, "ci": (None, None), "n_targets": 0}


def test_quality_table_writes_within_modality(gt_study):
    """Every table entry carries it; the fixture's modalities have < 4 tasks each, so it is undefined
    (never a made-up 0), and the reader passes it on."""
    s = Study(gt_study["root"])
    q = s.groundtruth_quality("gt-test")
    for size in q["sizes"]:
        for p in PREDS:
            wm = q["table"][size][p]["within_modality"]
            assert wm == {"mean": None, "ci": (None, None), "n_targets": 0}
            assert all(v.get("within_modality") is None for v in q["table"][size][p]["per_target"].values())


@needs_shipped
def test_cross_modal_from_the_shipped_matrix_when_no_ground_truth():
    f = Study(SHIPPED).cross_modal_finding()
    assert f["source"] == "transfer/transfer_matrix.csv"
    tm = Study(SHIPPED).transfer_matrix()
    mod = _modalities()
    targets, cols, M = tm
    same = [np.nanmean([M[i, j] for j, s in enumerate(cols) if s != t and mod[s] == mod[t]]) for i, t in enumerate(targets)]
    assert f["same"]["mean"] == pytest.approx(float(np.mean(same)))


def test_cross_modal_from_ground_truth_pairs(gt_study):
    """The reader's gains equal the real gain_tensor's seed mean; the finding uses the fuller plan."""
    from pitune_core.study.transfer import gain_tensor

    s = Study(gt_study["root"])
    plan = gt_study["plan"]
    targets, sources, G, info = s.groundtruth_gains("gt-test")
    assert targets == sources == TASKS and info["seeds"] == list(SEEDS) and info["skipped"] == 0
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="empty slice"):  # the NaN diagonal
        want = np.nanmean(gain_tensor(gt_study["root"] / "groundtruth" / "gt-test" / "pairs.jsonl", TASKS, SEEDS,
                                      plan.key()), axis=0)
    np.testing.assert_allclose(G, want, atol=1e-9)
    f = s.cross_modal_finding()
    assert f["source"].startswith("groundtruth/gt-test/pairs.jsonl") and "4 seeds" in f["source"]
    assert f["same"]["n_targets"] == len(TASKS)
    assert 3 < f["same"]["mean"] < 9 and f["same"]["ci"][0] > 0  # the known model: +6 within a modality
    assert abs(f["cross"]["mean"]) < 2
    # the target explorer's measured gains come from the same ground truth (not "not measured")
    assert s.measured_matrix()[3] == f["source"]
    t = TASKS[0]
    row = {src: float(G[0, j]) for j, src in enumerate(sources) if src != t and np.isfinite(G[0, j])}
    assert s.measured_gains(t) == row and len(row) == len(TASKS) - 1


def test_pairs_log_with_junk_lines_is_read_and_counted(gt_study, tmp_path):
    root = tmp_path / "s"
    d = root / "groundtruth" / "p"
    d.mkdir(parents=True)
    shutil.copy(gt_study["root"] / "tasks.json", root / "tasks.json")
    lines = (gt_study["root"] / "groundtruth" / "gt-test" / "pairs.jsonl").read_text().splitlines()
    junk = ['{"target": "<img>", "source": "mnist", "seed": 0, "score": 0.5}', '{"target": "mnist", "sou',
            '{"target": "mnist", "source": "rt_polarity", "seed": 0, "score": 7}', "[]"]
    (d / "pairs.jsonl").write_text("\n".join(lines + junk) + "\n")
    targets, _, _, info = Study(root).groundtruth_gains("p")
    assert info["skipped"] == len(junk) and targets == TASKS
    two = root / "groundtruth" / "two"
    two.mkdir()
    (two / "pairs.jsonl").write_text(lines[0] + "\n" + lines[1].replace(gt_study["plan"].key(), "ffff") + "\n")
    with pytest.raises(GroundTruthError, match="2 configurations"):
        Study(root).groundtruth_gains("two")


# ----------------------------------------------------------------------------- the dashboard

def _app(root: Path, tmp_path: Path, monkeypatch, view: str) -> AppTest:
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    at = AppTest.from_file(APP, default_timeout=90).run()
    if view != "Graph":
        at.session_state["view"] = view
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at: AppTest, column: str):
    """The (pandas) value of the dataframe that has ``column``; None when there is none."""
    return next((df.value for df in at.dataframe if column in df.value.columns), None)


def test_target_tab_shows_the_predictor_panel(gt_study, tmp_path, monkeypatch):
    at = _app(gt_study["root"], tmp_path, monkeypatch, "Target")
    assert not at.error and not at.warning, [w.value for w in at.warning]
    q = Study(gt_study["root"]).groundtruth_quality("gt-test")
    plan = at.selectbox(key="gt_plan")
    assert plan.options == ["gt-pilot", "gt-test"] and plan.value == "gt-test"  # the fuller one first
    radio = at.radio(key="gt_size")
    assert radio.options == ["4 shots per class", "full data"] and radio.value == "4-shot"
    df = _table(at, "vs same-modality (Spearman diff)")
    assert list(df["predictor"]) == ["noise ceiling", "fisher", "same_modality", "random"]
    fisher = df[df["predictor"] == "fisher"].iloc[0]
    s = q["table"]["4-shot"]["fisher"]["summary"]["spearman"]
    assert fisher["Spearman"] == (f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] · "
                                  f"{100 * s['fraction_of_ceiling']:.0f}% ({100 * s['fraction_ci'][0]:.0f}–"
                                  f"{100 * s['fraction_ci'][1]:.0f}%) of ceiling")
    assert df[df["predictor"] == "noise ceiling"].iloc[0]["Spearman"] == f"{q['reliability']['mean']['ceiling_spearman']:.3f}"
    assert fisher["sidebar"] == "◀ selected" and fisher["s / target"] == "6.5"
    vs = q["table"]["4-shot"]["fisher"]["vs_same_modality"]
    assert fisher["vs same-modality (Spearman diff)"].startswith(f"{vs['mean_difference']:+.3f} [")
    assert fisher["beyond modality (Spearman within it)"] == "–"  # < 3 same-modality sources per target here
    target = at.sidebar.selectbox(key="target").value
    assert f"Spearman on {target}" in df.columns
    texts = " ".join(m.value for m in at.markdown)
    assert "Best at 4-shot by Spearman: **fisher**" in texts
    rel = Study(gt_study["root"]).groundtruth_reliability("gt-test")
    assert f"Spearman ceiling {rel['mean']['ceiling_spearman']:.2f}" in texts
    if target in rel["per_target"]:
        assert f"split-half Spearman {rel['per_target'][target]['r_half']:.2f}" in texts
    at.radio(key="gt_size").set_value("full").run()
    assert not at.exception
    df_full = _table(at, "vs same-modality (Spearman diff)")
    sf = q["table"]["full"]["fisher"]["summary"]["spearman"]
    assert df_full[df_full["predictor"] == "fisher"].iloc[0]["Spearman"].startswith(f"{sf['mean']:.3f} [")
    # the first measurement's table is still there, one click away
    assert any(e.label.startswith("First measurement") for e in at.expander)


def test_graph_tab_states_the_cross_modal_finding(gt_study, tmp_path, monkeypatch):
    at = _app(gt_study["root"], tmp_path, monkeypatch, "Graph")
    f = Study(gt_study["root"]).cross_modal_finding()
    md = " ".join(m.value for m in at.get_by_key("cross-modal").markdown)
    c = f["cross"]
    assert f"cross-modality sources gain {c['mean']:+.1f} points \\[{c['ci'][0]:+.1f}, {c['ci'][1]:+.1f}\\]" in md
    assert f"({c['n_targets']} targets, {c['n_pairs']} pairs)" in md
    assert "no measurable help" in md  # the known model: ~0 across modalities
    assert "From groundtruth/gt-test/pairs.jsonl, mean over 4 seeds" in at.get_by_key("cross-modal").caption[0].value


def test_a_bad_ground_truth_file_is_named_not_raised(gt_study, tmp_path, monkeypatch):
    root = tmp_path / "study"
    shutil.copytree(gt_study["root"], root)
    shutil.rmtree(root / "groundtruth" / "gt-pilot")
    q = json.loads((root / "groundtruth" / "gt-test" / "quality.json").read_text())
    q["table"]["4-shot"]["<script>x</script>"] = q["table"]["4-shot"].pop("fisher")
    (root / "groundtruth" / "gt-test" / "quality.json").write_text(json.dumps(q))
    man = json.loads((root / "manifest.json").read_text())
    man["files"] = {k: v for k, v in man["files"].items() if not k.startswith("groundtruth/gt-pilot/")}
    (root / "manifest.json").write_text(json.dumps(man))
    _list_in_manifest(root)
    at = _app(root, tmp_path, monkeypatch, "Target")
    warn = [w.value for w in at.warning]
    assert len(warn) == 1 and "unknown predictor" in warn[0] and "<script>" not in warn[0]
    assert _table(at, "Spearman (mean)") is not None  # the first measurement's table, as without ground truth
    assert _table(at, "vs same-modality (Spearman diff)") is None  # the panel is not drawn


def test_predictor_names_match_the_registry():
    """The spec's torch-free names are the registry's, every name is a predictor the reader offers, and the
    import-time guard that keeps the two lists equal really refuses a list that differs."""
    import subprocess
    import sys

    from pitune_core.predict.predictors import PREDICTORS
    from pitune_core.spec.vocab import PREDICTOR_NAMES, PREDICTOR_PREFIX, predictor_of

    assert tuple(PREDICTORS) == PREDICTOR_NAMES and len(set(PREDICTOR_NAMES)) == len(PREDICTOR_NAMES)
    assert all(callable(fn) for fn in PREDICTORS.values())
    for name in PREDICTOR_NAMES:  # each is offered as an embedding, with a label, and read back by name
        emb = PREDICTOR_PREFIX + name
        assert emb in R.EMBEDDINGS and predictor_of(emb) == name and name in R.EMBEDDING_LABELS[emb]
    assert predictor_of(PREDICTOR_PREFIX + "nope") is None and predictor_of("fisher") is None
    shipped = Path(__file__).resolve().parent.parent / "precomputed" / "predict" / "lora"
    drawn = sorted(p.name for p in shipped.glob(PREDICTOR_PREFIX + "*")) if shipped.is_dir() else []
    assert all(predictor_of(d) for d in drawn), drawn  # every graph the study draws names a known predictor
    code = ("import pitune_core.spec.vocab as v; v.PREDICTOR_NAMES = v.PREDICTOR_NAMES[:-1]\n"
            "try:\n import pitune_core.predict.predictors\nexcept RuntimeError as e:\n print('REFUSED', e)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert "REFUSED" in res.stdout and "differs from PREDICTORS" in res.stdout, res.stdout + res.stderr[-2000:]


def test_reading_the_ground_truth_imports_no_torch(gt_study):
    import subprocess
    import sys

    code = ("import sys; from pitune_core.study.read.reader import Study; s = Study(sys.argv[1]); "
            "q = s.groundtruth_quality('gt-test'); s.groundtruth_reliability('gt-test'); f = s.cross_modal_finding(); "
            "assert q['sizes'] and f['source'].startswith('groundtruth/'); "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(gt_study["root"])], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_best_predictor_and_chart(gt_study):
    from dashboard import figures as F

    q = Study(gt_study["root"]).groundtruth_quality("gt-test")
    for size in q["sizes"]:
        preds = q["table"][size]
        sp = {p: v["summary"]["spearman"]["mean"] for p, v in preds.items()}
        assert F.best_predictor(q, size) == max(sp, key=sp.get)
        rg = {p: v["summary"]["regret"]["mean"] for p, v in preds.items()}
        assert F.best_predictor(q, size, "regret") == min(rg, key=lambda p: (rg[p], p))
    fig = F.predictor_quality_figure(q, "full", "spearman", selected="random")
    (trace,) = fig.data
    assert list(trace.y)[-1] == F.best_predictor(q, "full")  # best on top
    assert trace.marker.color[list(trace.y).index("random")] == "#d62728"
    assert fig.layout.shapes[0].x0 == pytest.approx(q["reliability"]["mean"]["ceiling_spearman"])
    assert F.best_predictor({"table": {"4-shot": {"fisher": {"summary": {"spearman": {"mean": None}}}}}}, "4-shot") is None


def test_report_carries_the_ground_truth_and_the_protocol(gt_study):
    """REPORT.md (``pitune report``) shows the noise ceiling and each predictor's quality from
    quality.json, and each protocol plan's own report."""
    from pitune_core.study.report import report

    root = gt_study["root"]
    q = json.loads((root / "groundtruth" / "gt-test" / "quality.json").read_text())
    (root / "protocol" / "few-demo").mkdir(parents=True)
    (root / "protocol" / "few-demo" / "report.md").write_text("## Pre-registered comparison: few-demo\n\nrow\n")
    md = report(root)
    assert "### Pre-registered comparison: few-demo" in md
    assert "`groundtruth/gt-test/` (`pitune transfer-study`)" in md and "`protocol/few-demo/` (`pitune study run`)" in md
    rel = q["reliability"]["mean"]
    assert "## Does the prediction predict? Ground truth `gt-test`" in md
    assert f"Spearman–Brown {rel['reliability']:.3f}" in md
    for size, preds in q["table"].items():
        for p, v in preds.items():
            assert f"| {size} | {p} | {v['summary']['spearman']['mean']:.3f} [" in md
    shutil.rmtree(root / "protocol")  # the fixture is shared: leave it as found


# ----------------------------------------------------------------------------- predictors as graphs

def test_percentile_rows_rank_sources_per_target():
    from pitune_core.study.predictor_graphs import percentile_rows

    tasks = ["a", "b", "c", "d"]
    rows = [("a", ["b", "c", "d"], [0.1, 5.0, -2.0]),  # c first, b, d last
            ("a", ["d", "c", "b"], [9.0, 0.0, 1.0]),  # a second seed: d first, b, c last
            ("b", ["a", "c", "d"], [1.0, 1.0, 0.0]),  # a tie shares the average rank
            ("c", ["a", "b", "d"], [3.0, 2.0, 1.0]), ("d", ["a", "b", "c"], [0.0, 1.0, 2.0])]
    S = percentile_rows(rows, tasks)
    assert S[0].tolist() == pytest.approx([1.0, (0.5 + 0.5) / 2, (1.0 + 0.0) / 2, (0.0 + 1.0) / 2])
    assert S[1].tolist() == pytest.approx([0.75, 1.0, 0.75, 0.0])
    assert S[2].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0]) and np.diag(S).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="no rows for d"):
        percentile_rows(rows[:4], tasks)


@pytest.fixture
def drawn_study(gt_study, tmp_path):
    """A copy of the ground-truth study with its predictors drawn as graphs (full-data rows)."""
    from pitune_core.study.predictor_graphs import write_predictor_graphs

    root = tmp_path / "study"
    shutil.copytree(gt_study["root"], root)
    drawn = write_predictor_graphs(gt_study["plan"], root / "groundtruth" / "gt-test", root)
    man = json.loads((root / "manifest.json").read_text())
    for p in sorted((root / "predict" / "lora").glob("predictor-*/*")):
        man["files"][p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(man, indent=2))
    return {**gt_study, "root": root, "drawn": drawn}


def test_every_logged_predictor_becomes_a_graph(drawn_study):
    root, mod = drawn_study["root"], _modalities()
    assert drawn_study["drawn"] == ["fisher", "same_modality", "random"]  # PREDICTOR_NAMES order
    s = Study(root)
    assert not s.problems()
    assert [e for e in s.embeddings("lora") if e.startswith("predictor-")] == \
        ["predictor-fisher", "predictor-same_modality", "predictor-random"]
    for t in TASKS:  # same-modality ranks every same-modality source above every other one (both ways)
        top = s.top_k(t, 3, "lora", "predictor-same_modality")
        n_same = sum(mod[x] == mod[t] for x in TASKS if x != t)
        assert all(x.modality == mod[t] for x in top[:min(3, n_same)])
    from pitune_core.study.predictor_graphs import percentile_rows
    from pitune_core.study.transfer import read_jsonl

    rows = [(r["target"], r["sources"], r["row"]) for r in read_jsonl(root / "groundtruth" / "gt-test" / "predictors.jsonl")
            if r["predictor"] == "fisher" and r["shots"] is None]
    D = percentile_rows(rows, TASKS)
    assert Study(root).similarity("lora", "predictor-fisher")[1] == pytest.approx((D + D.T) / 2)
    names, S = s.similarity("lora", "predictor-random")
    assert names == TASKS and S.min() >= 0.0 and S.max() <= 1.0
    G, _ = s.task_graph("lora", "predictor-fisher")
    assert set(G.nodes) == set(TASKS) and G.number_of_edges() >= len(TASKS) * 3 // 2


def test_default_predictor_follows_the_few_shot_evidence(drawn_study, gt_study):
    raw = json.loads((gt_study["root"] / "groundtruth" / "gt-test" / "quality.json").read_text())
    means = {p: v["summary"]["spearman"]["mean"] for p, v in raw["table"]["4-shot"].items()}
    best = max(means, key=means.get)
    emb, why = Study(drawn_study["root"]).default_embedding("lora")
    assert emb == f"predictor-{best}" and "4-shot" in why and "gt-test" in why
    vs = raw["table"]["4-shot"][best].get("vs_same_modality")
    if best != "same_modality" and vs:  # the default says plainly whether it beats the trivial rule
        lo, hi = vs["ci"]
        word = "ahead of" if lo > 0 else "behind" if hi < 0 else "tied with"
        assert f"; {word} same-modality: {vs['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in why
    emb, why = Study(gt_study["root"]).default_embedding("lora")  # evidence, but no graph drawn for it
    assert emb == "fisher" and f"no predictor-{best} graph" in why


def test_default_predictor_without_a_graph_falls_back_to_the_best_drawn_one(drawn_study, gt_study):
    """A best predictor the study does not draw (e.g. a learned one) gives way to the best of those it
    draws, by the same evidence, not to Fisher."""
    raw = json.loads((gt_study["root"] / "groundtruth" / "gt-test" / "quality.json").read_text())
    means = {p: v["summary"]["spearman"]["mean"] for p, v in raw["table"]["4-shot"].items()}
    ranked = sorted(means, key=lambda p: (-means[p], p))
    root = drawn_study["root"]
    shutil.rmtree(root / "predict" / "lora" / f"predictor-{ranked[0]}")
    man = json.loads((root / "manifest.json").read_text())
    man["files"] = {k: v for k, v in man["files"].items() if f"/predictor-{ranked[0]}/" not in k}
    (root / "manifest.json").write_text(json.dumps(man, indent=2))
    drawn = [p for p in ranked if (root / "predict" / "lora" / f"predictor-{p}").is_dir()]
    emb, why = Study(root).default_embedding("lora")
    assert emb == f"predictor-{drawn[0]}", (ranked, drawn)
    assert f"no predictor-{ranked[0]} graph; showing {drawn[0]}, the best with a graph" in why


def test_sidebar_defaults_to_the_best_predictor_and_draws_it(drawn_study, tmp_path, monkeypatch):
    at = _app(drawn_study["root"], tmp_path, monkeypatch, "Graph")
    box = at.sidebar.selectbox(key="embedding")
    best, _ = Study(drawn_study["root"]).default_embedding("lora")
    assert box.value == best and "predictor: random" in box.options and "Fisher" in box.options
    label = R.EMBEDDING_LABELS[best]
    shown = [c.value.replace("\\", "") for c in at.sidebar.caption]  # markdown escapes (':' of a label) resolved
    assert any(c.startswith(f"Default: {label} (best Spearman at 4-shot in groundtruth/gt-test") for c in shown), shown
    # the top-k caption counts what the graph ranks over, not the study's experts
    study = Study(drawn_study["root"])
    gated = set(study.gated("lora"))  # never ranked as sources (the library's gate)
    drawn = len(set(study.prediction_names("lora", best)) - gated) - 1
    experts = len(set(study.expert_tasks("lora")) - gated) - 1
    assert drawn < experts
    assert any(f"ranked over the {drawn} other tasks this graph draws (the study has {experts} other experts"
               in c.value for c in at.caption), [c.value for c in at.caption]
    # the sidebar's task count says how many of the study's tasks this graph offers (issue 32, point 10)
    n_all = len(study.tasks())
    on_graph = len(study.prediction_names("lora", best))  # every drawn task may be a target, gated or not
    assert any(c.startswith(f"Study `study` · {n_all} tasks, {on_graph} on the {label} graph") for c in shown), shown
    assert len(at.sidebar.selectbox(key="target").options) == on_graph
    box.set_value("predictor-random").run()
    assert not at.exception and at.sidebar.selectbox(key="embedding").value == "predictor-random"


def test_target_tab_marks_the_sidebars_predictor_graph_and_names_the_ceilings_targets(drawn_study, tmp_path,
                                                                                       monkeypatch):
    """With the sidebar on a predictor's graph (predictor-fisher), the table's fisher row is the one
    marked, the caption does not call it "not a predictor here", and the noise ceiling's targets cell
    is a count, not "None" (issue 32, point 10)."""
    at = _app(drawn_study["root"], tmp_path, monkeypatch, "Target")
    at.sidebar.selectbox(key="embedding").set_value("predictor-fisher").run()
    assert not at.exception
    df = _table(at, "vs same-modality (Spearman diff)")
    assert df[df["predictor"] == "fisher"].iloc[0]["sidebar"] == "◀ selected"
    assert not any("is not a predictor here" in c.value for c in at.caption)
    rel = Study(drawn_study["root"]).groundtruth_reliability("gt-test")
    assert df[df["predictor"] == "noise ceiling"].iloc[0]["targets"] == str(len(rel["per_target"]))
    assert "None" not in set(df["targets"].astype(str))


def test_transfer_configs_accept_drawn_predictors_only():
    from pitune_core.jobs import validate_transfer

    validate_transfer({"target": "rt_polarity", "embedding": "predictor-logme", "k": 3})
    with pytest.raises(ValueError, match="unknown embedding 'predictor-bogus'"):
        validate_transfer({"target": "rt_polarity", "embedding": "predictor-bogus", "k": 3})


def test_quality_uses_one_predictor_configuration(gt_study, tmp_path):
    """Rows logged under other predictor settings (another key) never mix into the table."""
    from pitune_core.study.transfer import quality_table

    out = tmp_path / "s" / "groundtruth" / "gt"  # a study's layout: its tasks.json names the retired tasks
    shutil.copytree(gt_study["root"] / "groundtruth" / "gt-test", out)
    shutil.copy(gt_study["root"] / "tasks.json", tmp_path / "s" / "tasks.json")
    before = quality_table(gt_study["plan"], out)
    lines = (out / "predictors.jsonl").read_text().splitlines()
    other = [json.loads(x) for x in lines[:5]]
    with open(out / "predictors.jsonl", "a") as f:
        for r in other:  # an older configuration, appended first ...
            f.write(json.dumps({**r, "key": "old", "row": [-x for x in r["row"]]}) + "\n")
        f.write(lines[-1] + "\n")  # ... then the current one again: the newest row names the key
    after = quality_table(gt_study["plan"], out)
    assert after["predictor_key"] == "k0" and after["table"] == before["table"]
    assert quality_table(gt_study["plan"], out, key="old")["table"] != before["table"]


def test_report_checks_the_goal_and_says_where_pairs_ran(drawn_study, capsys):
    """REPORT.md states the issue's goal as met / not met from quality.json, counts the pairs per
    device, and ``pitune report --out`` into the study keeps the study verifying."""
    from pitune_core.cli.main import main
    from pitune_core.predict.quality import best_predictor

    root = drawn_study["root"]
    gt = root / "groundtruth" / "gt-test"
    lines = (gt / "pairs.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "device": "cuda (Test GPU), torch 0"})
    (gt / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    q = json.loads((gt / "quality.json").read_text())
    best = best_predictor(q, "4-shot")
    v = q["table"]["4-shot"][best]
    lo = (v.get("vs_same_modality") or {}).get("ci", [None])[0]
    met = (v["summary"]["spearman"]["fraction_of_ceiling"] >= 0.8 and v["summary"]["top3_hit"]["mean"] >= 0.75
           and best != "same_modality" and lo is not None and lo > 0)
    assert main(["report", str(root), "--out", str(root / "REPORT.md")]) == 0
    md = (root / "REPORT.md").read_text()
    assert f"Pairs by device: {len(lines) - 1} on cpu (before devices were logged); 1 on cuda (Test GPU), torch 0." in md
    verdict = next(ln for ln in md.splitlines() if ln.startswith("**Goal**"))
    assert f"Best at 4-shot by Spearman: {best}" in verdict
    assert ("**met**" if met else "**not met**") in verdict
    assert "listed in" in capsys.readouterr().err
    _list_in_manifest(root)  # the edited pairs.jsonl; REPORT.md was listed by the command itself
    assert not Study(root).problems()


@pytest.mark.parametrize("ci, word", [((-0.1, 0.2), "tied with"), ((0.01, 0.2), "ahead of"), ((-0.3, -0.01), "behind")])
def test_default_reason_says_tie_ahead_or_behind_the_trivial_rule(ci, word):
    from pitune_core.study.read.groundtruth_files import versus_rule

    q = {"table": {"4-shot": {"fisher": {"vs_same_modality": {"mean_difference": 0.05, "ci": list(ci)}}}}}
    assert versus_rule(q, "4-shot", "fisher") == f"; {word} same-modality: +0.050 [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    assert versus_rule(q, "4-shot", "same_modality") == ""  # the rule is not compared with itself
    assert versus_rule({"table": {}}, "4-shot", "fisher") == ""  # nothing to compare: nothing said
