"""Predictors that learn from measured transfer (issue 28, item 4), on synthetic gains with known answers:
transfer history, same family, and the leave-one-target-out combinations."""

from __future__ import annotations

import numpy as np
import pytest

from pitune_core.predict import learned as L
from pitune_core.predict import quality as Q

LANG = [f"l{i}" for i in range(6)]
VIS = [f"v{i}" for i in range(5)]
TASKS = LANG + VIS
MOD = {**{t: "language" for t in LANG}, **{t: "vision" for t in VIS}}


def _gain(fn, rng=None):
    """(targets = sources = TASKS) gains with fn(target, source) + small noise, NaN on the diagonal."""
    rng = rng or np.random.default_rng(0)
    G = np.array([[fn(t, s) for s in TASKS] for t in TASKS], dtype=float) + 0.1 * rng.normal(size=(len(TASKS),) * 2)
    np.fill_diagonal(G, np.nan)
    return G


def test_a_source_best_for_every_target_is_ranked_first_by_transfer_history():
    G = _gain(lambda t, s: 5.0 if s == "l3" else 0.0)
    rows = L.transfer_history_rows(G, TASKS, TASKS, MOD)
    for t, row in rows.items():
        order = Q.rank_sources(np.delete(row, TASKS.index(t)), [s for s in TASKS if s != t])
        if t != "l3":
            assert [s for s in TASKS if s != t][order[0]] == "l3", t
    per_seed = np.stack([G, G + 0.01])  # two identical-order seeds: a perfect ground truth
    q = Q.predictor_quality(rows, per_seed, TASKS, TASKS)
    top1 = {t: v["top1_hit"] for t, v in q["per_target"].items()}
    assert all(top1[t] == 1.0 for t in TASKS if t != "l3")


def test_transfer_history_never_reads_the_targets_own_row():
    # every other language target gains most from l1; l0's own row says l2 by far
    def fn(t, s):
        if t == "l0":
            return 50.0 if s == "l2" else 0.0
        return 3.0 if s == "l1" else 0.0
    G = _gain(fn)
    row = L.transfer_history(G, TASKS, TASKS, MOD, "l0")
    assert TASKS[int(np.argmax(row))] == "l1"  # reading its own row would put l2 first (50 / 5 > 3)
    G2 = G.copy()
    G2[TASKS.index("l0")] = np.random.default_rng(9).normal(size=len(TASKS)) * 100  # anything at all
    np.testing.assert_array_equal(L.transfer_history(G2, TASKS, TASKS, MOD, "l0"), row)
    # ...while another target's row does move it (the check is not vacuous)
    G3 = G.copy()
    G3[TASKS.index("l4"), TASKS.index("v0")] = 1000.0
    assert L.transfer_history(G3, TASKS, TASKS, MOD, "l0")[TASKS.index("v0")] > row[TASKS.index("v0")] + 100
    # exclude leaves out further targets
    G4 = G3.copy()
    np.testing.assert_allclose(L.transfer_history(G4, TASKS, TASKS, MOD, "l0", exclude={"l4"}),
                               L.transfer_history(np.delete(G, TASKS.index("l4"), 0), [t for t in TASKS if t != "l4"],
                                                  TASKS, MOD, "l0"))


def test_transfer_history_reads_the_targets_modality_and_falls_back():
    # language targets gain from l5, vision targets from v4
    G = _gain(lambda t, s: 4.0 if s == ("l5" if MOD[t] == "language" else "v4") else 0.0)
    assert TASKS[int(np.argmax(L.transfer_history(G, TASKS, TASKS, MOD, "l0")))] == "l5"
    assert TASKS[int(np.argmax(L.transfer_history(G, TASKS, TASKS, MOD, "v0")))] == "v4"
    # a new task (not a row of the ground truth) gets the same rule
    assert TASKS[int(np.argmax(L.transfer_history(G, TASKS, TASKS, {**MOD, "new": "vision"}, "new")))] == "v4"
    # a source measured on no other vision target: its mean over the other targets; never measured: the row mean
    H = G.copy()
    H[[TASKS.index(v) for v in VIS], TASKS.index("l0")] = np.nan
    H[:, TASKS.index("l1")] = np.nan
    row = L.transfer_history(H, TASKS, TASKS, MOD, "v0")
    assert np.isfinite(row).all()
    others = [TASKS.index(t) for t in TASKS if t != "v0"]
    assert row[TASKS.index("l0")] == pytest.approx(np.nanmean(H[others, TASKS.index("l0")]))
    assert row[TASKS.index("l1")] == pytest.approx(np.mean(np.delete(row, TASKS.index("l1"))))
    with pytest.raises(ValueError, match=r"\(11, 11\)"):
        L.transfer_history(G[:3], TASKS, TASKS, MOD, "l0")


def test_same_family_is_a_reference_a_user_task_does_not_have():
    fam = {"a": "digits", "b": "digits", "c": "sentiment", "mine": "user"}
    assert L.same_family_row("a", ["b", "c"], fam).tolist() == [1.0, 0.0]
    assert L.same_family_row("mine", ["a", "b", "c"], fam).tolist() == [0.0, 0.0, 0.0]
    assert L.same_family_row("unknown", ["a"], fam).tolist() == [0.0]
    assert L.same_modality_row("l0", ["l1", "v1"], MOD).tolist() == [1.0, 0.0]


def test_within_target_ranks():
    assert L.within_target_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert L.within_target_ranks(np.array([2.0, 2.0])).tolist() == [0.5, 0.5]
    assert L.within_target_ranks(np.array([1.0, 1.0, 5.0])).tolist() == [0.25, 0.25, 1.0]


def _fisher_world(seed=0):
    """Gains that follow a 'fisher' feature (per-target scale differs) and ignore a 'noise' feature."""
    rng = np.random.default_rng(seed)
    fisher = {t: rng.random(len(TASKS)) * (1 + i) for i, t in enumerate(TASKS)}
    noise = {t: rng.random(len(TASKS)) for t in TASKS}
    G = np.array([3 * L.within_target_ranks(fisher[t]) + 0.05 * rng.normal(size=len(TASKS)) for t in TASKS])
    np.fill_diagonal(G, np.nan)
    return {"fisher": fisher, "noise": noise}, G


@pytest.mark.parametrize("kind", L.COMBINE_KINDS)
def test_a_fitted_combination_weights_the_feature_that_predicts(kind):
    feats, G = _fisher_world()
    model = L.fit_combination(feats, G, TASKS, TASKS, TASKS[:-1], kind)
    coef = dict(zip(model["features"], model["coef"]))
    assert coef["fisher"] > 0.5 and abs(coef["noise"]) < (0.3 if kind == "linear" else 1.01)
    if kind == "rank_average":
        assert coef["fisher"] == 1.0
    row = L.predict_combination(model, {n: r[TASKS[-1]] for n, r in feats.items()})
    keep = [j for j in range(len(TASKS)) if j != len(TASKS) - 1]
    assert Q.target_quality(row[keep], G[-1, keep], [TASKS[j] for j in keep])["spearman"] > 0.8
    with pytest.raises(ValueError, match="unknown combination"):
        L.fit_combination(feats, G, TASKS, TASKS, TASKS, "stacking")
    with pytest.raises(ValueError, match="no gain or feature row"):
        L.fit_combination(feats, G, TASKS, TASKS, ["zzz"], kind)


def test_a_combination_is_fitted_on_the_training_targets_only():
    feats, G = _fisher_world()
    model = L.fit_combination(feats, G, TASKS, TASKS, TASKS[:5])
    G2 = G.copy()
    G2[5:] = np.random.default_rng(3).normal(size=G2[5:].shape) * 100  # rows outside the training targets
    np.fill_diagonal(G2, np.nan)
    assert L.fit_combination(feats, G2, TASKS, TASKS, TASKS[:5]) == model


@pytest.mark.parametrize("history", [True, False])
def test_leave_one_target_out_combination_never_reads_the_held_out_targets_gains(history):
    feats, G = _fisher_world()
    rows = L.loto_combination_rows(feats, G, TASKS, TASKS, MOD, history=history)
    assert set(rows) == set(TASKS)
    for u, r in rows.items():  # a target is not its own source: NaN there, finite everywhere else
        own = TASKS.index(u)
        assert np.isnan(r[own]) and np.isfinite(np.delete(r, own)).all()
    t = "l2"
    i = TASKS.index(t)
    G2 = G.copy()
    G2[i] = -10 * G[i]  # the held-out target's own gains, reversed and scaled
    again = L.loto_combination_rows(feats, G2, TASKS, TASKS, MOD, history=history)
    np.testing.assert_allclose(again[t], rows[t])
    # the other targets' rows do see it (it is one of their training targets): the check can fail
    assert any(not np.allclose(again[u], rows[u]) for u in TASKS if u != t)
    q = Q.predictor_quality(rows, np.stack([G, G]), TASKS, TASKS)
    assert q["summary"]["spearman"]["mean"] > 0.8


# ----------------------------------------------------------------------------- (b) k-NN accuracy of source features


def test_knn_accuracy_is_leave_one_out():
    from pitune_core.predict.predictors import knn_loo_accuracy

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 4)  # 4 shots x 3 classes
    noise = rng.normal(size=(12, 16))
    # features that carry no label: near chance; scoring an example against itself would give 1.0
    assert knn_loo_accuracy(noise, y) < 0.7
    # features clustered by class: every held-out example finds a same-class neighbour
    centres = rng.normal(size=(3, 16)) * 10
    assert knn_loo_accuracy(centres[y] + 0.1 * noise, y) == 1.0
    # one shot per class: no example has a same-class neighbour left
    assert knn_loo_accuracy(centres + 0.1 * noise[:3], np.arange(3)) == 0.0
    assert knn_loo_accuracy(noise[:1], y[:1]) == 0.0
    # k neighbours vote (k=3 on clustered features is still right)
    assert knn_loo_accuracy(centres[y] + 0.1 * noise, y, k=3) == 1.0


def test_knn_accuracy_and_same_family_on_shipped_experts(backbone):
    from pathlib import Path

    from pitune_core.predict.predictors import (PredictorContext, available_examples, knn_loo_accuracy, predict_row,
                                                source_view)

    tasks = ["movie_sentiment", "amazon_sentiment", "mnist", "textures"]
    ctx = PredictorContext(backbone, {t: Path("precomputed/experts/lora") / t for t in tasks})
    target = available_examples("movie_sentiment", backbone, 4, seed=0)
    assert predict_row("same_family", target, ctx).tolist() == [1.0, 0.0, 0.0]
    row = predict_row("knn_accuracy", target, ctx)
    assert row.shape == (3,) and ((row >= 0) & (row <= 1)).all()
    y = target.tensors.labels.numpy()
    for s, v in zip(ctx.sources_for("movie_sentiment"), row):  # each source's own features of the 8 shots
        assert v == knn_loo_accuracy(source_view(target, s, ctx)[0], y)
    # the rows differ by source (the features are the source experts', not the bare backbone's)
    feats = [source_view(target, s, ctx)[0] for s in ctx.sources_for("movie_sentiment")]
    assert not np.allclose(feats[0], feats[1])
