"""The run settings, as frozen dataclasses that fill their defaults and validate themselves once.

Each field carries its default and its help text (``field(metadata={"help": ...})``); the CLI's
argparse options (:meth:`Settings.arg`), the dashboard's widget bounds (:meth:`Settings.bounds`), the
run registry's validators and the workers all read them from here. A config crosses process and
file boundaries as a plain dict: :meth:`Settings.from_dict` (``None`` = the default) and
:meth:`Settings.to_dict`.

Plain Python: no torch, no numpy, nothing else of the project.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pitune_core.spec.parse import (check_bool, check_expert_type, check_int, check_not_own_source, check_task_name,
                                    parse_shots, parse_sources)
from pitune_core.spec.vocab import (DEFAULT_EMBEDDING, DEFAULT_EXPERT_TYPE, DEFAULT_K, DEFAULT_SHOTS, K_MAX_SLIDER,
                                    K_MIN, check_embedding)
from pitune_core.spec.weights import parse_weights


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A field with its default and help text (and optional ``minimum`` / ``maximum`` bounds)."""
    return field(default=default, metadata={"help": help, **meta})


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising inside a frozen dataclass's __post_init__


class Settings:
    """What every run-settings dataclass shares: dict round trips and field metadata."""

    #: the kind of run the settings are for, in messages
    WHAT: ClassVar[str] = "run"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def _field(cls, name: str) -> dataclasses.Field:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == name:
                return f
        raise KeyError(f"{cls.__name__} has no setting {name!r}")

    @classmethod
    def default_of(cls, name: str) -> Any:
        return cls._field(name).default

    @classmethod
    def help_of(cls, name: str) -> str:
        return cls._field(name).metadata.get("help", "")

    @classmethod
    def bounds(cls, name: str) -> tuple[Any, Any]:
        """(minimum, maximum) of a numeric setting, from its metadata (None where unbounded)."""
        meta = cls._field(name).metadata
        return meta.get("minimum"), meta.get("maximum")

    @classmethod
    def defaults(cls) -> dict:
        """Every setting that has a default, with it (in field order)."""
        return {f.name: f.default for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is not dataclasses.MISSING}

    @classmethod
    def arg(cls, name: str, shown: Any = None, **kw: Any) -> dict:
        """``argparse.add_argument`` keywords for a setting: its default and its help (with the default)."""
        default = cls.default_of(name)
        shown = ("full" if default is None and name == "shots" else default) if shown is None else shown
        help_ = cls.help_of(name)
        return {"default": default, "help": help_ if "default" in help_ else f"{help_} (default: {shown})", **kw}

    @classmethod
    def from_dict(cls, data: dict, strict: bool = True):
        """The settings of a plain dict. A missing key means the default, and so does ``None``, except for
        a setting where ``None`` is a value of its own (``shots``: full data; field metadata ``none``).
        ``strict``: an unknown key is refused with one line (else it is ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.WHAT} config must be a JSON object, got {type(data).__name__}")
        names = cls.names()
        unknown = sorted(str(k) for k in data if k not in names)
        if strict and unknown:
            raise ValueError(f"unknown {cls.WHAT} setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
        keep = {f.name for f in dataclasses.fields(cls) if f.metadata.get("none")}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items()  # type: ignore[call-arg]
                      if k in names and (v is not None or k in keep)})

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class TransferConfig(Settings):
    """One π-Tuning run (``pitune transfer``, the dashboard's Run tab, the registry's ``transfer`` kind)."""

    WHAT: ClassVar[str] = "transfer"

    target: str = setting("", "the target task")
    k: int | None = setting(None, f"number of sources (default: the number named with --sources, else {DEFAULT_K})",
                            minimum=K_MIN, maximum=K_MAX_SLIDER)
    method: str = setting(DEFAULT_EXPERT_TYPE, "the experts' peft method (the expert type)")
    shots: int | None = setting(DEFAULT_SHOTS, "examples per class, or 'full'", none="full data")
    weights: Any = setting("uniform", "uniform, auto (from similarities) or w1,w2,... (fixed)")
    sources: tuple[str, ...] | None = setting(None, "comma-separated source tasks (default: top-k predicted)")
    seed: int = setting(0, "the run's seed (its few-shot sample and its initialisation)", minimum=0)
    study: str | None = setting(None, "the study directory (default: $PITUNE_STUDY, else the shipped one)")
    weights_only: bool = setting(False, "freeze the experts, tune only the weights")
    embedding: str = setting(DEFAULT_EMBEDDING, "the task embedding (or predictor) that ranks the sources")
    own_expert: bool = setting(True, "interpolate the target's own expert, trained on the run's data")
    robustness: bool = setting(False, "also score the tuned model, with no further training, on shifted test sets "
                                      "of its family and corrupted copies of its test set (metrics.json's robustness)")

    def __post_init__(self) -> None:
        check_task_name(self.target, "target")
        if self.k is not None:
            check_int(self.k, "k", minimum=K_MIN)
        check_expert_type(self.method)
        _set(self, "shots", parse_shots(self.shots))
        names = parse_sources(self.sources, self.k)
        check_not_own_source(self.target, names)
        _set(self, "sources", tuple(names) if names else None)
        parse_weights(self.weights, self.resolved_k)
        check_int(self.seed, "seed")
        if self.study is not None and not isinstance(self.study, str):
            raise ValueError(f"study must be a directory path, got {self.study!r}")
        check_bool(self.weights_only, "weights_only")
        check_bool(self.own_expert, "own_expert")
        check_bool(self.robustness, "robustness")
        check_embedding(self.embedding)

    @property
    def resolved_k(self) -> int:
        """The number of sources the run interpolates: k, else the named sources' number, else the default."""
        return self.k if self.k is not None else len(self.sources) if self.sources else DEFAULT_K


@dataclass(frozen=True)
class TrainExpertConfig(Settings):
    """One expert (the registry's ``train-expert`` kind)."""

    WHAT: ClassVar[str] = "train-expert"

    task: str = setting("", "the task the expert is trained on")
    method: str = setting(DEFAULT_EXPERT_TYPE, "the expert's peft method (the expert type)")
    shots: int | None = setting(None, "examples per class, or 'full'")
    seed: int = setting(0, "the seed of its sample and initialisation", minimum=0)
    max_steps: int | None = setting(None, "at most this many training steps (default: the training budget)",
                                    minimum=1)

    def __post_init__(self) -> None:
        check_task_name(self.task, "task")
        check_expert_type(self.method)
        _set(self, "shots", parse_shots(self.shots))
        check_int(self.seed, "seed")
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps", minimum=1)


@dataclass(frozen=True)
class PlaceConfig(Settings):
    """How to place a task on a study's graph. ``shots=None``: all its training examples; ``max_steps=None``:
    the budget every few-shot approach gets (:func:`pitune_core.tune.baselines.budget_for`)."""

    WHAT: ClassVar[str] = "place-task"

    shots: int | None = setting(None, "examples per class its own expert trains on, or 'full'")
    seed: int = setting(0, "the seed of its sample and its expert", minimum=0)
    k: int = setting(DEFAULT_K, "top-k sources to report", minimum=K_MIN)
    method: str = setting(DEFAULT_EXPERT_TYPE, "the experts' peft method (the expert type)")
    embedding: str = setting(DEFAULT_EMBEDDING, "the task embedding that places it")
    max_steps: int | None = setting(None, "at most this many training steps of its own expert", minimum=1)
    n_samples: int | None = setting(None, "Fisher samples (default: what the study used)", minimum=1)

    def __post_init__(self) -> None:
        _set(self, "shots", parse_shots(self.shots))
        check_int(self.seed, "seed")
        check_int(self.k, "k", minimum=K_MIN)
        check_expert_type(self.method)
        if not isinstance(self.embedding, str):  # which embeddings place a task is the placement's rule
            raise ValueError(f"embedding must be a name, got {self.embedding!r}")
        for name in ("max_steps", "n_samples"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
