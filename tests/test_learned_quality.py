"""The predictors that learn from measured transfer, scored in a ground truth's quality table (issue 28,
item 4): the REAL :func:`pitune_core.study.transfer.quality_table` on a tiny plan whose pairs.jsonl and
predictors.jsonl this file writes from a known model (no training): every source has a quality of its
own that it carries to every target, plus a same-modality bonus, so a source's mean gain on the other
targets predicts its gain on this one. Also the paired comparison against same-modality (BCa CI,
Wilcoxon, win/tie/loss) and the reader's predictor names."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pitune_core.spec.vocab import LEARNED_PREDICTOR_NAMES, PREDICTOR_NAMES, SCORED_PREDICTOR_NAMES
from pitune_core.study.read import stats
from pitune_core.study.read.groundtruth_files import GroundTruthError, parse_gt_quality
from pitune_core.study.transfer import (TransferPlan, compare_predictors, gain_tensor, learned_rows, load_plan,
                                        predictor_records, quality_table, run_predictors)
from pitune_core.study.read.tasks_file import task_modalities

LANG = ["movie_sentiment", "amazon_sentiment", "rt_polarity", "nyt_sentiment", "newsgroups_topic"]
VIS = ["mnist", "sklearn_digits", "opencv_digits", "fashion_mnist"]
TASKS = LANG + VIS
EXTRA = "fashion_mnist"  # measured as a target in the logs, but not a main target of the plan
MAIN = [t for t in TASKS if t != EXTRA]
LOGGED = ["fisher", "data", "same_modality", "random"]
SEEDS = (0, 1, 2, 3)


def _plan(predictors=(*LOGGED, *LEARNED_PREDICTOR_NAMES)) -> TransferPlan:
    return TransferPlan(name="learned-test", tasks=list(TASKS), targets=list(MAIN), seeds=SEEDS,
                        predictors=list(predictors), target_shots=[4, None], predictor_seeds=(0, 1), shots=8,
                        steps=25, eval_limit=None)


def _truth(seed: int = 0) -> np.ndarray:
    """Expected gain (points): the source's own quality, +3 for a source of the target's modality, pair noise."""
    rng = np.random.default_rng(seed)
    mod = task_modalities(Path("/nonexistent/tasks.json"), TASKS)
    quality = rng.normal(0, 4, len(TASKS))
    G = np.array([[quality[j] + 3.0 * (mod[t] == mod[s]) for j, s in enumerate(TASKS)] for t in TASKS])
    G += rng.normal(0, 0.5, G.shape)
    np.fill_diagonal(G, np.nan)
    return G


def _write(out: Path, plan: TransferPlan, truth: np.ndarray, seed: int = 0, perturb: str | None = None) -> Path:
    """pairs.jsonl (every task a target, 4 seeds) and predictors.jsonl (the main targets; fisher = truth +
    noise, data = noise, same_modality, random). ``perturb``: that target's measured scores reversed
    around its scratch score and scaled (its own gains, nothing else, differ)."""
    rng = np.random.default_rng(seed + 1)
    mod = task_modalities(Path("/nonexistent/tasks.json"), TASKS)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.jsonl", "w") as f:
        for sd in SEEDS:
            for i, t in enumerate(TASKS):
                base = 0.5 + rng.normal(0, 0.002)
                f.write(json.dumps({"target": t, "source": "scratch", "seed": sd, "score": base, "key": plan.key()}) + "\n")
                for j, s in enumerate(TASKS):
                    if s != t:
                        g = (truth[i, j] + rng.normal(0, 0.5)) / 100
                        if t == perturb:
                            g = -3 * g
                        f.write(json.dumps({"target": t, "source": s, "seed": sd, "score": base + g,
                                            "key": plan.key()}) + "\n")
    rng = np.random.default_rng(seed + 2)  # the predictor rows do not depend on the gains' noise draws
    with open(out / "predictors.jsonl", "w") as f:
        for t in MAIN:
            i = TASKS.index(t)
            sources = [s for s in TASKS if s != t]
            for shots, seeds in ((4, (0, 1)), (None, (0,))):
                for sd in seeds:
                    rows = {"fisher": [truth[i, TASKS.index(s)] + rng.normal(0, 3.0) for s in sources],
                            "data": rng.normal(size=len(sources)).tolist(),
                            "same_modality": [float(mod[s] == mod[t]) for s in sources],
                            "random": rng.normal(size=len(sources)).tolist()}
                    for p in LOGGED:
                        f.write(json.dumps({"predictor": p, "target": t, "shots": shots, "seed": sd, "key": "k0",
                                            "sources": sources, "row": [float(x) for x in rows[p]],
                                            "seconds": {"fisher": 6.5, "data": 2.0}.get(p, 0.001)}) + "\n")
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    plan = _plan()
    out = _write(tmp_path_factory.mktemp("gt") / "groundtruth" / plan.name, plan, _truth())
    return {"plan": plan, "out": out, "q": quality_table(plan, out)}


def test_learned_rows_are_scored_beside_the_logged_ones(scored):
    q, plan = scored["q"], scored["plan"]
    assert set(q["table"]) == {"4-shot", "full"}
    for size, preds in q["table"].items():
        assert set(preds) == {*LOGGED, *LEARNED_PREDICTOR_NAMES}, size
        ref = preds["fisher"]
        for p in LEARNED_PREDICTOR_NAMES:
            v = preds[p]
            # the same shape as every logged row's: per-target metrics, summary, ceiling, the comparison
            assert v.keys() == ref.keys() and v["summary"].keys() == ref["summary"].keys()
            assert set(v["per_target"]) == set(MAIN) and v["n_targets"] == len(MAIN)
            assert all(v["per_target"][t].keys() == ref["per_target"][t].keys() for t in MAIN)
            assert v["vs_same_modality"].keys() == ref["vs_same_modality"].keys()
            assert v["vs_same_modality"]["n_targets"] == len(MAIN)
        sp = {p: v["summary"]["spearman"]["mean"] for p, v in preds.items()}
        # the known model: a source's quality carries to every target; only the learned rows see it
        assert sp["transfer_history"] > 0.8 and sp["transfer_history"] > sp["same_modality"] > sp["random"]
        assert sp["combined"] > sp["same_modality"] and sp["combined"] > sp["data"]
        assert preds["transfer_history"]["vs_same_modality"]["ci"][0] > 0
    # a combined row costs its features' logged seconds (fisher 6.5 + data 2.0 + same_modality 0.001) and its fit
    assert q["table"]["4-shot"]["combined"]["seconds_per_target"] >= 8.501
    assert q["table"]["4-shot"]["transfer_history"]["seconds_per_target"] < 1.0
    csv_text = (scored["out"] / "quality.csv").read_text()
    assert "\ncombined,4-shot," in csv_text and "\ntransfer_history,full," in csv_text


def test_learned_rows_only_where_the_plan_lists_them(scored, tmp_path):
    plan = _plan(LOGGED)
    out = _write(tmp_path / "groundtruth" / plan.name, plan, _truth())
    q = quality_table(plan, out)
    assert all(set(preds) == set(LOGGED) for preds in q["table"].values())
    # the logged rows are scored exactly as when the learned ones stand beside them
    for size, preds in q["table"].items():
        for p in LOGGED:
            assert preds[p]["summary"] == scored["q"]["table"][size][p]["summary"]
    only = quality_table(plan, out, learned_names=["transfer_history"])
    assert all(set(preds) == {*LOGGED, "transfer_history"} for preds in only["table"].values())


def _rows_by(rows):
    return {(r["predictor"], r["target"], r["shots"]): r["row"] for r in rows}


def test_a_targets_learned_rows_never_read_its_own_gains(scored, tmp_path):
    """Perturb one main target's measured gains in pairs.jsonl: its learned rows stay identical (at every
    size); the other targets' change (they learn from it), so the check can fail."""
    plan, truth = scored["plan"], _truth()
    records = predictor_records(scored["out"])[0]
    mod = task_modalities(Path("/nonexistent/tasks.json"), TASKS)
    G = gain_tensor(scored["out"] / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    before = _rows_by(learned_rows(plan, G, records, mod))
    assert {k[0] for k in before} == set(LEARNED_PREDICTOR_NAMES) and {k[1] for k in before} == set(MAIN)
    assert {k[2] for k in before} == {4, None}
    t = "rt_polarity"
    out2 = _write(tmp_path / "perturbed", plan, truth, perturb=t)
    G2 = gain_tensor(out2 / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    i = plan.tasks.index(t)
    assert not np.allclose(np.nan_to_num(G2[:, i]), np.nan_to_num(G[:, i]))
    np.testing.assert_array_equal(np.delete(G2, i, axis=1), np.delete(G, i, axis=1))  # nothing else differs
    after = _rows_by(learned_rows(plan, G2, records, mod))
    mine = [k for k in before if k[1] == t]
    assert len(mine) == 2 * 2
    for k in mine:
        np.testing.assert_array_equal(after[k], before[k])
    for p in LEARNED_PREDICTOR_NAMES:
        assert any(not np.allclose(after[k], before[k], equal_nan=True) for k in before if k[1] != t and k[0] == p), p
    # the scored target itself is never ranked as its own source
    assert all(math.isnan(r[plan.tasks.index(k[1])]) for k, r in before.items() if k[0] == "combined")


def test_learned_rows_learn_from_the_main_targets_only(scored, tmp_path):
    """EXTRA is measured as a target in the log but is no main target: its gains are read by no learned
    row, and it gets none (a held-out set is another plan)."""
    plan, truth = scored["plan"], _truth()
    records = predictor_records(scored["out"])[0]
    mod = task_modalities(Path("/nonexistent/tasks.json"), TASKS)
    G = gain_tensor(scored["out"] / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    out2 = _write(tmp_path / "perturbed", plan, truth, perturb=EXTRA)
    G2 = gain_tensor(out2 / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    assert not np.allclose(np.nan_to_num(G2[:, TASKS.index(EXTRA)]), np.nan_to_num(G[:, TASKS.index(EXTRA)]))
    before, after = _rows_by(learned_rows(plan, G, records, mod)), _rows_by(learned_rows(plan, G2, records, mod))
    assert before.keys() == after.keys() and EXTRA not in {k[1] for k in before}
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    # but it stays a source: its column is ranked
    assert all(math.isfinite(r[TASKS.index(EXTRA)]) for r in before.values())


def test_vs_same_modality_is_the_paired_statistics_of_the_plan(scored):
    """BCa CI, Wilcoxon p and win/tie/loss of the per-target Spearman differences: stats.paired's numbers."""
    preds = scored["q"]["table"]["4-shot"]
    v, base = preds["combined"], preds["same_modality"]
    d = [v["per_target"][t]["spearman"] - base["per_target"][t]["spearman"] for t in MAIN]
    vs = v["vs_same_modality"]
    p = stats.paired([v["per_target"][t]["spearman"] for t in MAIN], [base["per_target"][t]["spearman"] for t in MAIN],
                     tie=0.0)
    assert vs["mean_difference"] == pytest.approx(np.mean(d))
    assert tuple(vs["ci"]) == (p.ci_low, p.ci_high) and vs["ci_method"] == "BCa"
    assert tuple(vs["ci_percentile"]) == (p.pct_low, p.pct_high)
    assert vs["wilcoxon_p"] == pytest.approx(p.p_wilcoxon)
    assert (vs["wins"], vs["ties"], vs["losses"]) == (sum(x > 0 for x in d), sum(x == 0 for x in d), sum(x < 0 for x in d))
    same = base["vs_same_modality"]  # against itself: every target a tie, no difference
    assert (same["wins"], same["ties"], same["losses"]) == (0, len(MAIN), 0) and same["wilcoxon_p"] == 1.0


def test_compare_predictors_on_known_differences():
    b = {f"t{i}": {"spearman": 0.1 * i} for i in range(7)}
    d = [0.3, 0.2, 0.1, 0.0, -0.1, 0.25, 0.15]
    a = {t: {"spearman": b[t]["spearman"] + x} for t, x in zip(b, d)}
    a["t7"] = {"spearman": float("nan")}  # undefined on one side: left out
    a["only_a"] = {"spearman": 0.5}
    b["t7"] = {"spearman": 0.2}
    vs = compare_predictors(a, b)
    from scipy.stats import wilcoxon

    assert vs["n_targets"] == 7 and vs["mean_difference"] == pytest.approx(np.mean(d))
    assert (vs["wins"], vs["ties"], vs["losses"]) == (5, 1, 1)
    diff = [a[t]["spearman"] - b[t]["spearman"] for t in list(b)[:7]]  # d, up to rounding
    assert vs["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue) and vs["wilcoxon_p"] < 0.1
    assert tuple(vs["ci"]) == stats.bootstrap_ci(diff)  # BCa, stats.py's resamples
    assert vs["ci"][0] < np.mean(d) < vs["ci"][1] and tuple(vs["ci"]) != tuple(vs["ci_percentile"])
    empty = compare_predictors({}, b)
    assert empty["n_targets"] == 0 and math.isnan(empty["mean_difference"]) and math.isnan(empty["ci"][0])


def test_the_reader_accepts_learned_names_and_no_other(scored):
    raw = json.loads((scored["out"] / "quality.json").read_text())
    got = parse_gt_quality(raw, "learned-test")
    assert set(got["table"]["4-shot"]) == {*LOGGED, *LEARNED_PREDICTOR_NAMES}
    c = got["table"]["4-shot"]["combined"]
    assert c["vs_same_modality"]["ci"] == tuple(raw["table"]["4-shot"]["combined"]["vs_same_modality"]["ci"])
    raw["table"]["4-shot"]["oracle"] = raw["table"]["4-shot"]["combined"]
    with pytest.raises(GroundTruthError, match="unknown predictor 'oracle'"):
        parse_gt_quality(raw, "learned-test")
    assert SCORED_PREDICTOR_NAMES == PREDICTOR_NAMES + LEARNED_PREDICTOR_NAMES


def test_a_plan_may_list_learned_predictors_and_the_predictor_stage_skips_them(tmp_path):
    raw = {"name": "learned-plan", "tasks": TASKS[:4], "predictors": ["same_modality", "combined", "transfer_history"]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    plan = load_plan(path)
    assert plan.predictors == raw["predictors"]
    path.write_text(json.dumps({**raw, "predictors": ["oracle"]}))
    with pytest.raises(ValueError, match="unknown predictor"):
        load_plan(path)
    # a plan of learned predictors only: the predictor stage makes no row (and never asks for target data)
    plan.predictors = list(LEARNED_PREDICTOR_NAMES)
    ctx = SimpleNamespace(steps=1, batch_size=1, fisher_n=1, fisher_batch=1, data_n=1, seed=0, probe_seed=0,
                          probe_std=0.0, backbone=SimpleNamespace(backbone_id="none"), _mem={}, _target_model=None)
    log = run_predictors(plan, ctx, tmp_path / "out")
    assert not log.exists() or log.read_text() == ""


def test_the_reader_and_the_report_keep_wilcoxon_and_win_tie_loss(scored, tmp_path):
    """Since issue 28 a quality table's comparison with same-modality carries Wilcoxon p and win/tie/loss:
    the reader keeps them and REPORT's table prints them beside the CI (an older table has neither)."""
    from pitune_core.study.report import groundtruth_section

    raw = json.loads((scored["out"] / "quality.json").read_text())
    vs = raw["table"]["4-shot"]["combined"]["vs_same_modality"]
    got = parse_gt_quality(raw, "learned-test")["table"]["4-shot"]["combined"]["vs_same_modality"]
    assert got["wilcoxon_p"] == pytest.approx(vs["wilcoxon_p"])
    assert (got["wins"], got["ties"], got["losses"]) == (vs["wins"], vs["ties"], vs["losses"])
    d = tmp_path / "study" / "groundtruth" / "learned-test"
    d.mkdir(parents=True)
    (d / "quality.json").write_text(json.dumps(raw))
    row = next(line for line in groundtruth_section(tmp_path / "study") if line.startswith("| 4-shot | combined |"))
    assert f"W/T/L {vs['wins']}/{vs['ties']}/{vs['losses']}" in row and "Wilcoxon p " in row
    for p in raw["table"]["4-shot"].values():  # an older table: the comparison without the new keys
        for k in ("wilcoxon_p", "wins", "ties", "losses"):
            p["vs_same_modality"].pop(k, None)
    (d / "quality.json").write_text(json.dumps(raw))
    old = next(line for line in groundtruth_section(tmp_path / "study") if line.startswith("| 4-shot | combined |"))
    assert "Wilcoxon" not in old and "W/T/L" not in old
    assert "wilcoxon_p" not in parse_gt_quality(raw, "learned-test")["table"]["4-shot"]["combined"]["vs_same_modality"]
