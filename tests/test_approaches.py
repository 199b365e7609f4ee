"""Common checks for every approach (as scikit-learn's ``check_estimator`` does for estimators).

Each of the spec's approaches (:data:`pitune_core.spec.vocab.APPROACHES`) runs on a tiny real target
(2 shots per class, a 4-step budget, the shipped study's LoRA library) and its result is checked:
the result row (and its round trip through results.csv), the step budget (the same for every
approach, split between the own expert and tuning, never exceeded), and the sources it records
(the top-k of the shots-only ranking, k random ones, the whole library, or none, as its record says).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pitune_core.spec.vocab import APPROACH_RECORDS, APPROACHES, APPROACHES_BY_NAME

TARGET, SHOTS, SEED, K, STEPS = "textures", 2, 0, 2, 4


@pytest.fixture(scope="module")
def tiny(backbone):
    """The shipped study's LoRA sources, a 4-step budget for every approach, and the shots-only ranking of
    the target's sources (the own expert trained on the same budget share as in every run)."""
    from pitune_core.data.tasks import get_task
    from pitune_core.model.experts import TrainConfig
    from pitune_core.study.protocol import load_study_sources
    from pitune_core.tune import baselines

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baselines, "budget_for", lambda shots, seed: TrainConfig(seed=seed, min_steps=STEPS,
                                                                            max_steps=STEPS))
        sources = load_study_sources("precomputed", "lora")
        own_steps, _ = baselines.split_budget(STEPS, baselines.Recipe())
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            side = baselines.target_side(TARGET, sources, backbone, "lora", SHOTS, SEED, own_steps, tmp)
        num_train = len(get_task(TARGET).load().few_shot(SHOTS, seed=SEED))
        yield {"sources": sources, "ranking": [n for n, _ in side.ranking], "own_steps": own_steps,
               "num_train": num_train, "metric": get_task(TARGET).metric}


def test_the_checks_cover_every_approach_of_the_spec():
    from pitune_core.tune import baselines

    assert baselines.APPROACHES is APPROACHES and len(APPROACHES) == len(APPROACH_RECORDS) == 17
    covered = {p.values[0] for p in _PARAMS}
    assert covered == set(APPROACHES)


_PARAMS = [pytest.param(a, id=a) for a in APPROACHES]


@pytest.fixture(scope="module")
def rows_without_cache():
    """The common check's rows by approach (run without a side cache), for the cache test to compare with
    instead of running them again."""
    return {}


@pytest.mark.parametrize("name", [p.values[0] for p in _PARAMS])
def test_every_approach_runs_and_accounts_for_its_budget_and_sources(name, tiny, backbone, tmp_path,
                                                                     rows_without_cache):
    from pitune_core.study.read.results import read_results, result_row, write_results
    from pitune_core.tune import baselines

    rec = APPROACHES_BY_NAME[name]
    src = tiny["sources"]
    r = baselines.run_method(name, TARGET, src, backbone, method="lora", k=K, shots=SHOTS, seed=SEED,
                             workdir=tmp_path)
    rows_without_cache[name] = r

    # the result row: who, what, and a score in range
    assert (r["target"], r["approach"], r["method"], r["shots"], r["seed"], r["k"]) == (
        TARGET, name, "lora", SHOTS, SEED, K)
    assert r["metric"] == tiny["metric"] and r["num_train"] == tiny["num_train"]
    assert 0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["score"]) and r["time_s"] >= 0
    row = result_row(r)
    write_results(tmp_path / "results.csv", [row])
    back = read_results(tmp_path / "results.csv")
    assert len(back) == 1 and back[0]["approach"] == name and back[0]["shots"] == SHOTS
    assert back[0]["sources"] == r["sources"] and back[0]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-4)
    assert list(tmp_path.glob("pitune-run-*")) == []  # its temporary folder is gone

    # the budget, equal by construction: every approach that tunes does so for the whole shared budget
    # after selection; a selecting approach's own expert is its selection cost, counted apart and the same
    # for every one of them
    steps = r["steps"]
    assert set(steps) == {"select", "tune", "total"} and steps["total"] == steps["select"] + steps["tune"]
    if rec.own_expert_first:  # the selection's measured cost, inside the run's time
        assert 0 <= r["select_time_s"] <= r["time_s"] and r["side_reused"] is False
    else:
        assert "select_time_s" not in r and "side_reused" not in r
    assert steps["select"] == (tiny["own_steps"] if rec.own_expert_first else 0)
    assert steps["tune"] == (STEPS if rec.tunes else 0), f"{name} must tune for the whole shared budget"
    if name.startswith("lorahub"):
        assert r["search_evals"] == baselines.LORAHUB_EVALS and len(r["weights"]) == len(r["sources"])

    # the sources it records
    library = src.library(TARGET)
    chosen = r["sources"]
    assert TARGET not in chosen and not set(chosen) & set(src.gated) and set(chosen) <= set(src.expert_dirs)
    if rec.ranks_sources:
        want = tiny["ranking"][:1] if name == "best-single" else tiny["ranking"][:K]
        assert chosen == want and r["selection"] == "shots"
    elif name == "random-k":
        assert len(chosen) == K == len(set(chosen)) and r["selection"] == "none"
    elif name in ("all-experts", "lorahub", "lorahub-tuned", "arrow"):
        assert chosen == library
    else:  # trains on the target alone
        assert chosen == [] and not rec.own_expert_first
    if rec.interpolates:
        assert r["own_expert"] is rec.mixes_own
    assert rec.mixes_own == (name in ("pi-tuning", "pi-tuning-weights-only", "pi-tuning-global", "random-k",
                                      "all-experts"))  # the paper's recipe keeps it; the ablation and averages not


@pytest.fixture(scope="module")
def side_cache(tmp_path_factory):
    from pitune_core.tune.side_cache import SideCache

    return SideCache(tmp_path_factory.mktemp("sides"), "tiny-test-context")


@pytest.mark.parametrize("name", ["pi-tuning", "best-single"])  # interpolation and init paths; built, then reused
def test_a_reused_target_side_gives_the_same_run(name, tiny, backbone, side_cache, tmp_path, rows_without_cache):
    """tune/side_cache.py: the approaches of a cell share one target side. A run with the cache (the first
    builds the side, the others reuse it) gives the row a run without it gives, and reports the side's
    build time as its selection cost either way."""
    from pitune_core.tune import baselines

    kw = dict(method="lora", k=K, shots=SHOTS, seed=SEED, workdir=tmp_path)
    plain = rows_without_cache.get(name) or baselines.run_method(name, TARGET, tiny["sources"], backbone, **kw)
    first = not any(side_cache.folder.glob("*/side.json"))
    cached = baselines.run_method(name, TARGET, tiny["sources"], backbone, side_cache=side_cache, **kw)
    same = ("accuracy", "score", "sources", "weights", "steps", "selection", "num_train")
    assert {k: cached.get(k) for k in same} == {k: plain.get(k) for k in same}
    assert cached["side_reused"] is (not first) and plain["side_reused"] is False
    (folder,) = [p.parent for p in side_cache.folder.glob("*/side.json")]  # one side for the whole cell
    built = json.loads((folder / "side.json").read_text())["time_s"]
    assert cached["select_time_s"] == built and cached["time_s"] >= built
    assert list(tmp_path.glob("pitune-run-*")) == []


def test_a_side_is_keyed_by_the_run_examples_themselves():
    """A changed example of the run's shots (text, image features or label) is another side, never a reused one."""
    import torch

    from pitune_core.model.backbone import TaskTensors
    from pitune_core.tune.baselines import Recipe
    from pitune_core.tune.side_cache import SideCache, data_digest

    def tensors(texts=("a", "b"), visual=None, labels=(0, 1)):
        return TaskTensors(list(texts) if texts is not None else None, visual, torch.tensor(labels))

    base = data_digest(tensors())
    assert base == data_digest(tensors())
    assert len({base, data_digest(tensors(texts=("a", "c"))), data_digest(tensors(texts=("ab", ""))),
                data_digest(tensors(labels=(1, 0)))}) == 4
    assert data_digest(tensors(None, torch.zeros(2, 3))) != data_digest(tensors(None, torch.ones(2, 3)))

    class Src:  # what the key reads of a study's sources
        expert_dirs, gated = {"x": "x", "y": "y"}, {}

        def method_overrides(self):
            return {}

    cache = SideCache(Path("unused"), "ctx")
    args = ("t", Src(), "bb", "lora", 4, 0, 15, Recipe())
    assert cache.key(*args, data=base) == cache.key(*args, data=base)
    assert cache.key(*args, data=base) != cache.key(*args, data=data_digest(tensors(texts=("a", "c"))))
    assert cache.key(*args, data=base) != SideCache(Path("unused"), "other context").key(*args, data=base)


def test_a_damaged_stored_side_is_not_read(tmp_path):
    """A side.json that is not whole (a field missing or of the wrong kind), or whose own expert lies outside
    its folder, reads as no side, so it is rebuilt rather than half-read."""
    from pitune_core.tune.side_cache import SIDE_FILE, SIDE_FORMAT, _load

    folder = tmp_path / "k"
    (folder / "own").mkdir(parents=True)
    good = {"format": SIDE_FORMAT, "own": "own", "own_steps": 3, "ranking": [["a", 0.5]], "selection": "shots",
            "num_train": 4, "time_s": 1.5}
    (folder / SIDE_FILE).write_text(json.dumps(good))
    side, took = _load(folder)
    assert (side.own_steps, side.ranking, took) == (3, [("a", 0.5)], 1.5)
    for bad in ({k: v for k, v in good.items() if k != "ranking"}, {**good, "own_steps": "x"},
                {**good, "ranking": 5}, {**good, "own": "../.."}, {**good, "format": "other"}):
        (folder / SIDE_FILE).write_text(json.dumps(bad))
        assert _load(folder) is None, bad
