"""What a study runs: its stages and the plan (tasks, budgets, seeds, targets, approaches).

The plan is data; :mod:`pitune_core.study.pipeline` executes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("backbone", "experts", "ablation", "embeddings", "predict", "transfer", "compare")
EMBEDDINGS = ("fisher", "weights", "data")


@dataclass
class StudyPlan:
    tasks: list[str]
    extra_methods: dict[str, list[str]]
    align_pairs_per_task: int = 400
    align_epochs: int = 6
    expert_max_steps: int = 400
    fisher_n: int = 64
    transfer_tasks: list[str] = field(default_factory=list)
    transfer_shots: int = 8
    transfer_steps: int = 25
    transfer_seeds: tuple[int, ...] = (0, 1)
    compare_targets: list[str] = field(default_factory=list)
    compare_shots: tuple = (4, 16, None)
    compare_seeds: tuple[int, ...] = (0, 1)
    compare_approaches: tuple[str, ...] = ()
    compare_full_shot_approaches: tuple[str, ...] = ("pi-tuning", "target-only", "full-finetune")
    compare_full_shot_seeds: tuple[int, ...] = (0,)
    k: int = 3
    seed: int = 0


def full_plan() -> StudyPlan:
    from pitune_core.data.tasks import list_tasks
    from pitune_core.tune.baselines import BASELINES

    subset = ["movie_sentiment", "bbc_topic", "election_tweets", "mnist", "fashion_mnist", "emoji_group",
              "tux_caption_match", "emoji_caption_match", "emoji_group_question"]
    transfer = ["movie_sentiment", "amazon_sentiment", "rt_polarity", "bbc_topic",
                "mnist", "sklearn_digits", "opencv_digits", "emoji_group",
                "tux_caption_match", "tux_category_question", "emoji_caption_match", "emoji_group_question"]
    return StudyPlan(tasks=[t.name for t in list_tasks()], extra_methods={"prompt": subset, "ia3": subset},
                     transfer_tasks=transfer,
                     compare_targets=["rt_polarity", "tweet_sentiment", "opencv_digits", "emoji_group",
                                      "tux_category_question", "tux_caption_match"],
                     compare_shots=(4, 16, None), compare_approaches=BASELINES)


def quick_plan() -> StudyPlan:
    """A small real study for CI and smoke tests (minutes on 2 cores)."""
    tasks = ["movie_sentiment", "tweet_sentiment", "sklearn_digits", "lfw_faces", "flag_country_match",
             "tux_category_question"]
    return StudyPlan(tasks=tasks, extra_methods={"ia3": tasks[:3]}, align_pairs_per_task=64, align_epochs=1,
                     expert_max_steps=20, fisher_n=8, transfer_tasks=tasks[:4], transfer_shots=2, transfer_steps=5,
                     transfer_seeds=(0,), compare_targets=["sklearn_digits"], compare_shots=(2,),
                     compare_seeds=(0,), compare_approaches=("pi-tuning", "target-only", "uniform-avg"),
                     compare_full_shot_approaches=(), k=2)
