"""The task catalogue: :func:`get_task` and :func:`list_tasks` over the built-in suite and the user's own tasks.

Every task is label-as-text: each class has a verbalisation ("a photo of a sneaker", "positive")
that the backbone encodes, so any expert can score any task and zero-shot works before tuning.
The suite's tasks and their builders are in :mod:`pitune_core.data.suite`, the containers, the task type
and the cache in :mod:`pitune_core.data.taskdata`, the cross-task dedup in :mod:`pitune_core.data.dedup`,
the user's tasks in :mod:`pitune_core.data.user_tasks`; their names are importable from here too.

Usage, with ``get_task`` imported from here::

    task = get_task("movie_sentiment")
    data = task.load()                    # TaskData with .train / .val / .test splits
    idx = data.few_shot(k=16, seed=0)     # 16 training examples per class
"""

from __future__ import annotations

import difflib

from pitune_core.data.dedup import apply_dedup
from pitune_core.data.user_tasks import find_user_task, list_user_tasks, user_task_names
from pitune_core.spec.vocab import MODALITIES  # noqa: F401  (the spec owns the list)

# the names of the layers below, importable from here as they were before data/tasks.py was split (issue 30)
from pitune_core.data.suite import (  # noqa: F401
    BBC, DIGITS, DIGIT_WORDS, EMOJI_GROUPS, EMOJI_QUESTION, EMOJI_SIZE, FACE_MOODS, FACE_SIZE, FAMILIES,
    FASHION, FASHION_COARSE, FASHION_COARSE_OF, FASHION_NOUN, FASHION_SLICES, FOOTWEAR, FRIENDS, MATCH,
    MATCH_VERBAL, MOOD_FACES, NEWSGROUP_COARSE, POLARITY, POLARITY_VERBAL, REUTERS, SCIENCE, SENTIMENT, TASKS,
    TEXTURES, TUX_CATEGORIES, TUX_SIZE, TUX_VERBAL, drawn_faces, emoji_catalogue, emoji_images, number_in_words,
    tux_stamps)
from pitune_core.data.taskdata import (  # noqa: F401
    DATA_VERSION, RawExamples, SPLITS, Split, TaskData, TaskDataError, TaskSpec, UnknownTaskError, load_cached,
    load_raw_task_data, make_splits)


def load_task_data(spec: TaskSpec) -> TaskData:
    """The task's splits, with cross-task duplicates removed from val/test (:mod:`pitune_core.data.dedup`)."""
    return apply_dedup(load_raw_task_data(spec))


def list_tasks(modality: str | None = None, include_user: bool = False) -> list[TaskSpec]:
    """The built-in suite (what a study runs on); ``include_user`` adds the user's own tasks
    (:mod:`pitune_core.data.user_tasks`) after it."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    builtin = [t for t in TASKS.values() if modality is None or t.modality == modality]
    if not include_user:
        return builtin
    return builtin + list_user_tasks(modality)


def get_task(name: str) -> TaskSpec:
    """A built-in task, else a user task of that name (built-in names always win)."""
    try:
        return TASKS[name]
    except KeyError:
        user = find_user_task(name)
        if user is not None:
            return user
        close = difflib.get_close_matches(name, [*TASKS, *user_task_names()], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}.{hint} Run `pitune tasks` to list the "
                               f"{len(TASKS)} tasks.") from None
