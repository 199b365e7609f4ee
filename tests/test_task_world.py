"""The task world of issue 27: families declared before anything is measured, evaluation splits big
enough to see a point, no image of an evaluation split in another task's training data (by image
alone), and a library that offers only experts that learned their task."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pitune_core.common import ADMISSION_MARGIN, admission
from pitune_core.data import dedup
from pitune_core.data.tasks import FAMILIES, MODALITIES, TASKS, Split, number_in_words


# ----------------------------------------------------------------------------- families

def test_the_suite_has_families_across_modalities_and_a_control():
    assert len(TASKS) >= 30
    sizes = Counter(t.family for t in TASKS.values())
    assert set(sizes) == set(FAMILIES)
    assert sum(n >= 3 for n in sizes.values()) >= 6, sizes
    modalities = {f: {t.modality for t in TASKS.values() if t.family == f} for f in FAMILIES}
    cross = [f for f, m in modalities.items() if len(m) >= 2 and f != "control"]
    assert len(cross) >= 4, modalities
    assert all(m <= set(MODALITIES) for m in modalities.values())
    assert sizes["control"] >= 3
    # tasks of a cross-modal family share label meaning: they declare the concepts they share
    for f in cross:
        assert all(t.concepts for t in TASKS.values() if t.family == f), f


def test_task_info_carries_family_and_concepts():
    info = TASKS["mnist_digit_question"].info()
    assert info["family"] == "digits" and info["modality"] == "vision-language"
    assert info["concepts"] == [str(i) for i in range(10)]


def test_evaluation_splits_are_big_enough_to_see_a_point():
    """From the committed duplicate table (sizes of the raw splits minus what dedup removes): every
    test split keeps >= 150 examples, and >= 300 where the source has that many."""
    committed = json.loads(dedup.TABLE_PATH.read_text())
    assert set(committed["tasks"]) == set(TASKS)
    small = {}
    for name, row in committed["tasks"].items():
        test = row["sizes"]["test"] - row["removed_count"]["test"]
        if test < 150:
            small[name] = test
    assert not small, small
    assert sum(row["sizes"]["test"] - row["removed_count"]["test"] >= 300
               for row in committed["tasks"].values()) >= 20


def test_number_words():
    assert number_in_words(0) == "zero"
    assert number_in_words(17) == "seventeen"
    assert number_in_words(427) == "four hundred and twenty-seven"
    assert number_in_words(90_005) == "ninety thousand and five"
    assert number_in_words(312_640) == "three hundred and twelve thousand six hundred and forty"
    with pytest.raises(ValueError):
        number_in_words(1_000_000)


# ----------------------------------------------------------------------------- dedup by image alone

def _img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_a_near_duplicate_image_shares_its_near_key_and_a_different_one_does_not():
    from PIL import Image

    a = np.kron(_img(1, 8), np.ones((4, 4, 1), dtype=np.uint8))  # 32x32, blocky
    resized = np.asarray(Image.fromarray(a).resize((48, 48), Image.NEAREST))
    brighter = np.clip(a.astype(int) + 6, 0, 255).astype(np.uint8)
    assert dedup.image_hash(a) != dedup.image_hash(resized)
    assert dedup.near_image_hash(a) == dedup.near_image_hash(resized) == dedup.near_image_hash(brighter)
    assert dedup.near_image_hash(a) != dedup.near_image_hash(np.kron(_img(2, 8), np.ones((4, 4, 1), np.uint8)))


class _Spec:
    def __init__(self, name, modality):
        self.name, self.modality = name, modality


def _keys(split: Split):
    return dedup.example_keys(split), dedup.component_keys(split)


def test_an_image_in_another_tasks_training_split_is_removed_whatever_text_comes_with_it():
    shared, other = _img(3), _img(4)
    sp = lambda texts, images: Split(labels=np.zeros(len(images), np.int64), texts=texts, images=np.stack(images))
    splits = {
        # a vision-language task whose test pairs the shared image with a new caption
        "vl_a": {"train": sp(["Is this a cat?"], [_img(5)]), "val": sp(["Is this a dog?"], [other]),
                 "test": sp(["A brand new caption.", "Is this a cat?"], [shared, _img(6)])},
        # a vision task that trained on the shared image; a second VL task with the same question template
        "vis_b": {"train": Split(np.zeros(1, np.int64), None, np.stack([shared])),
                  "val": Split(np.zeros(1, np.int64), None, np.stack([_img(7)])),
                  "test": Split(np.zeros(1, np.int64), None, np.stack([_img(8)]))},
        "vl_c": {"train": sp(["Is this a cat?"], [_img(9)]), "val": sp(["x"], [_img(10)]),
                 "test": sp(["y"], [_img(11)])},
        # a language task trained on a sentence that vl_a's val has with an image
        "lang_d": {"train": Split(np.zeros(1, np.int64), ["Is this a dog?"], None),
                   "val": Split(np.zeros(1, np.int64), ["z"], None), "test": Split(np.zeros(1, np.int64), ["w"], None)},
    }
    specs = [_Spec("vl_a", "vision-language"), _Spec("vis_b", "vision"), _Spec("vl_c", "vision-language"),
             _Spec("lang_d", "language")]
    table = dedup.compute_table(specs, lambda s: {k: _keys(v) for k, v in splits[s.name].items()})
    row = table["tasks"]["vl_a"]
    assert row["removed_count"] == {"val": 1, "test": 1}
    # the shared image is removed although its text is new; the question template shared with vl_c
    # alone removes nothing (test's second example stays); the sentence lang_d trained on is removed
    assert row["removed"]["test"] == [dedup.example_keys(splits["vl_a"]["test"])[0]]
    assert row["by_kind"]["test"] == {"image": 1, "near_image": 0, "text": 0}
    assert row["by_kind"]["val"] == {"image": 0, "near_image": 0, "text": 1}
    assert row["by_source"] == {"vis_b": {"val": 0, "test": 1}, "lang_d": {"val": 1, "test": 0}}
    assert table == dedup.compute_table(specs[::-1], lambda s: {k: _keys(v) for k, v in splits[s.name].items()})


def test_loaded_image_splits_share_no_image_with_another_tasks_training_split():
    """On the real suite: no val/test image of a digit task is (or nearly is) a training image of
    another digit task (the family shares sources, each task its own pool)."""
    names = ["mnist", "mnist_digit_question", "opencv_digits", "opencv_digit_question"]
    from pitune_core.data.tasks import get_task, load_raw_task_data

    train = {n: set(dedup.component_keys(load_raw_task_data(get_task(n)).train)["near_image"]) for n in names}
    for n in names:
        data = get_task(n).load()
        for s in ("val", "test"):
            near = set(dedup.component_keys(data.split(s))["near_image"])
            for o in names:
                if o != n:
                    assert not near & train[o], (n, s, o)


# ----------------------------------------------------------------------------- the library's gate

def _meta(val, zs, maj, metric="accuracy", where="val"):
    m = {"val": {metric: val}}
    m[f"zero_shot_{where}"] = {metric: zs}
    m[f"majority_{where}"] = {metric: maj}
    return {"headline_metric": metric, "metrics": m}


def test_admission_needs_a_margin_over_zero_shot_and_majority_on_val():
    ok, why = admission(_meta(0.80, 0.60, 0.50))
    assert ok and why.startswith("admitted")
    ok, why = admission(_meta(0.503, 0.41, 0.503))  # = majority: an expert that learned nothing
    assert not ok and "did not learn its task" in why and "majority 50.3" in why
    ok, _ = admission(_meta(0.60 + ADMISSION_MARGIN - 1e-9, 0.60, 0.2))
    assert not ok
    ok, why = admission(_meta(0.9, 0.1, 0.1, where="test"))  # written before val baselines existed
    assert ok and "predates val baselines" in why
    for bad in ({}, {"metrics": {}}, {"metrics": {"val": {"accuracy": float("nan")}}}, None):
        assert admission(bad)[0] is False
    assert admission(_meta(0.9, 0.1, 0.1, metric="macro_f1"))[0]


def test_a_degenerate_expert_is_offered_as_a_source_by_no_path(tmp_path, capsys):
    """Plant an expert that learned nothing (val = majority) into a copy of the shipped study: it stays
    visible, marked with its reason, and every path that picks sources passes it over."""
    import csv
    from pathlib import Path

    from studycopy import copy_without_measurements

    from pitune_core.cli.main import main
    from pitune_core.study.manifest import register_files
    from pitune_core.study.outputs import _write_expert_summary
    from pitune_core.study.read.reader import Study
    from pitune_core.study.sources import admitted_experts, load_sources
    from pitune_core.study.transfer import pair_jobs
    from pitune_core.tune.baselines import resolve_sources
    from pitune_core.tune.interpolation import InterpolationError

    study = copy_without_measurements(Path("precomputed"), tmp_path / "s")
    before = load_sources(study, "lora")
    target = sorted(before.expert_dirs)[0]
    victim = before.top_k(target, 1)[0][0]
    meta_p = Path(before.expert_dirs[victim]) / "pitune_expert.json"
    meta = json.loads(meta_p.read_text())
    metric = meta["headline_metric"]
    meta["metrics"]["majority_val"] = {metric: meta["metrics"]["val"][metric]}
    meta["metrics"]["zero_shot_val"] = {metric: 0.0}
    meta_p.write_text(json.dumps(meta))
    with open(study / "experts" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    methods: dict[str, list[str]] = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r["task"])
    _write_expert_summary(study, methods)
    assert register_files(study, [meta_p, study / "experts" / "summary.csv"])

    # runs, the protocol, placement, LoraHub / Arrow libraries: Sources
    sources = load_sources(study, "lora")
    assert victim not in sources.expert_dirs and "did not learn its task" in sources.gated[victim]
    assert victim not in [n for n, _ in sources.top_k(target, 3)]
    assert victim not in sources.library(target)
    with pytest.raises(InterpolationError, match=f"{victim}: not offered as a source"):
        resolve_sources(target, sources, None, [victim])
    # the dashboard's graph top-k; the expert stays visible with its reason
    view = Study(study)
    assert victim not in [s.name for s in view.top_k(target, 3, "lora", "fisher")]
    assert "did not learn its task" in view.node_attrs("lora")[victim]["gated"]
    assert view.node_attrs("lora")[target]["gated"] is None
    # `pitune top-k`
    assert main(["top-k", target, "--study", str(study), "--k", "3"]) == 0
    out, err = capsys.readouterr()
    assert victim not in out and f"{victim} not offered as a source" in err
    # the transfer study's sources (a gated expert is a target only)
    dirs = {n: Path(d) for n, d in before.expert_dirs.items()}
    admitted, gated = admitted_experts(dirs)
    assert set(gated) == {victim}
    jobs = pair_jobs(sorted(dirs), (0,), sources=sorted(admitted))
    assert all(s != victim for _, s, _ in jobs) and any(t == victim for t, _, _ in jobs)


def test_the_relatedness_pilot_compares_same_family_with_other_families():
    from pitune_core.study.relatedness import pair_kind, relatedness

    info = {"a1": {"family": "a", "modality": "vision"}, "a2": {"family": "a", "modality": "language"},
            "b1": {"family": "b", "modality": "vision"}, "b2": {"family": "b", "modality": "language"},
            "c1": {"family": "c", "modality": "vision"}}
    assert pair_kind(info["a1"], info["a2"]) == "same_family"
    assert pair_kind(info["a1"], info["b1"]) == "same_modality_other_family"
    assert pair_kind(info["a1"], info["b2"]) == "cross_modality_other_family"
    tasks = list(info)
    rng = np.random.default_rng(0)
    G = np.full((3, 5, 5), np.nan)
    for i, t in enumerate(tasks):
        for j, s in enumerate(tasks):
            if s != t:
                G[:, i, j] = (6.0 if info[t]["family"] == info[s]["family"] else -1.0) + rng.normal(0, 0.5, 3)
    G[:, 4, :] = np.nan  # c1 was not a target
    res = relatedness(G, tasks, info)
    assert set(res["per_target"]) == {"a1", "a2", "b1", "b2"}
    assert res["kinds"]["same_family"]["pairs"] == 4 and res["kinds"]["same_family"]["mean"] > 5
    assert res["kinds"]["cross_modality_other_family"]["mean"] < 0
    d = res["difference"]
    assert d["targets"] == 4 and d["mean"] == pytest.approx(
        np.mean([res["per_target"][t]["same_family"] - res["per_target"][t]["other_family"] for t in res["per_target"]]))
    assert d["ci"][0] > 0 and res["verdict"].startswith("related tasks carry more transfer")
    # no family effect: the verdict says it is not shown
    flat = np.where(np.isfinite(G), rng.normal(0, 1, G.shape), np.nan)
    assert relatedness(flat, tasks, info)["verdict"].startswith("not shown")


def test_the_target_rule_drops_tasks_at_chance_and_at_ceiling():
    from pitune_core.study.targets import CEILING, target_rule

    rows = [{"task": "ok", "method": "lora", "expert": "0.85", "zero_shot": "0.5", "admitted": "1"},
            {"task": "chance", "method": "lora", "expert": "0.50", "zero_shot": "0.5", "admitted": "0",
             "gate": "not offered as a source: it did not learn its task (...)"},
            {"task": "ceiling", "method": "lora", "expert": str(CEILING), "zero_shot": "0.3", "admitted": "1"},
            {"task": "zs_ceiling", "method": "lora", "expert": "0.9", "zero_shot": "0.99", "admitted": "1"},
            {"task": "ok", "method": "ia3", "expert": "0.99", "zero_shot": "0.5", "admitted": "1"}]
    kept, dropped = target_rule(rows)
    assert kept == ["ok"]
    assert dropped["chance"].startswith("at chance: not offered")
    assert dropped["ceiling"].startswith("at ceiling: its full-data expert scores 97.0")
    assert dropped["zs_ceiling"].startswith("at ceiling: zero-shot scores 99.0")


def test_the_report_holds_each_image_expert_to_its_bar(tmp_path):
    from pitune_core.paths import StudyPaths
    from pitune_core.study.report import experts_section

    sp = StudyPaths(tmp_path)
    sp.blank_images.parent.mkdir(parents=True)
    sp.expert_summary.parent.mkdir(parents=True, exist_ok=True)
    head = "task,modality,method,metric,expert,zero_shot,majority,expert_accuracy,num_train,num_test,steps,train_time_s,peak_memory_mb,admitted,gate\n"
    sp.expert_summary.write_text(head + "\n".join([
        "digits_a,vision,lora,accuracy,0.91,0.1,0.1,0.91,1000,500,600,100,1000,1,admitted: ...",
        "digits_b,vision,lora,accuracy,0.88,0.1,0.1,0.88,1000,500,600,100,1000,1,admitted: ...",
        "vl_a,vision-language,lora,accuracy,0.80,0.5,0.5,0.80,1000,500,600,100,1000,1,admitted: ...",
        "vl_b,vision-language,lora,accuracy,0.60,0.5,0.5,0.60,1000,500,600,100,1000,0,not offered as a source: it did not learn its task (x)",
    ]) + "\n")
    sp.linear_probe.write_text("task,metric,probe_val,probe_test,probe_c\ndigits_a,accuracy,0.95,0.95,0.1\n"
                               "digits_b,accuracy,0.95,0.94,0.1\n")
    sp.blank_images.write_text("task,accuracy,accuracy_images_blanked,metric,score,score_images_blanked\n"
                               "vl_a,0.8,0.5,accuracy,0.8,0.5\nvl_b,0.6,0.55,accuracy,0.6,0.55\n")
    text = "\n".join(experts_section(tmp_path))
    assert "| digits_a | accuracy | 91.0 | 95.0 | -4.0 | yes |" in text
    assert "| digits_b | accuracy | 88.0 | 94.0 | -6.0 | **no** |" in text
    assert "| vl_a | 80.0 | 50.0 | 50.0 | 50.0 | +30.0 | yes |" in text
    assert "| vl_b | 60.0 | 50.0 | 50.0 | 55.0 | +5.0 | **no** |" in text
    assert "3 of 4 experts are admitted; not offered:" in text and "| vl_b | lora | not offered as a source" in text
    assert "3 of 4 tasks" in text and "| vl_b | at chance: not offered" in text


def test_snippet_face_mood_needs_the_face_and_the_snippet():
    """The sentiment family's vision-language task: a face that shows a mood decides the label (half of them
    against the snippet), a neutral face leaves it to the snippet, so the snippet alone explains about 3 in 4
    labels and every drawn face is its own image."""
    from pitune_core.data.suite import _build_snippet_face, _rt_polarity_pool

    texts, polarity, _ = _rt_polarity_pool()
    of = dict(zip(texts, polarity))
    raw = _build_snippet_face()
    snippet = np.array([of[t] for t in raw.texts])
    assert 0.70 < (raw.labels == snippet).mean() < 0.80
    assert 0.45 < raw.labels.mean() < 0.55
    assert len({im.tobytes() for im in raw.images}) == len(raw.images)


def test_superseding_a_source_moves_its_pairs_aside_and_unbinds_its_expert(tmp_path):
    from pitune_core.study.groundtruth import supersede_source

    rows = [{"target": "mnist", "source": s, "seed": 0, "score": 0.5, "key": "k"} for s in ("scratch", "a", "b")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "context.json").write_text(json.dumps({"backbone_id": "x", "experts": {"a": "1", "b": "2"}}))
    assert supersede_source(tmp_path, "a") == 1
    kept = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [r["source"] for r in kept] == ["scratch", "b"]
    assert [json.loads(line)["source"] for line in (tmp_path / "pairs-superseded.jsonl").read_text().splitlines()] == ["a"]
    assert json.loads((tmp_path / "context.json").read_text())["experts"] == {"b": "2"}
    assert supersede_source(tmp_path, "a") == 0  # idempotent
