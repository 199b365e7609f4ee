"""Predictors side by side, the quality metrics with known answers, the seed reliability, LogME
against its closed form, and (on the quick study) every predictor on a small real study."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pitune_core.predict import quality as Q
from pitune_core.spec.vocab import LEARNED_PREDICTOR_NAMES

# ----------------------------------------------------------------------------- quality: known answers

NAMES = ["a", "b", "c", "d", "e"]


def test_perfect_and_reversed_predictions():
    gain = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    q = Q.target_quality(gain * 10, gain, NAMES)
    assert q["spearman"] == pytest.approx(1.0) and q["top1_hit"] == 1 and q["top3_hit"] == 1
    assert q["ndcg3"] == pytest.approx(1.0) and q["regret"] == 0
    q = Q.target_quality(-gain, gain, NAMES)
    assert q["spearman"] == pytest.approx(-1.0) and q["top1_hit"] == 0 and q["top3_hit"] == 0
    assert q["regret"] == pytest.approx(4.0) and q["predicted_best"] == "e"
    # reversed top-3 picks relevance 0, 1, 2 (gain - min) of an ideal 4, 3, 2
    disc = 1 / np.log2([2, 3, 4])
    assert q["ndcg3"] == pytest.approx(float(np.dot([0, 1, 2], disc) / np.dot([4, 3, 2], disc)))


def test_hit_regret_and_ties():
    gain = np.array([1.0, 9.0, 2.0, 8.0, np.nan])  # NaN gain (e.g. the diagonal) is ignored
    pred = np.array([0.9, 0.1, 0.8, 0.7, 100.0])
    q = Q.target_quality(pred, gain, NAMES)
    assert q["predicted_top"] == ["a", "c", "d"] and q["top1_hit"] == 0 and q["top3_hit"] == 0
    assert q["regret"] == pytest.approx(8.0)
    # ties in the prediction are broken by name, so the answer never depends on row order
    q = Q.target_quality(np.array([1.0, 1.0, 0.0, 0.0, 0.0]), np.array([1.0, 2.0, 0.0, 0.0, 0.0]), NAMES)
    assert q["predicted_best"] == "a" and q["regret"] == pytest.approx(1.0) and q["top3_hit"] == 1
    # a constant predictor has Spearman 0, not NaN
    assert Q.target_quality(np.zeros(5), np.arange(5.0), NAMES)["spearman"] == 0.0
    with pytest.raises(ValueError, match="NaN or inf"):
        Q.target_quality(np.array([np.nan, 1, 2, 3, 4.0]), np.arange(5.0), NAMES)


def test_spearman_brown_and_halves():
    assert Q.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert Q.spearman_brown(1.0) == pytest.approx(1.0) and Q.spearman_brown(0.0) == 0.0
    assert Q.spearman_brown(-1.0) == -1.0 and Q.spearman_brown(-0.5) == -1.0  # clipped, not -inf / -2
    assert len(Q._halves(4)) == 3 and len(Q._halves(6)) == 10 and len(Q._halves(3)) == 3
    for a, b in Q._halves(4):
        assert sorted(a + b) == [0, 1, 2, 3]


def test_seed_reliability_of_noise_free_and_pure_noise_gains():
    rng = np.random.default_rng(0)
    T, S = 6, 8
    true = rng.normal(size=(T, S)) * 5
    same = np.stack([true] * 4)
    rel = Q.seed_reliability(same, [f"t{i}" for i in range(T)], [f"s{j}" for j in range(S)])
    assert rel["mean"]["r_half"] == pytest.approx(1.0) and rel["mean"]["ceiling_spearman"] == pytest.approx(1.0)
    assert rel["mean"]["oracle_top1_hit"] == 1.0 and rel["mean"]["oracle_regret"] == 0.0
    noise = rng.normal(size=(40, T, S))  # no signal at all: reliability near 0
    rel = Q.seed_reliability(noise, [f"t{i}" for i in range(T)], [f"s{j}" for j in range(S)])
    assert abs(rel["mean"]["r_half"]) < 0.2
    # signal + noise: reliability grows with the number of seeds (Spearman-Brown in action)
    noisy = true[None] + rng.normal(size=(8, T, S)) * 5
    r4 = Q.seed_reliability(noisy[:4], [f"t{i}" for i in range(T)], [f"s{j}" for j in range(S)])
    r8 = Q.seed_reliability(noisy, [f"t{i}" for i in range(T)], [f"s{j}" for j in range(S)])
    assert r8["mean"]["reliability"] > r4["mean"]["reliability"] > 0


def test_predictor_quality_ceiling_fraction_and_ci():
    rng = np.random.default_rng(1)
    tasks = [f"t{i}" for i in range(8)]
    true = rng.normal(size=(8, 8)) * 4
    G = true[None] + rng.normal(size=(4, 8, 8))
    for s in range(4):
        np.fill_diagonal(G[s], np.nan)
    oracle = {t: true[i] for i, t in enumerate(tasks)}
    q = Q.predictor_quality(oracle, G, tasks, tasks)
    s = q["summary"]["spearman"]
    assert q["n_targets"] == 8 and s["mean"] > 0.8 and s["ci"][0] <= s["mean"] <= s["ci"][1]
    assert s["fraction_of_ceiling"] == pytest.approx(s["mean"] / s["ceiling"])
    assert "excess_over_ceiling" in q["summary"]["regret"]
    rand = {t: rng.random(8) for t in tasks}
    r = Q.predictor_quality(rand, G, tasks, tasks)
    assert r["summary"]["spearman"]["mean"] < s["mean"]
    from pitune_core.study.transfer import compare_predictors  # lazy: loads torch

    d = compare_predictors(q["per_target"], r["per_target"])
    assert d["n_targets"] == 8 and d["ci"][0] > 0 and d["wins"] == 8  # the oracle beats random, with its CI above 0
    with pytest.raises(ValueError, match="expected one value per source"):
        Q.predictor_quality({"t0": np.zeros(3)}, G, tasks, tasks)


def test_bootstrap_ci_known_cases():
    assert Q.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(x) for x in Q.bootstrap_ci([1.0]))
    lo, hi = Q.bootstrap_ci(np.arange(100.0))
    assert lo < 49.5 < hi and hi - lo < 25
    lo, hi = Q.paired_ci([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0], "ratio")
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


# ----------------------------------------------------------------------------- LogME

def test_logme_is_the_maximum_of_the_closed_form_evidence():
    from scipy.stats import multivariate_normal

    from pitune_core.predict.predictors import logme_evidence, logme_score

    rng = np.random.default_rng(0)
    for N, D in [(6, 20), (60, 8)]:  # fewer examples than features (few-shot) and more
        f = rng.normal(size=(N, D))
        y = (rng.random(N) > 0.5).astype(float)
        ev, a, b = logme_evidence(f, y, tol=1e-10, max_iter=1000)

        def closed(a_, b_, f=f, y=y, N=N):
            return multivariate_normal(np.zeros(N), f @ f.T / a_ + np.eye(N) / b_).logpdf(y) / N

        assert ev == pytest.approx(closed(a, b), abs=1e-9)
        assert all(closed(a * x, b * z) <= ev + 1e-9 for x in (0.5, 0.9, 1.1, 2) for z in (0.5, 0.9, 1.1, 2))
    # features that separate the classes score higher than features that do not
    y = np.repeat([0, 1], 20)
    good = np.c_[y + 0.05 * rng.normal(size=40), rng.normal(size=(40, 3))]
    bad = rng.normal(size=(40, 4))
    assert logme_score(good, y) > logme_score(bad, y)


# ----------------------------------------------------------------------------- on a small real study

@pytest.fixture(scope="module")
def ctx(quick_study, backbone_of_study, tmp_path_factory):
    from pitune_core.predict.predictors import PredictorContext

    tasks = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "textures", "emoji_group_question",
             "snippet_face_mood"]
    return PredictorContext(backbone_of_study, {t: quick_study / "experts/lora" / t for t in tasks}, steps=2,
                            fisher_n=8, data_n=8, cache_dir=tmp_path_factory.mktemp("cache"))


def test_every_predictor_on_a_small_real_study(ctx, quick_study):
    from pitune_core.predict.predictors import (
        PREDICTORS,
        available_examples,
        describe,
        predict_row,
    )
    from pitune_core.predict.similarity import read_similarity_csv

    target = available_examples("movie_sentiment", ctx.backbone, 2, seed=0)
    assert len(target.tensors) == 4  # 2 shots x 2 classes, nothing else
    sources = ctx.sources_for("movie_sentiment")
    rows = {p: predict_row(p, target, ctx) for p in PREDICTORS}
    for p, row in rows.items():
        assert row.shape == (len(sources),) and np.isfinite(row).all(), p
        assert describe()[p], p
    assert rows["same_modality"].tolist() == [1.0, 0, 0, 0, 0]  # tweet_sentiment is the one language source
    assert ((rows["expert_accuracy"] >= 0) & (rows["expert_accuracy"] <= 1)).all()
    assert (rows["expert_loglik"] <= 0).all()
    for p in ("fisher", "fisher_flat", "fisher_batch", "fisher_sampled", "fisher_probe"):
        assert ((rows[p] >= 0) & (rows[p] <= 1 + 1e-9)).all(), p
    # at full data, "fisher" is today's Fisher: the study's own similarity row (same N, seed, expert)
    full = predict_row("fisher", available_examples("movie_sentiment", ctx.backbone, None), ctx)
    names, S = read_similarity_csv(quick_study / "predict/lora/fisher/similarity.csv")
    ref = np.array([S[names.index("movie_sentiment"), names.index(s)] for s in sources])
    assert full == pytest.approx(ref, abs=2e-3)
    with pytest.raises(ValueError, match="unknown predictor"):
        predict_row("fischer", target, ctx)


def test_the_k_shot_path_never_reads_the_other_training_examples(ctx):
    import dataclasses

    from pitune_core.data.tasks import get_task
    from pitune_core.predict.predictors import (
        PREDICTORS,
        available_examples,
        predict_row,
    )

    data = get_task("movie_sentiment").load()
    picked = available_examples("movie_sentiment", ctx.backbone, 2, seed=1, data=data).indices
    others = np.setdiff1d(np.arange(len(data.train)), picked)
    texts = list(data.train.texts)
    for i in others:
        texts[i] = "zzz qqq unrelated " * 3  # every example the 2-shot target does not have
    # (labels stay: the k-per-class draw itself needs them, and it is the same draw in both)
    changed = dataclasses.replace(data, train=dataclasses.replace(data.train, texts=texts))
    again = available_examples("movie_sentiment", ctx.backbone, 2, seed=1, data=changed)
    assert again.indices.tolist() == picked.tolist() and "zzz" not in " ".join(again.tensors.texts)
    rows = []
    for d in (data, changed):
        ctx.clear()
        target = available_examples("movie_sentiment", ctx.backbone, 2, seed=1, data=d)
        rows.append({p: predict_row(p, target, ctx) for p in PREDICTORS})
    for p in PREDICTORS:
        np.testing.assert_array_equal(rows[0][p], rows[1][p], err_msg=p)
    # ...while the full-data path does see them (the change is not a no-op)
    ctx.clear()
    a = predict_row("data", available_examples("movie_sentiment", ctx.backbone, None, data=data), ctx)
    b = predict_row("data", available_examples("movie_sentiment", ctx.backbone, None, data=changed), ctx)
    assert not np.allclose(a, b)


def test_fisher_stability_uses_disjoint_samples(ctx):
    from pitune_core.predict.predictors import (
        fisher_information,
        fisher_stability,
        source_tensors,
    )

    experts = {t: ctx.experts[t] for t in ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "textures"]}
    res = fisher_stability(experts, ctx.backbone, sizes=(2, 10**6), k=2)
    two = res["sizes"]["2"]
    assert 0 <= two["mean_topk_overlap"] <= 1 and set(two["per_task"]) == set(experts)
    assert "skipped" in res["sizes"][str(10**6)]
    assert res["samples_for_stable_topk"] in (None, 2)
    # two disjoint sets give two different Fisher estimates (the check is not circular)
    from pitune_core.data.tasks import get_task
    from pitune_core.model.experts import load_expert

    model = load_expert(experts["movie_sentiment"], ctx.backbone, trainable=True)[0]
    t = source_tensors("movie_sentiment", ctx.backbone)
    v = list(get_task("movie_sentiment").verbalizers)
    a = fisher_information(model, ctx.backbone, t, v, indices=[0, 1])
    b = fisher_information(model, ctx.backbone, t, v, indices=[2, 3])
    assert any(not np.allclose(a[g], b[g]) for g in a)
    s = fisher_information(model, ctx.backbone, t, v, mode="sampled", indices=list(range(8)), seed=3)
    assert set(s) == set(a)


# ----------------------------------------------------------------------------- the study: plan, pairs, quality

def _plan(tmp_path, **kw):
    import json

    plan = {"name": "tiny", "tasks": ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "textures"], "shots": 2,
            "steps": 2,
            "eval_limit": 20, "seeds": [0, 1], "predictors": ["same_modality", "random", "expert_loglik"],
            "target_shots": [2], "predictor_seeds": [0], "fisher_n": 4, "k": 1, **kw}
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    return p


def test_the_committed_pilot_follows_its_rule():
    """plans/relatedness-pilot.json: its targets are the first task of each non-control family in the
    registry's order plus number_words, and each target has same-family, same-modality-other-family
    and other-modality-other-family sources among the plan's tasks."""
    from pitune_core.data.tasks import TASKS
    from pitune_core.paths import REPO_ROOT
    from pitune_core.study.relatedness import pair_kind
    from pitune_core.study.transfer import load_plan

    plan = load_plan(REPO_ROOT / "plans" / "relatedness-pilot.json")
    firsts = []
    for t in TASKS.values():
        if t.family != "control" and t.family not in {TASKS[f].family for f in firsts}:
            firsts.append(t.name)
    assert plan.targets == firsts[:1] + ["number_words"] + firsts[1:]
    assert plan.seeds == (0, 1) and plan.eval_limit is None and not plan.predictors
    info = {t: {"family": TASKS[t].family, "modality": TASKS[t].modality} for t in plan.tasks}
    for t in plan.targets:
        kinds = {pair_kind(info[t], info[s]) for s in plan.tasks if s != t}
        assert kinds == {"same_family", "same_modality_other_family", "cross_modality_other_family"}, t


@pytest.mark.parametrize("name", ["transfer-v2.json", "transfer-v2-confirm.json"])
def test_the_previous_suites_plans_are_refused_in_one_line(name):
    """The 24-task suite's ground-truth plans name tasks DATA_VERSION 3 retired: refused, naming them."""
    from pitune_core.paths import REPO_ROOT
    from pitune_core.study.transfer import load_plan

    with pytest.raises(ValueError, match="unknown task") as err:
        load_plan(REPO_ROOT / "plans" / name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad, msg", [({"colour": 1}, "unknown field"), ({"predictors": ["fischer"]}, "unknown predictor"),
                                       ({"steps": "ten"}, "wrong type"), ({"seeds": [0, 0]}, "distinct"),
                                       ({"target_shots": [0]}, "target_shots"),
                                       ({"targets": ["mnist"]}, "subset of tasks"), ({"targets": []}, "subset of tasks")])
def test_bad_plans_are_refused(tmp_path, bad, msg):
    from pitune_core.study.transfer import load_plan

    with pytest.raises(ValueError, match=msg):
        load_plan(_plan(tmp_path, **bad))


def test_a_plan_with_targets_measures_only_them(quick_study, tmp_path, capsys):
    """``targets``: those tasks are measured (pairs, predictor rows, quality); every task stays a source."""
    import json

    from pitune_core.cli.main import main
    from pitune_core.study.transfer import load_plan, pair_jobs, predictor_jobs, read_jsonl

    path = _plan(tmp_path, targets=["sklearn_digits"])
    plan = load_plan(path)
    assert {t for t, _, _ in predictor_jobs(plan)} == {"sklearn_digits"}
    out = tmp_path / "out"
    assert main(["transfer-study", str(path), "--study", str(quick_study), "--out", str(out), "--projector",
                 str(quick_study / "backbone"), "--quiet"]) == 0
    pairs = read_jsonl(out / "pairs.jsonl")
    assert {r["target"] for r in pairs} == {"sklearn_digits"} and len(pairs) == 4 * 2  # scratch + 3 sources, 2 seeds
    assert {(r["target"], r["source"], r["seed"]) for r in pairs} == set(pair_jobs(plan.tasks, plan.seeds, plan.targets))
    assert {r["target"] for r in read_jsonl(out / "predictors.jsonl")} == {"sklearn_digits"}
    q = json.loads((out / "quality.json").read_text())
    assert all(v["n_targets"] == 1 for preds in q["table"].values() for v in preds.values())
    capsys.readouterr()
    assert main(["transfer-study", str(path), "--study", str(quick_study), "--out", str(out), "--stage", "pairs",
                 "--targets", "movie_sentiment", "--projector", str(quick_study / "backbone")]) != 0
    assert "--targets movie_sentiment not among the plan's targets" in capsys.readouterr().err


def test_transfer_study_end_to_end_resumes_and_keys_its_logs(quick_study, tmp_path, capsys):
    import json

    from pitune_core.cli.main import main
    from pitune_core.study.transfer import gain_matrices, load_plan, read_jsonl

    plan, out = _plan(tmp_path), tmp_path / "out"
    args = ["transfer-study", str(plan), "--study", str(quick_study), "--out", str(out), "--projector",
            str(quick_study / "backbone")]
    assert main(args) == 0
    pairs = read_jsonl(out / "pairs.jsonl")
    assert len(pairs) == 2 * 4 * 4 and len({r["key"] for r in pairs}) == 1
    q = json.loads((out / "quality.json").read_text())
    assert set(q["table"]["2-shot"]) == {"same_modality", "random", "expert_loglik", *LEARNED_PREDICTOR_NAMES}
    assert q["reliability"]["n_seeds"] == 2
    assert "vs_same_modality" in q["table"]["2-shot"]["random"]
    assert (out / "quality.csv").read_text().startswith("predictor,target_data")
    n_rows = len(read_jsonl(out / "predictors.jsonl"))
    assert main(args) == 0  # resumed: nothing is redone
    assert len(read_jsonl(out / "pairs.jsonl")) == len(pairs) and len(read_jsonl(out / "predictors.jsonl")) == n_rows
    # another budget lands in the same log under its own key and never mixes with the first
    plan2 = _plan(tmp_path, steps=3, seeds=[0], predictors=[])
    assert main(["transfer-study", str(plan2), "--study", str(quick_study), "--out", str(out), "--stage", "pairs",
                 "--targets", "sklearn_digits", "--projector", str(quick_study / "backbone"), "--quiet"]) == 0
    assert len(read_jsonl(out / "pairs.jsonl")) == len(pairs) + 4  # scratch + 3 sources, one seed
    with pytest.raises(ValueError, match="2 configurations"):
        gain_matrices(out / "pairs.jsonl", load_plan(plan).tasks)
    assert len(gain_matrices(out / "pairs.jsonl", load_plan(plan2).tasks, load_plan(plan2).key())) == 1
    # the folder is bound to the backbone and experts its pairs were made with: another expert is refused
    ctx = json.loads((out / "context.json").read_text())
    assert set(ctx) == {"backbone_id", "data_version", "experts"} and "sklearn_digits" in ctx["experts"]
    f = out / "context.json"
    f.write_text(json.dumps({**ctx, "experts": {**ctx["experts"], "sklearn_digits": "0" * 16}}))
    capsys.readouterr()
    assert main(args) != 0 and "another expert for sklearn_digits; give another --out" in capsys.readouterr().err
    f.write_text(json.dumps({**ctx, "backbone_id": "elsewhere"}))
    assert main(args) != 0 and "another backbone or data version" in capsys.readouterr().err
