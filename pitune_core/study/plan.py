"""What a study runs: its stages and the plan (tasks, budgets, seeds, targets, approaches).

The plan is data; :mod:`pitune_core.study.pipeline` executes it.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("backbone", "experts", "ablation", "embeddings", "predict", "groundtruth", "protocol")
from pitune_core.spec.vocab import EMBEDDINGS  # noqa: E402,F401  (re-exported: the study computes each)

#: the committed plan files the full study runs (``plans/``) on the family suite (DATA_VERSION 3): the
#: relatedness pilot of issue 27 (``--stage relatedness`` reads it); the pre-registered ground truth and
#: few-shot comparison of this suite are the next issue's (``None``: not yet planned). The previous
#: suite's plans (``plans/transfer-v2.json``, ``plans/few-shot-v2.json``) belong to ``studies/v2``.
GROUNDTRUTH_PLAN = "plans/relatedness-pilot.json"
PROTOCOL_PLAN: str | None = None


@dataclass
class StudyPlan:
    """The study's foundation (projector, experts, embeddings, graphs) and the committed plan files of
    its two measurements; ``None`` skips that measurement. The plan files fix their own targets, seeds,
    budgets and approaches, so the study's evidence is exactly what they pre-registered."""

    tasks: list[str]
    extra_methods: dict[str, list[str]]
    align_pairs_per_task: int = 400
    align_epochs: int = 6
    expert_max_steps: int = 600
    fisher_n: int = 64
    groundtruth_plan: str | None = None
    stability_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    protocol_plan: str | None = None
    seed: int = 0


def full_plan() -> StudyPlan:
    from pitune_core.data.tasks import list_tasks  # lazy: loads numpy (the CLI imports this module for its choices)

    subset = ["movie_sentiment", "mnist"]  # one language and one vision task: the other expert types' check
    return StudyPlan(tasks=[t.name for t in list_tasks()], extra_methods={"prompt": subset, "ia3": subset},
                     groundtruth_plan=GROUNDTRUTH_PLAN, protocol_plan=PROTOCOL_PLAN)


def quick_plan() -> StudyPlan:
    """A small real study for CI and smoke tests (minutes on 2 cores), with its own small plan files."""
    tasks = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "textures", "emoji_group_question",
             "snippet_face_mood"]
    return StudyPlan(tasks=tasks, extra_methods={"ia3": tasks[:3]}, align_pairs_per_task=64, align_epochs=1,
                     expert_max_steps=20, fisher_n=8, groundtruth_plan="plans/quick/transfer.json",
                     stability_sizes=(4,), protocol_plan="plans/quick/few-shot.json")
