"""Robustness scoring (issue 28, item 3): shifted test sets from a task's family, corrupted copies of its own
test set, scoring an already-tuned model on them, the summaries, and the transfer run's optional hook."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pitune_core.data import robustness as R
from pitune_core.data.dedup import near_image_hash, normalise_text
from pitune_core.data.tasks import TASKS, Split, get_task
from pitune_core.spec.vocab import CORRUPTIONS, IMAGE_CORRUPTIONS, SEVERITIES, TEXT_CORRUPTIONS

# ----------------------------------------------------------------------------- shifted sets


def test_every_shift_group_shares_family_modality_and_labels():
    seen = set()
    for group, members in R.SHIFT_GROUPS.items():
        assert len(members) >= 2 and not seen & set(members), group
        seen |= set(members)
        specs = [TASKS[t] for t in members]
        assert len({(s.family, s.modality, s.num_classes, s.concepts) for s in specs}) == 1, group
    assert R.shift_sources("rt_polarity") == ("movie_sentiment", "amazon_sentiment", "tweet_sentiment", "nyt_sentiment")
    assert R.shift_sources("mnist") == ("opencv_digits", "sklearn_digits", "printed_digits")
    # a task outside every group, built-in or not, has none, and one line says why
    for t in TASKS:
        if not R.shift_sources(t):
            assert R.no_shift_reason(t).endswith("no shifted score"), t
    assert "none shares fashion_mnist's 10 classes" in R.no_shift_reason("fashion_mnist")
    assert R.no_shift_reason("mnist") is None


def test_a_target_without_a_family_partner_gets_a_clear_answer():
    with pytest.raises(ValueError, match="fashion_mnist: no shifted test set .*no shifted score"):
        R.shifted_set("fashion_mnist", "fashion_coarse")
    with pytest.raises(ValueError, match="not a shift source of mnist; its shift sources are opencv_digits"):
        R.shifted_set("mnist", "number_words")


def _inject(target_data, extra: Split):
    """The target's data with ``extra`` appended to its training split."""
    import dataclasses

    tr = target_data.train
    train = Split(np.concatenate([tr.labels, extra.labels]),
                  None if tr.texts is None else list(tr.texts) + list(extra.texts),
                  None if tr.images is None else np.concatenate([tr.images, extra.images]))
    return dataclasses.replace(target_data, train=train)


def test_a_text_shift_set_is_the_sources_test_split_less_the_targets_training_examples():
    tgt, src = get_task("rt_polarity").load(), get_task("movie_sentiment").load()
    base = R.shifted_set("rt_polarity", "movie_sentiment", tgt, src)
    test_keys = [normalise_text(t) for t in src.test.texts]
    train_keys = {normalise_text(t) for t in src.train.texts}
    # only the source's test examples, with their labels (the target's label order), none of its training split
    assert [test_keys[i] for i in base.indices] == [normalise_text(t) for t in base.split.texts]
    assert base.split.labels.tolist() == src.test.labels[base.indices].tolist()
    assert set(base.split.labels.tolist()) == {0, 1} and len(base.split) > 100
    assert not {normalise_text(t) for t in base.split.texts} & (train_keys - set(test_keys))
    # an example the target trains on (differently cased and punctuated) is dropped
    picks = base.indices[:7]
    leaked = Split(src.test.labels[picks], [src.test.texts[i].upper() + " !!" for i in picks])
    again = R.shifted_set("rt_polarity", "movie_sentiment", _inject(tgt, leaked), src)
    assert again.dropped == base.dropped + 7 and len(again.split) == len(base.split) - 7
    assert not {test_keys[i] for i in picks} & {normalise_text(t) for t in again.split.texts}
    target_train = {normalise_text(t) for t in tgt.train.texts}
    assert not target_train & {normalise_text(t) for t in base.split.texts}


def test_an_image_shift_set_drops_the_targets_images_and_near_duplicates():
    tgt = get_task("mnist").load()
    # the same image (printed digits are 28 px, as mnist's)
    src = get_task("printed_digits").load()
    base = R.shifted_set("mnist", "printed_digits", tgt, src)
    assert base.split.images.shape[1:] == src.test.images.shape[1:] and len(base.split) == len(base.indices)
    np.testing.assert_array_equal(base.split.images, src.test.images[base.indices])
    picks = base.indices[:3]
    again = R.shifted_set("mnist", "printed_digits", _inject(tgt, src.test.subset(picks)), src)
    assert again.dropped == base.dropped + 3 and not set(picks.tolist()) & set(again.indices.tolist())
    # near duplicates: the same pictures slightly re-toned (the near-duplicate key's case)
    def retoned(im):
        return (im.astype(int) + 3).clip(0, 255).astype(np.uint8)  # a brightness shift
    picks = np.array([i for i in base.indices[3:60]
                      if near_image_hash(retoned(src.test.images[i])) == near_image_hash(src.test.images[i])][:3])
    assert len(picks) == 3
    near = np.stack([retoned(src.test.images[i]) for i in picks])
    assert not any(np.array_equal(a, b) for a, b in zip(near, src.test.images[picks]))
    again = R.shifted_set("mnist", "printed_digits", _inject(tgt, Split(src.test.labels[picks], None, near)), src)
    assert again.dropped == base.dropped + 3 and not set(picks.tolist()) & set(again.indices.tolist())


# ----------------------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def image_split():
    return get_task("mnist").load().test.subset(np.arange(40))


@pytest.fixture(scope="module")
def text_split():
    return get_task("movie_sentiment").load().test.subset(np.arange(40))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corruptions_are_seeded_change_the_inputs_and_keep_the_labels(corruption, image_split, text_split):
    split = image_split if corruption in IMAGE_CORRUPTIONS else text_split
    a = R.corrupt(split, corruption, 3, seed=0)
    b = R.corrupt(split, corruption, 3, seed=0)
    assert a.labels.tolist() == split.labels.tolist() and len(a) == len(split)
    if corruption in IMAGE_CORRUPTIONS:
        assert a.texts is None and a.images.dtype == np.uint8 and a.images.shape == split.images.shape
        np.testing.assert_array_equal(a.images, b.images)
        changed = [not np.array_equal(x, y) for x, y in zip(a.images, split.images)]
        assert sum(changed) == len(split), corruption  # every image
        # a higher severity moves the pixels further (blur: at least as far)
        d = [np.abs(R.corrupt(split, corruption, s).images.astype(float) - split.images).mean() for s in SEVERITIES]
        assert all(x <= y + 1e-9 for x, y in zip(d, d[1:])) and d[-1] > d[0], d
    else:
        assert a.images is None and a.texts == b.texts
        changed = [x != y for x, y in zip(a.texts, split.texts)]
        assert sum(changed) >= 0.8 * len(split), (corruption, sum(changed))
        if corruption == "typos":
            assert R.corrupt(split, corruption, 3, seed=1).texts != a.texts
            assert all(len(x) <= len(y) for x, y in zip(a.texts, split.texts))  # swaps and drops only
        else:
            assert [x.lower() for x in a.texts] == [y.lower() for y in split.texts]
    if corruption == "gaussian_noise":
        assert not np.array_equal(R.corrupt(split, corruption, 3, seed=1).images, a.images)


def test_corruptions_refuse_what_does_not_apply(image_split, text_split):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        R.corrupt(image_split, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
        R.corrupt(image_split, "blur", 6)
    with pytest.raises(ValueError, match="typos corrupts texts, and this split has none"):
        R.corrupt(image_split, "typos", 1)
    assert R.corruptions_for(image_split) == IMAGE_CORRUPTIONS and R.corruptions_for(text_split) == TEXT_CORRUPTIONS
    vl = get_task("mnist_digit_question").load().test.subset([0, 1])
    assert R.corruptions_for(vl) == CORRUPTIONS


# ----------------------------------------------------------------------------- scoring a tuned model


@pytest.fixture(scope="module")
def shipped_expert():
    """An already-tuned model: the shipped study's full-data expert (loaded, not trained)."""
    from pathlib import Path

    def load(task, backbone):
        from pitune_core.model.experts import load_expert

        return load_expert(Path("precomputed/experts/lora") / task, backbone)[0]
    return load


def test_scoring_an_image_model_on_every_set(backbone, shipped_expert):
    from pitune_core.model.experts import evaluate, prepare_task
    from pitune_core.tune import robustness as T

    model = shipped_expert("sklearn_digits", backbone)
    rows = T.score_robustness("sklearn_digits", backbone, model, max_examples=12)
    assert [(r["set"], r["source"], r["corruption"]) for r in rows] == (
        [("in-distribution", None, None)] + [("shifted", s, None) for s in R.shift_sources("sklearn_digits")]
        + [("corrupted", None, c) for c in IMAGE_CORRUPTIONS])
    assert all(r["n"] == 12 and 0 <= r["value"] <= 1 and r["severity"] in (None, 3) for r in rows)
    # the in-distribution row is the model's score on those test examples, as the run scores it
    _, t = prepare_task(get_task("sklearn_digits"), backbone)
    idx = T._pick(len(t["test"]), 12, 0)
    assert rows[0]["value"] == pytest.approx(evaluate(backbone, model, t["test"].subset(idx), get_task("sklearn_digits"))["accuracy"])
    assert rows[0]["value"] > 0.6  # a tuned expert
    # deterministic: sets built afresh (not the cache) give the same rows
    T._SETS.clear()
    again = T.score_robustness("sklearn_digits", backbone, model, corruptions=("gaussian_noise",), max_examples=12)
    assert again == rows[:5]
    # contrast at the worst severity leaves the tuned expert little to read
    worst = T.score_robustness("sklearn_digits", backbone, model, shifted=False, corruptions=("contrast",),
                               severities=(5,), max_examples=12)
    assert worst[1]["value"] < rows[0]["value"]


def test_scoring_a_text_model_and_a_target_without_a_shift(backbone, shipped_expert):
    from pitune_core.tune import robustness as T

    model = shipped_expert("movie_sentiment", backbone)
    rows = T.score_robustness("movie_sentiment", backbone, model, max_examples=40)
    by = {(r["set"], r["source"] or r["corruption"]): r for r in rows}
    assert {k for k in by if k[0] == "shifted"} == {("shifted", s) for s in R.shift_sources("movie_sentiment")}
    # the shipped trunk is uncased: casing is a control and must not move the score; typos are real changes
    assert by[("corrupted", "casing")]["value"] == by[("in-distribution", None)]["value"]
    assert by[("corrupted", "typos")]["n"] == 40
    # no family partner: one row that says so, no score
    model = shipped_expert("friends_speaker", backbone)
    rows = T.score_robustness("friends_speaker", backbone, model, corruptions=(), max_examples=10)
    assert [r["set"] for r in rows] == ["in-distribution", "shifted"]
    assert rows[1]["value"] is None and rows[1]["n"] == 0 and rows[1]["note"].endswith("no shifted score")
    with pytest.raises(ValueError, match="unknown corruption"):
        T.robustness_sets("friends_speaker", backbone, corruptions=("fog",))


# ----------------------------------------------------------------------------- summaries


def _rows(ind, shifted, corrupted):
    out = [{"set": "in-distribution", "value": ind, "source": None, "corruption": None, "severity": None}]
    out += [{"set": "shifted", "value": v, "source": f"s{i}", "corruption": None, "severity": None, "note": None}
            for i, v in enumerate(shifted)]
    out += [{"set": "corrupted", "value": v, "source": None, "corruption": f"c{i}", "severity": 3}
            for i, v in enumerate(corrupted)]
    return out


def test_effective_robustness_and_the_paired_difference():
    from pitune_core.study import robustness as S

    e = S.effective_robustness(_rows(0.9, [0.6, 0.7], [0.8, 0.5]))
    assert e["in_distribution"] == pytest.approx(90) and e["shifted"] == pytest.approx(65)
    assert e["shifted_gap"] == pytest.approx(-25) and e["corrupted_gap"] == pytest.approx(-25)
    assert e["by_source"] == {"s0": pytest.approx(60), "s1": pytest.approx(70)}
    none = S.effective_robustness(_rows(0.9, [], [0.8]) + [{"set": "shifted", "value": None, "note": "x: no shifted score"}])
    assert none["shifted"] is None and none["shifted_gap"] is None and none["no_shift"] == "x: no shifted score"
    # approach a loses 5 points less off-distribution than b on every target (+ noise): CI above 0
    rng = np.random.default_rng(0)
    a, b = {}, {}
    for t in range(8):
        drop = rng.uniform(0.1, 0.3)
        a[f"t{t}"] = [_rows(0.8, [0.8 - drop + 0.05 + rng.normal(0, 0.005)], [0.7])]
        b[f"t{t}"] = [_rows(0.8, [0.8 - drop], [0.7]), _rows(0.8, [0.8 - drop], [0.7])]
    p = S.paired_robustness(a, b, "shifted_gap")
    assert p.n == 8 and p.mean == pytest.approx(5, abs=0.5) and p.ci_low > 0
    assert S.paired_robustness(a, {"t0": b["t0"]}) is None
    with pytest.raises(ValueError, match="unknown measure"):
        S.paired_robustness(a, b, "ood")


# ----------------------------------------------------------------------------- the transfer run's hook


@pytest.mark.slow
def test_a_transfer_run_records_robustness_only_when_asked(tmp_path, backbone, monkeypatch):
    import functools

    from pitune_core.spec.configs import TransferConfig
    from pitune_core.study.sources import load_sources
    from pitune_core.tune import robustness as T
    from pitune_core.tune.run import DEFAULTS, run_transfer

    assert DEFAULTS["robustness"] is False and TransferConfig.default_of("robustness") is False
    with pytest.raises(ValueError, match="robustness"):
        TransferConfig.from_dict({"target": "movie_sentiment", "robustness": "yes"})
    monkeypatch.setattr(T, "score_robustness", functools.partial(T.score_robustness, max_examples=16))  # fast
    sources = load_sources("precomputed", "lora")
    stages = []
    config = {"target": "movie_sentiment", "sources": "amazon_sentiment", "shots": 1, "seed": 0,
              "study": "precomputed", "own_expert": False, "robustness": True}
    result = run_transfer(config, sources, tmp_path / "run", on_step=lambda p: stages.append(p.get("stage")),
                          backbone=backbone)
    rows = result["robustness"]
    assert rows == json.loads((tmp_path / "run" / "metrics.json").read_text())["robustness"]
    assert [(r["set"], r["source"] or r["corruption"]) for r in rows] == (
        [("in-distribution", None)] + [("shifted", s) for s in R.shift_sources("movie_sentiment")]
        + [("corrupted", c) for c in TEXT_CORRUPTIONS])
    assert all(r["n"] == 16 and 0 <= r["value"] <= 1 for r in rows)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["robustness"] is True
    assert T.ROBUSTNESS_STAGE in stages
    # the tuned model is what was scored: its in-distribution row is its score on those 16 test examples
    from pitune_core.model.experts import evaluate, load_expert, prepare_task

    model = load_expert(tmp_path / "run" / "expert", backbone)[0]
    _, t = prepare_task(get_task("movie_sentiment"), backbone)
    sub = t["test"].subset(T._pick(len(t["test"]), 16, 0))
    assert rows[0]["value"] == pytest.approx(evaluate(backbone, model, sub, get_task("movie_sentiment"))["accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("approach", ["arrow", "target-only"])
def test_a_comparison_run_scores_its_final_model_only_when_asked(approach, backbone):
    from pitune_core.study.sources import load_sources
    from pitune_core.tune.baselines import run_method

    sources = load_sources("precomputed", "lora")
    row = run_method(approach, "movie_sentiment", sources, backbone, shots=1, seed=0,
                     robustness={"shifted": False, "corruptions": ()})
    # the in-distribution row on the whole test split is the run's own test score: the final model was scored
    assert [r["set"] for r in row["robustness"]] == ["in-distribution"]
    assert row["robustness"][0]["value"] == pytest.approx(row["score"]) and row["robustness"][0]["n"] > 100
    assert "model" not in row
    if approach == "arrow":  # training-free: cheap to run again without the option (the row is as before)
        assert "robustness" not in run_method("arrow", "movie_sentiment", sources, backbone, shots=1, seed=0)


def test_a_vision_language_pair_keeps_its_image_under_a_text_corruption(backbone):
    import torch

    from pitune_core.tune import robustness as T

    sets = T.robustness_sets("mnist_digit_question", backbone, shifted=False, corruptions=("typos",), max_examples=8)
    ind, typo = sets
    assert typo.corruption == "typos" and typo.tensors.labels.tolist() == ind.tensors.labels.tolist()
    assert torch.equal(typo.tensors.visual, ind.tensors.visual) and typo.tensors.texts != ind.tensors.texts
    assert {s.set for s in T.robustness_sets("mnist_digit_question", backbone, corruptions=("typos",),
                                             max_examples=8)} == {"in-distribution", "shifted", "corrupted"}
