import json

import numpy as np
import pytest

from pitune_core.cli.main import main
from pitune_core.data.tasks import MODALITIES, TaskDataError, UnknownTaskError, get_task, list_tasks


def test_suite_covers_three_modalities():
    tasks = list_tasks()
    counts = {m: len(list_tasks(m)) for m in MODALITIES}
    assert len(tasks) >= 30
    assert counts["language"] >= 8 and counts["vision"] >= 8 and counts["vision-language"] >= 6
    for t in tasks:
        assert len(t.labels) == len(t.verbalizers) >= 2
        assert t.metric in ("accuracy", "macro_f1")


@pytest.mark.parametrize("name", ["movie_sentiment", "sklearn_digits", "mnist_digit_question"])
def test_real_task_loads_with_fixed_splits(name):
    task = get_task(name)
    data = task.load()
    for split in ("train", "val", "test"):
        sp = data.split(split)
        assert len(sp) > 0
        assert sp.labels.min() >= 0 and sp.labels.max() < task.num_classes
        if task.modality != "vision":
            assert sp.texts is not None and len(sp.texts) == len(sp) and all(isinstance(t, str) for t in sp.texts)
        if task.modality != "language":
            assert sp.images is not None and sp.images.dtype == np.uint8 and sp.images.shape[-1] == 3
            assert sp.images.shape[0] == len(sp)
    # the cached copy gives the same splits
    again = task.load()
    np.testing.assert_array_equal(again.test.labels, data.test.labels)


def test_vision_language_examples_pair_real_images_with_text():
    data = get_task("mnist_digit_question").load()
    assert data.train.images.std() > 10  # real pictures, not blanks
    assert all(t.startswith("Is this the digit ") for t in data.train.texts)
    # both true and false pairs, roughly balanced
    assert 0.35 < data.train.labels.mean() < 0.65


def test_few_shot_is_seeded_and_per_class():
    data = get_task("sklearn_digits").load()
    a, b = data.few_shot(4, seed=1), data.few_shot(4, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.few_shot(4, seed=2))
    assert np.bincount(data.train.labels[a]).tolist() == [4] * 10


def test_too_many_shots_names_the_maximum():
    data = get_task("movie_sentiment").load()
    most = int(np.bincount(data.train.labels).min())
    with pytest.raises(TaskDataError, match=f"maximum shots for this task is {most}"):
        data.few_shot(most + 1)


def test_unknown_task_suggests_close_names():
    with pytest.raises(UnknownTaskError, match="movie_sentiment"):
        get_task("movie_sentimnt")


def test_cli_tasks_json(capsys):
    assert main(["tasks", "--json", "--modality", "vision-language"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 4
    for r in rows:
        assert r["modality"] == "vision-language"
        assert {"name", "num_classes", "num_train", "num_test"} <= set(r)
        assert r["num_train"] > 0 and r["num_test"] > 0


def test_cli_unknown_task_is_a_clear_error(capsys):
    assert main(["train-expert", "no_such_task"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
